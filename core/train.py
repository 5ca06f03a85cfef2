"""Training: a TrainConfig in, a saved run out, with plain-Python progress and cancellation."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from core.config import CLASS_NAMES
from core.corrections import prepare_training_data, read_corrections, split_for_training
from core.data import DatasetError, LoadedDataset, load_dataset, split_indices
from core.distribute import batch_sizes, distribution_strategy, fit
from core.errors import SettingsError
from core.hardware import training_precision
from core.pipeline import to_model_input
from core.predict import held_out_record
from core.progress import ProgressEvent, ProgressFn, ignore
from core.runs import Run, RunStore
from core.settings import TrainConfig

__all__ = ["ProgressEvent", "ProgressFn", "RunResult", "TrainConfig", "batch_sizes", "split_indices", "train"]

WHITEN_BATCHES = 2  # a whitening stem is fitted to the 3x3 patches of this many training batches (128 photos at 64)


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run: Run
    history: pd.DataFrame
    metrics: dict
    status: str  # "finished", "stopped" or "early-stopped"
    wall_time_s: float


@dataclass(frozen=True)
class Split:
    """The photos a run trains on and those it holds out to validate and measure, as indices into its dataset."""

    train: np.ndarray
    val: np.ndarray
    calibration: np.ndarray  # held out of training to fit the saved model's calibration (none: empty)


@dataclass(frozen=True)
class Placement:
    """How a run's batches spread over the devices: the global batch is an equal share per replica."""

    strategy: object  # a tf.distribute.Strategy
    replicas: int
    per_replica_batch: int
    precision: str  # float32 or bfloat16: what the run computes in (core.hardware.training_precision)

    @property
    def global_batch(self) -> int:
        return self.per_replica_batch * self.replicas

    def record(self) -> dict:
        """What run.json and the start event say of it."""
        return {
            "replicas": self.replicas,
            "global_batch": self.global_batch,
            "per_replica_batch": self.per_replica_batch,
            "precision": self.precision,
        }


@dataclass(frozen=True)
class Training:
    """One run in progress: what its steps share."""

    run: Run
    config: TrainConfig
    emit: ProgressFn
    cancel: threading.Event
    started: float


def _versions() -> dict:
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
    t = Training(run, config, progress or ignore, cancel or threading.Event(), time.time())
    try:
        return _train_run(t, source, strategy)
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


def _data_record(config: TrainConfig, dataset: LoadedDataset, split: Split, placement: Placement) -> dict:
    # What run.json says a run trains on, written before its first epoch so that an interrupted run says it too.
    return {
        "pipeline": asdict(config.pipeline),
        "class_names": list(CLASS_NAMES),
        "dataset": {"source": dataset.source, "fingerprint": dataset.fingerprint, "skipped": len(dataset.skipped)},
        "n_images": len(dataset),
        "n_val": len(split.val),
        "validation_names": dataset.names[split.val].tolist(),
        "n_train": len(split.train),
        "n_calibration": len(split.calibration),
        "calibration_names": dataset.names[split.calibration].tolist(),
        **placement.record(),
    }


def _train_run(t: Training, source: str | os.PathLike | LoadedDataset, strategy) -> RunResult:
    # The steps of a run, in order, each a named function; a new step is one more line here. Photos that must
    # train (never held out) belong in _split; a calibration of the saved model goes between _save_best and _measure.
    base = _load(t, source)
    dataset, forced, training_data = _with_corrections(t.config, base)
    split = _split(t.config, base, dataset, forced)
    t.run.update_meta(training_data=training_data)
    placement = _place(t.config, strategy)
    t.run.update_meta(**_data_record(t.config, dataset, split, placement))
    feeds = Feeds(dataset, split, t.config, placement)
    model = _build(t.config, placement, feeds.steps)
    _whiten(t.config, model, feeds)
    callbacks = _callbacks(t, feeds)
    _announce(t, split, feeds.steps, placement)
    fit_time = _fit_stages(t, model, feeds, callbacks, placement)
    _save_best(t, model, callbacks, dataset, split)
    metrics = _measure(t, dataset, split, callbacks, fit_time)
    return _finish(t, callbacks, metrics)


def _load(t: Training, source: str | os.PathLike | LoadedDataset) -> LoadedDataset:
    """The photos as arrays, at the run's pipeline: loaded here unless given already loaded."""
    if isinstance(source, LoadedDataset):
        dataset = source
    else:
        progress = lambda done, total: t.emit(ProgressEvent("load", batch=done, batches=total))  # noqa: E731
        dataset = load_dataset(source, t.config.pipeline, limit=t.config.limit, seed=t.config.seed, progress=progress)
    if len(np.unique(dataset.y)) < 2:
        raise DatasetError(f"{dataset.source}: training needs labeled photos of both cats and dogs")
    return dataset


def _with_corrections(config: TrainConfig, base: LoadedDataset) -> tuple[LoadedDataset, np.ndarray, dict | None]:
    """The photos to train on: the dataset with its corrections applied and the extras added, the mask of those
    that must train (never validate), and what run.json records of it (None without corrections or extras)."""
    if not config.corrections and not config.extras:
        return base, np.zeros(len(base), bool), None
    corrections = read_corrections(config.corrections) if config.corrections else None
    extras = [load_dataset(extra, config.pipeline) for extra in config.extras]
    return prepare_training_data(base, corrections, extras)


def _split(config: TrainConfig, base: LoadedDataset, dataset: LoadedDataset, forced: np.ndarray) -> Split:
    """The stratified split into the photos to train on and those held out (the uncorrected dataset's, less the
    photos forced to train), and the share of the training photos held out for calibration."""
    train_idx, val_idx = split_for_training(base, dataset, forced, config.validation_split, config.seed)
    if not config.calibration_split:
        return Split(train_idx, val_idx, train_idx[:0])
    plain = train_idx[~forced[train_idx]]  # calibrated on photos as the dataset gave them, never on the extras
    kept, held = split_indices(dataset.y[plain], config.calibration_split, config.seed + 1)
    return Split(np.sort(np.concatenate([plain[kept], train_idx[forced[train_idx]]])), val_idx, plain[held])


def _place(config: TrainConfig, strategy) -> Placement:
    """The distribution strategy and each replica's share of the batch (rounded down to a multiple of them)."""
    strategy = strategy or distribution_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size // replicas < 1:
        raise SettingsError(f"batch size {config.batch_size} is smaller than the {replicas} replicas; use a larger one")
    return Placement(strategy, replicas, config.batch_size // replicas, training_precision(config.precision))


class Feeds:
    """The run's feeders: the training photos at each stage's size, and the held-out photos."""

    def __init__(self, dataset: LoadedDataset, split: Split, config: TrainConfig, placement: Placement):
        from core.feeder import Feeder

        self.config, self.placement = config, placement
        self.x, self.y = dataset.x[split.train], dataset.y[split.train]  # one copy, shared by every stage
        batch, replicas = placement.global_batch, placement.replicas
        self.first = self.at_stage(0)
        self.steps = len(self.first)
        held_out = dataset.x[split.val], dataset.y[split.val]
        self.val = Feeder(*held_out, batch, None, replicas) if len(split.val) else None

    def at_stage(self, stage: int, first_epoch: int = 0):
        """The training feeder of one stage of progressive resizing, its shuffles continuing at first_epoch."""
        from core.augment import Augmentation
        from core.feeder import Feeder

        cfg, placement = self.config, self.placement
        size = cfg.stages[stage]
        augment = cfg.augment and Augmentation(
            erase=cfg.erase, cutmix=cfg.cutmix, mixup=cfg.mixup, alternate_flip=cfg.flip == "alternate"
        )
        return Feeder(self.x, self.y, placement.global_batch, cfg.seed, placement.replicas, augment, size, first_epoch)


def _build(config: TrainConfig, placement: Placement, steps: int):
    """The compiled model, built in the strategy's scope; AdamW's cosine runs over the steps unless over time."""
    import keras

    from core.model import MutualPair, build_model, compile_model, sharpness_aware

    keras.utils.set_random_seed(config.seed)  # the initial weights, and the dropout's draws
    budgeted = config.time_budget_min is not None
    settings = config.optimizer
    if (settings.sam or settings.mutual) and placement.strategy.num_replicas_in_sync > 1:
        raise SettingsError("sam and mutual train on one device: their steps take two passes of one replica")
    with placement.strategy.scope():
        progressive = config.stages != (config.image_size,)
        net = functools.partial(build_model, config, any_size=progressive, precision=placement.precision, to_train=True)
        model = sharpness_aware(net(), settings.sam) if settings.sam else net()
        model = MutualPair(model, net(), weight=settings.mutual) if settings.mutual else model
        compile_model(model, config, total_steps=None if budgeted else steps * config.epochs)
    return model


def _whiten(config: TrainConfig, model, feeds: Feeds) -> None:
    """With net.whiten, the frozen stem fitted to the first batches of training photos, as the first stage feeds
    them (its size, its augmentation)."""
    if not config.net.whiten:
        return
    from core.model import whiten_stem

    batches = [feeds.first[i][0] for i in range(len(feeds.first))[:WHITEN_BATCHES]]
    whiten_stem(model, np.concatenate(batches))


def _callbacks(t: Training, feeds: Feeds):
    from core.callbacks import training_callbacks
    from core.model import fixed_size

    validates = feeds.val is not None
    export = functools.partial(fixed_size, config=t.config)
    return training_callbacks(t.run, t.config, feeds.first, validates, t.emit, t.cancel, t.started, export)


def _announce(t: Training, split: Split, steps: int, placement: Placement) -> None:
    logs = {"n_train": len(split.train), "n_val": len(split.val), **placement.record()}
    t.emit(ProgressEvent("start", epochs=t.config.epochs, batches=steps, logs=logs, elapsed=time.time() - t.started))


def _fit_stages(t: Training, model, feeds: Feeds, callbacks, placement: Placement) -> float:
    """One fit() per stage of progressive resizing; returns the seconds spent fitting.

    Stages split the epochs and, with a time budget, the time too: a stage ends at the first epoch end past
    either share. The learning-rate schedule runs across all of them.
    """
    from core.callbacks import StageEnd

    config, budget, early = t.config, callbacks.budget, callbacks.early
    stages = config.stages
    stage_ends = np.arange(1, len(stages) + 1) * config.epochs // len(stages)  # spare epochs go to later stages
    fit_started = time.time()
    for stage, size in enumerate(stages):
        done = len(callbacks.epochs.rows)
        train_data = feeds.at_stage(stage, done) if stage else feeds.first
        callbacks.start_stage(size, train_data)
        last = stage == len(stages) - 1  # the last stage ends with the budget itself, marked expired
        stage_end = StageEnd(budget, (stage + 1) / len(stages)) if budget and not last else None
        if int(stage_ends[stage]) > done:
            fit_kwargs = {"validation_data": feeds.val, "epochs": int(stage_ends[stage]), "initial_epoch": done}
            fit(model, placement.strategy, train_data, callbacks=callbacks.in_order(stage_end), verbose=0, **fit_kwargs)
        if t.cancel.is_set() or (budget and budget.expired) or (early and early.stopped_epoch):
            break
    return time.time() - fit_started


def _save_best(t: Training, model, callbacks, dataset: LoadedDataset, split: Split) -> None:
    """The best epoch's weights, calibrated if the run holds photos out for it, saved at the run's input size;
    none if no epoch completed."""
    from core.model import fixed_size, save_model

    if callbacks.best.weights is not None:  # stopped in the first epoch: no model worth saving
        model.set_weights(callbacks.best.weights)
        final = fixed_size(model, t.config)
        if len(split.calibration):
            calibration = _calibrate(final, dataset, split.calibration)
            t.run.update_meta(calibration=calibration.record() | {"folded": calibration.usable})
        save_model(final, t.run.model_path)
    t.run.save_history(callbacks.epochs.rows)


def _calibrate(model, dataset: LoadedDataset, held: np.ndarray):
    """Platt scaling fitted on the held-out calibration photos' single looks, folded into the model's last layer."""
    from core.calibrate import fit_calibration, fold_into  # scipy and scikit-learn: only when calibrating

    prob = model.predict(to_model_input(dataset.x[held]), batch_size=256, verbose=0).reshape(-1)
    on = f"the {len(held):,} photos of {Path(dataset.source).name} held out from training for calibration"
    calibration = fit_calibration(prob, dataset.y[held], on, method="platt")
    if calibration.usable:  # an untrained net's logit carries no signal: folding would flatten P(dog)
        fold_into(model, calibration)
    return calibration


def _measure(t: Training, dataset: LoadedDataset, split: Split, callbacks, fit_time: float) -> dict:
    """The run's metrics: its best epoch, its pace, and the held-out accuracy as the app predicts."""
    rows, best = callbacks.epochs.rows, callbacks.best.best
    metrics = {
        "best_val_accuracy": best.get("val_accuracy"),
        "best_val_loss": best.get("val_loss"),
        "best_epoch": best.get("epoch"),
        "final_train_accuracy": rows[-1]["accuracy"] if rows else None,
        "epochs_completed": len(rows),
        "train_images_per_s": callbacks.batches.images / max(fit_time, 1e-9),
    }
    if t.run.has_model and len(split.val):  # the accuracy users will get on the held-out photos
        val = dataset.x[split.val], dataset.y[split.val], dataset.names[split.val]
        metrics.update(held_out_record(t.run.model_path, *val, dataset.source))
    return metrics


def _status(t: Training, callbacks) -> str:
    if t.cancel.is_set():
        return "stopped"
    if callbacks.budget and callbacks.budget.expired:
        return "time-budget"
    return "early-stopped" if len(callbacks.epochs.rows) < t.config.epochs else "finished"


def _finish(t: Training, callbacks, metrics: dict) -> RunResult:
    """run.json's final word on the run, and the end event."""
    status, wall, rows = _status(t, callbacks), time.time() - t.started, callbacks.epochs.rows
    t.run.update_meta(status=status, metrics=metrics, wall_time_s=wall, finished_at=_now(), versions=_versions())
    logs = {"run": str(t.run.path), **metrics}
    t.emit(ProgressEvent("end", epoch=len(rows), epochs=t.config.epochs, logs=logs, elapsed=wall))
    return RunResult(t.run, pd.DataFrame(rows), metrics, status, wall)
