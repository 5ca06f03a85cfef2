"""Training: a TrainConfig in, a saved run out, with plain-Python progress and cancellation."""

from __future__ import annotations

import os
import platform
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import LoadedDataset, load_dataset
from core.pipeline import to_model_input
from core.runs import Run, RunStore
from core.settings import TrainConfig


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


def batch_sizes(n: int, batch_size: int, replicas: int = 1) -> list[int]:
    """The sizes of the batches that cover n images, each one splittable across the replicas."""
    # With R replicas tf.distribute splits every global batch R ways, and:
    # - a batch of fewer than R images leaves a replica empty, which fails (AddN shape mismatch);
    # - Keras builds the model by averaging the first distributed batch across replicas, so that batch must
    #   split evenly (keras 3.15 TF trainer, _maybe_symbolic_build).
    # So every batch but the last is a multiple of R, and the last holds at least R images.
    if n < replicas or (n < 2 * replicas and n % replicas):
        raise ValueError(f"{n} images cannot be split evenly across {replicas} replicas; use more images")
    whole = n - n % replicas
    sizes = [batch_size] * (whole // batch_size) + ([whole % batch_size] if whole % batch_size else [])
    if n % replicas:
        if len(sizes) == 1:
            sizes = [sizes[0] - replicas, replicas]
        sizes[-1] += n % replicas
    return sizes


def _batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle_seed: int | None,
    replicas: int = 1,
    augment: bool = False,
    size: int | None = None,
    first_epoch: int = 0,
):
    import keras

    from core.augment import IDENTITY, Augmentation, augment_batch

    bounds = np.cumsum([0, *batch_sizes(len(y), batch_size, replicas)])

    class Batches(keras.utils.PyDataset):
        # Feeds uint8 arrays through the same to_model_input() that prediction uses, augmented if asked, with
        # random draws fixed by (seed, epoch, batch) so a run can be repeated.
        def __init__(self):
            super().__init__()
            self.bounds = bounds
            self.order = np.arange(len(y))
            self.epoch = first_epoch
            self.on_epoch_end()

        def __len__(self):
            return len(bounds) - 1

        def __getitem__(self, i):
            idx = np.sort(self.order[bounds[i] : bounds[i + 1]])
            pixels = x[idx]
            if augment or (size and size != pixels.shape[1]):  # the warp also rescales, augmented or not
                rng = np.random.default_rng([shuffle_seed or 0, self.epoch, i])
                pixels = augment_batch(pixels, rng, Augmentation() if augment else IDENTITY, size)
            return to_model_input(pixels), y[idx].astype(np.float32)

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


def _fit(model, strategy, train_data, **kwargs) -> None:
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        model.fit(train_data, **kwargs)
        return

    # Keras 3 (3.15 too) fails twice in fit() under MultiWorkerMirroredStrategy (keras-team/keras#20585):
    # - fit() starts by averaging the first distributed batch with strategy.reduce() to learn its shapes, which
    #   this strategy cannot do for an (x, y) pair. So the model, loss, metrics and optimizer are built here from
    #   one batch's shapes, and fit() finds the strategy through the scope instead of the model, skipping that.
    # - each step averages its logs across workers over axis 0, which scalars lack. So the steps return them
    #   with one axis. Epoch logs are read from the metrics themselves, summed over all replicas.
    def with_axis(step):
        return lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    train_step, test_step = model.train_step, model.test_step
    with strategy.scope():
        model._symbolic_build(data_batch=train_data[0])
        model._distribute_strategy = None
        model.train_step, model.test_step = with_axis(train_step), with_axis(test_step)
        try:
            model.fit(train_data, **kwargs)
        finally:
            model._distribute_strategy = strategy
            del model.train_step, model.test_step


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
    """Train one run; progress goes to a plain callable, cancel is checked every batch.

    The run is listed from its start: run.json says "running", with this process's pid, host and start time, so a
    run whose process dies shows as interrupted (`core.runs.Run.status`), its best epoch so far still saved.
    """
    run = RunStore(runs_dir).begin(config.preset, asdict(config))
    try:
        return _train_run(run, source, config, progress, cancel, strategy)
    except BaseException as err:
        _record_failure(run, err)
        raise


def _record_failure(run: Run, err: BaseException) -> None:
    # A run that saved no model leaves nothing behind; one that did keeps it, marked failed (or interrupted).
    try:
        if not run.has_model:
            shutil.rmtree(run.path, ignore_errors=True)
            return
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        run.update_meta(status=status, error=str(err) or type(err).__name__, finished_at=_now())
    except OSError:
        pass  # e.g. the disk is full: the run then reads as interrupted once this process ends


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _data_record(dataset: LoadedDataset, config: TrainConfig, val_idx: np.ndarray, **sizes) -> dict:
    # What run.json says a run trains on, written before its first epoch so that an interrupted run says it too.
    return {
        "pipeline": asdict(config.pipeline),
        "class_names": ["cat", "dog"],
        "dataset": {"source": dataset.source, "fingerprint": dataset.fingerprint, "skipped": len(dataset.skipped)},
        "n_images": len(dataset),
        "n_val": len(val_idx),
        "validation_names": dataset.names[val_idx].tolist(),
        **sizes,
    }


def _train_run(
    run: Run,
    source: str | os.PathLike | LoadedDataset,
    config: TrainConfig,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    strategy,
) -> RunResult:
    import keras

    from core.callbacks import BestKeeper, StageEnd, TimeBudget
    from core.model import build_model, compile_model, fixed_size, save_model

    started = time.time()
    emit = progress or (lambda event: None)
    cancel = cancel or threading.Event()
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
    # The batch size is global: each replica takes an equal share, so it is rounded down to a multiple of them.
    per_replica_batch = config.batch_size // replicas
    if per_replica_batch < 1:
        raise ValueError(f"batch size {config.batch_size} is smaller than the {replicas} replicas; use a larger one")
    global_batch = per_replica_batch * replicas
    stages = config.stages
    sizes = {"replicas": replicas, "global_batch": global_batch, "per_replica_batch": per_replica_batch}
    run.update_meta(**_data_record(dataset, config, val_idx, n_train=len(train_idx), **sizes))

    x_train, y_train = dataset.x[train_idx], dataset.y[train_idx]  # one copy, shared by every stage

    def train_data_at(stage: int, first_epoch: int = 0):
        return _batches(
            x_train, y_train, global_batch, config.seed, replicas, config.augment, stages[stage], first_epoch
        )

    train_data = train_data_at(0)
    val_data = _batches(dataset.x[val_idx], dataset.y[val_idx], global_batch, None, replicas) if len(val_idx) else None
    steps = len(train_data)
    any_size = stages != (pipeline.size,)
    with strategy.scope():
        model = build_model(config, any_size=any_size)
        budgeted = config.time_budget_min is not None
        compile_model(model, config, total_steps=None if budgeted else steps * config.epochs)

    def export(m):
        return fixed_size(m, config)

    keeper = BestKeeper(run, emit, cancel, config, train_data, started, export)
    budget = TimeBudget(config.time_budget_min * 60, config.learning_rate) if budgeted else None
    callbacks = [budget, keeper] if budget else [keeper]  # first, so the keeper's rows get its learning rate
    early = None
    if config.early_stopping and len(val_idx):
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience)
        callbacks.append(early)
    emit(
        ProgressEvent(
            "start",
            epochs=config.epochs,
            batches=steps,
            logs={"n_train": len(train_idx), "n_val": len(val_idx), **sizes},
            elapsed=time.time() - started,
        )
    )
    fit_started = time.time()
    # One fit() per stage of progressive resizing. Stages split the epochs and, with a time budget, the time too: a
    # stage ends at the first epoch end past either share. The learning-rate schedule runs across all of them.
    stage_ends = np.arange(1, len(stages) + 1) * config.epochs // len(stages)  # spare epochs go to later stages
    for stage, size in enumerate(stages):
        done = len(keeper.rows)
        if stage:
            train_data = train_data_at(stage, done)
        keeper.image_size = size
        until = int(stage_ends[stage])
        last = stage == len(stages) - 1  # the last stage ends with the budget itself, marked expired
        stage_callbacks = (
            [*callbacks, StageEnd(budget, (stage + 1) / len(stages))] if budget and not last else callbacks
        )
        if until > done:
            _fit(
                model,
                strategy,
                train_data,
                validation_data=val_data,
                epochs=until,
                initial_epoch=done,
                callbacks=stage_callbacks,
                verbose=0,
            )
        if cancel.is_set() or (budget and budget.expired) or (early and early.stopped_epoch):
            break
    fit_time = time.time() - fit_started

    if keeper.best_weights is not None:  # no epoch completed (stopped in the first): no model worth saving
        model.set_weights(keeper.best_weights)
        save_model(export(model), run.model_path)
    hist = pd.DataFrame(keeper.rows)
    run.save_history(keeper.rows)
    if cancel.is_set():
        status = "stopped"
    elif budget and budget.expired:
        status = "time-budget"
    else:
        status = "early-stopped" if len(hist) < config.epochs else "finished"
    metrics = {
        "best_val_accuracy": keeper.best.get("val_accuracy"),
        "best_val_loss": keeper.best.get("val_loss"),
        "best_epoch": keeper.best.get("epoch"),
        "final_train_accuracy": hist["accuracy"].iloc[-1] if len(hist) else None,
        "epochs_completed": len(hist),
        "train_images_per_s": keeper.images / max(fit_time, 1e-9),
    }
    if run.has_model and len(val_idx):  # the accuracy users will get (as the app predicts) on the held-out photos
        from core.predict import held_out_record

        val = dataset.x[val_idx], dataset.y[val_idx], dataset.names[val_idx]
        metrics.update(held_out_record(run.model_path, *val, dataset.source))
    wall = time.time() - started
    run.update_meta(status=status, metrics=metrics, wall_time_s=wall, finished_at=_now(), versions=_versions())
    result = RunResult(run, hist, metrics, status, wall)
    emit(
        ProgressEvent(
            "end", epoch=len(hist), epochs=config.epochs, logs={"run": str(run.path), **metrics}, elapsed=wall
        )
    )
    return result
