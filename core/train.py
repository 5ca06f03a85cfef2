"""Training: a TrainConfig in, a saved run out, with plain-Python progress and cancellation."""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import LoadedDataset, load_dataset
from core.pipeline import PipelineConfig, to_model_input
from core.runs import Run, RunStore, write_json


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run. The defaults reproduce the seed tutorial."""

    preset: str = "seed"
    epochs: int = 10
    batch_size: int = 32
    validation_split: float = 0.2
    learning_rate: float = 1e-3
    image_size: int = 80
    color_mode: str = "grayscale"
    augment: bool = False
    early_stopping: bool = False
    patience: int = 4
    seed: int = 42
    limit: int | None = None  # train on a balanced slice of at most this many images

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainConfig:
        """The preset's own settings, with any non-None overrides applied."""
        from core.model import PRESETS

        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        p = PRESETS[preset]
        base = cls(
            preset=preset,
            epochs=p.epochs,
            batch_size=p.batch_size,
            validation_split=p.validation_split,
            learning_rate=p.learning_rate,
            image_size=p.pipeline.size,
            color_mode=p.pipeline.color_mode,
            augment=p.augment,
            early_stopping=p.early_stopping,
        )
        known = {f.name for f in fields(cls)}
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None and k in known}})

    @property
    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(self.image_size, self.color_mode)


@dataclass
class ProgressEvent:
    """One progress report: kind is 'load', 'start', 'batch', 'epoch' or 'end'."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    logs: dict = field(default_factory=dict)
    elapsed: float = 0.0


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run: Run
    history: pd.DataFrame
    metrics: dict
    status: str  # "finished", "stopped" or "early-stopped"
    wall_time_s: float


ProgressFn = Callable[[ProgressEvent], None]


def split_indices(labels: np.ndarray, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/validation split that is the same for the same labels and seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(idx) * validation_split))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None):
    import keras

    class Batches(keras.utils.PyDataset):
        # Feeds uint8 arrays through the same to_model_input() that prediction uses.
        def __init__(self):
            super().__init__()
            self.order = np.arange(len(y))
            self.epoch = 0
            self.on_epoch_end()

        def __len__(self):
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            return to_model_input(x[idx]), y[idx].astype(np.float32)

        def on_epoch_end(self):
            if shuffle_seed is not None:
                self.order = np.random.default_rng(shuffle_seed + self.epoch).permutation(len(y))
                self.epoch += 1

    return Batches()


def distribution_strategy():
    """MultiWorkerMirrored with TF_CONFIG, Mirrored over several GPUs, else the default strategy."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def _versions() -> dict:
    import cv2
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def train(
    source: str | os.PathLike | LoadedDataset,
    config: TrainConfig = TrainConfig(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    runs_dir: Path | None = None,
    strategy=None,
) -> RunResult:
    """Train one run; progress goes to a plain callable, cancel is checked every batch."""
    import keras

    from core.model import PRESETS, build_model, compile_model, save_model

    started = time.time()
    emit = progress or (lambda event: None)
    cancel = cancel or threading.Event()
    preset = PRESETS[config.preset]
    pipeline = config.pipeline
    if isinstance(source, LoadedDataset):
        dataset = source
    else:
        dataset = load_dataset(
            source,
            pipeline,
            limit=config.limit,
            seed=config.seed,
            progress=lambda done, total: emit(ProgressEvent("load", batch=done, batches=total)),
        )
    if len(np.unique(dataset.y)) < 2:
        raise ValueError(f"{dataset.source}: training needs labeled photos of both cats and dogs")
    train_idx, val_idx = split_indices(dataset.y, config.validation_split, config.seed)
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or distribution_strategy()
    replicas = strategy.num_replicas_in_sync
    steps = math.ceil(len(train_idx) / config.batch_size)
    with strategy.scope():
        model = build_model(preset, pipeline, config.augment, seed=config.seed)
        compile_model(model, preset, config.learning_rate, total_steps=steps * config.epochs)

    store = RunStore(runs_dir)
    run = store.create(config.preset)
    keeper = _BestKeeper(run, emit, cancel, config, len(train_idx), started)
    callbacks = [keeper]
    if config.early_stopping and len(val_idx):
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience))
    train_data = _batches(dataset.x[train_idx], dataset.y[train_idx], config.batch_size, config.seed)
    val_data = _batches(dataset.x[val_idx], dataset.y[val_idx], config.batch_size, None) if len(val_idx) else None
    emit(
        ProgressEvent(
            "start",
            epochs=config.epochs,
            batches=steps,
            logs={
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "replicas": replicas,
                "per_replica_batch": config.batch_size // max(replicas, 1),
            },
            elapsed=time.time() - started,
        )
    )
    fit_started = time.time()
    model.fit(train_data, validation_data=val_data, epochs=config.epochs, callbacks=callbacks, verbose=0)
    fit_time = time.time() - fit_started

    if keeper.best_weights is not None:
        model.set_weights(keeper.best_weights)
    save_model(model, run.model_path)
    hist = pd.DataFrame(keeper.rows)
    hist.to_csv(run.path / "history.csv", index=False)
    status = "stopped" if cancel.is_set() else ("early-stopped" if len(hist) < config.epochs else "finished")
    metrics = {
        "best_val_accuracy": keeper.best.get("val_accuracy"),
        "best_val_loss": keeper.best.get("val_loss"),
        "best_epoch": keeper.best.get("epoch"),
        "final_train_accuracy": hist["accuracy"].iloc[-1] if len(hist) else None,
        "epochs_completed": len(hist),
        "train_images_per_s": keeper.images / max(fit_time, 1e-9),
    }
    wall = time.time() - started
    write_json(
        run.path / "run.json",
        {
            "id": run.id,
            "status": status,
            "config": asdict(config),
            "pipeline": asdict(pipeline),
            "class_names": ["cat", "dog"],
            "dataset": {"source": dataset.source, "fingerprint": dataset.fingerprint, "skipped": len(dataset.skipped)},
            "n_images": len(dataset),
            "n_train": len(train_idx),
            "n_val": len(val_idx),
            "validation_names": dataset.names[val_idx].tolist(),
            "replicas": replicas,
            "metrics": metrics,
            "wall_time_s": wall,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
        },
    )
    result = RunResult(run, hist, metrics, status, wall)
    emit(
        ProgressEvent(
            "end", epoch=len(hist), epochs=config.epochs, logs={"run": str(run.path), **metrics}, elapsed=wall
        )
    )
    return result


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class _BestKeeper(_keras_callback_base()):
    # Reports progress, honours Stop every batch, and keeps (and checkpoints) the best epoch by val_loss.
    def __init__(
        self, run: Run, emit: ProgressFn, cancel: threading.Event, config: TrainConfig, n_train: int, started: float
    ):
        super().__init__()
        self.run, self.emit, self.cancel, self.started = run, emit, cancel, started
        self.epochs, self.batch_size, self.n_train = config.epochs, config.batch_size, n_train
        self.steps = math.ceil(n_train / config.batch_size)
        self.rows: list[dict] = []
        self.best: dict = {}
        self.best_weights = None
        self.epoch = 0
        self.batches_done = 0
        self.images = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self.batches_done += 1
        self.images += min(self.batch_size, self.n_train - batch * self.batch_size)
        self.emit(
            ProgressEvent(
                "batch",
                self.epoch,
                self.epochs,
                batch + 1,
                self.steps,
                {k: float(v) for k, v in (logs or {}).items()},
                time.time() - self.started,
            )
        )
        if self.cancel.is_set():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.cancel.is_set() and self.batches_done % self.steps:
            return  # an interrupted epoch is not a real one
        row = {"epoch": epoch + 1, **logs, "elapsed_s": time.time() - self.started}
        self.rows.append(row)
        score = logs.get("val_loss", logs.get("loss", math.inf))
        if score < self.best.get("val_loss", self.best.get("loss", math.inf)) or not self.best:
            self.best = row
            self.best_weights = self.model.get_weights()
            from core.model import save_model

            save_model(self.model, self.run.model_path)  # a crash later still leaves the best so far
        self.emit(
            ProgressEvent("epoch", epoch + 1, self.epochs, self.steps, self.steps, logs, time.time() - self.started)
        )
