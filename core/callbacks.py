"""The Keras side of training, imported only once a run starts so that `core.train` stays cheap to import.

Each callback does one job. `training_callbacks` puts them in the one order that works: the learning-rate
schedule first (the logs then carry its rate), the logs next, the weights' moving average (if kept) swapped in
before the best checkpoint, which reads the epoch log, progress after both, and the checks that end training last.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from core.feeder import Feeder
from core.model import rate_schedule, recompute_batch_norm, save_model
from core.progress import ProgressEvent, ProgressFn
from core.runs import Run
from core.settings import OptimizerConfig, TrainConfig

BATCH_NORM_PHOTOS = 1024  # training photos a weight average's batch-norm statistics are recomputed on


class BatchLog(keras.callbacks.Callback):
    """Every batch's loss and learning rate, kept in batches.csv, and the images trained on (for the pace)."""

    def __init__(self, run: Run, batch_images: np.ndarray, started: float):
        super().__init__()
        self.run, self.batch_images, self.started = run, batch_images, started
        self.rows: list[dict] = []
        self.last_logs: dict = {}  # the latest batch's, as its progress event reports them
        self.images = 0
        self.epoch = 0
        self.epoch_images, self.epoch_loss_sum = 0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        self.epoch_images, self.epoch_loss_sum = 0, 0.0  # Keras restarts its running means every epoch

    def on_train_batch_end(self, batch, logs=None):
        size = int(self.batch_images[batch])
        self.images += size
        self.epoch_images += size
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if "loss" in logs:
            # Keras logs the epoch's running mean, weighted by batch size; this batch's own loss is the difference
            # of the running sums, which is what TensorBoard users expect to smooth.
            loss_sum = logs["loss"] * self.epoch_images
            logs["batch_loss"] = (loss_sum - self.epoch_loss_sum) / max(size, 1)
            self.epoch_loss_sum = loss_sum
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))  # also mirrored
        self.last_logs = logs
        self.rows.append({"epoch": self.epoch, "batch": batch + 1, **logs, "elapsed_s": time.time() - self.started})

    def on_train_end(self, logs=None):
        # Also when stopped before the first epoch ends: such a run saves no model, but keeps what it logged.
        pd.DataFrame(self.rows).to_csv(self.run.batches_path, index=False)


class EpochLog(keras.callbacks.Callback):
    """One history row per whole epoch, saved to history.csv as it ends, so the curves survive a crash."""

    def __init__(self, run: Run, cancel: threading.Event, steps: int, image_size: int, started: float):
        super().__init__()
        self.run, self.cancel, self.steps, self.started = run, cancel, steps, started
        self.image_size = image_size  # the size the current epochs train at: set per stage
        self.rows: list[dict] = []
        self.batches_done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches_done += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.cancel.is_set() and self.batches_done % self.steps:
            return  # an interrupted epoch is not a real one
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.rows.append(
            {"epoch": epoch + 1, **logs, "train_size": self.image_size, "elapsed_s": time.time() - self.started}
        )
        self.run.save_history(self.rows)

    def logged(self, epoch: int) -> dict | None:
        """The row of this (0-based) epoch if it was logged as a whole epoch."""
        return self.rows[-1] if self.rows and self.rows[-1]["epoch"] == epoch + 1 else None


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch by val_loss (loss without validation) and saves it, so a crash leaves a usable model."""

    def __init__(self, run: Run, epochs: EpochLog, export: Callable[[keras.Model], keras.Model]):
        super().__init__()
        self.run, self.epochs, self.export = run, epochs, export  # export: the model to save, given the trained one
        self.best: dict = {}
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        row = self.epochs.logged(epoch)
        if row is None:
            return
        score = row.get("val_loss", row.get("loss", math.inf))
        if score < self.best.get("val_loss", self.best.get("loss", math.inf)) or not self.best:
            self.best, self.weights = row, self.model.get_weights()
            save_model(self.export(self.model), self.run.model_path)
            best = {"best_val_accuracy": row.get("val_accuracy"), "best_val_loss": row.get("val_loss")}
            self.run.update_meta(metrics={**best, "best_epoch": row["epoch"]})


class _SwappedAverage(keras.callbacks.Callback):
    """A weight average swapped in for validation and the epoch's end, so the best checkpoint keeps it, and the raw
    weights (moving statistics too) swapped back for the next epoch and when fit() ends, so the stages of
    progressive resizing train on as one run. Subclasses say when an epoch averages and assign the average."""

    def __init__(self):
        super().__init__()
        self.raw: list | None = None  # the raw weights while the average is swapped in

    def averages(self) -> bool:
        return True

    def assign_average(self) -> None:
        raise NotImplementedError

    def swap_in(self) -> None:
        if self.raw is None and self.averages():
            self.raw = self.model.get_weights()
            self.assign_average()

    def swap_out(self) -> None:
        if self.raw is not None:
            self.model.set_weights(self.raw)
            self.raw = None

    def on_test_begin(self, logs=None):
        self.swap_in()

    def on_epoch_end(self, epoch, logs=None):
        self.swap_in()  # a run without validation keeps the average too

    def on_epoch_begin(self, epoch, logs=None):
        self.swap_out()

    def on_train_end(self, logs=None):
        self.swap_out()


class WeightAverage(_SwappedAverage):
    """With the optimiser's moving average of the weights (`optimizer.ema`): validation and the epoch's end see the
    average; the next epoch trains the raw weights again, as if it never ran. Keras's fit() also writes the average
    into the model when it ends, which `on_train_end` undoes too."""

    def assign_average(self) -> None:
        self.model.optimizer.finalize_variable_values(self.model.trainable_variables)


class StochasticWeightAverage(_SwappedAverage):
    """Stochastic weight averaging (SWA, Izmailov et al. 2018): each epoch that begins past `start` of the time
    budget (whose rate holds from there) ends by joining an equal average of the weights. Validation and the epoch's
    end see the average, batch norm's moving statistics recomputed for it on BATCH_NORM_PHOTOS of the stage's
    training photos, so the best checkpoint can keep it; the next epoch trains the raw weights on, as if it never ran.
    """

    def __init__(self, budget: TimeBudget, start: float):
        super().__init__()
        self.budget, self.start = budget, start
        self.feeder: Feeder | None = None  # the stage's training photos: set by the run, stage by stage
        self.mean: list | None = None  # the average of the trainable weights so far
        self.count = 0
        self.joining = False

    def averages(self) -> bool:
        return self.joining

    def assign_average(self) -> None:
        self._join([variable.numpy() for variable in self.model.trainable_variables])
        for variable, value in zip(self.model.trainable_variables, self.mean, strict=True):
            variable.assign(value)
        recompute_batch_norm(self.model, self._batches())

    def _join(self, weights: list) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = weights
        else:
            self.mean = [mean + (new - mean) / self.count for mean, new in zip(self.mean, weights, strict=True)]

    def _batches(self) -> list[np.ndarray]:
        """The stage's first training batches, at least BATCH_NORM_PHOTOS photos if it has them."""
        batches, photos = [], 0
        for index in range(len(self.feeder)):
            if photos >= BATCH_NORM_PHOTOS:
                break
            batches.append(self.feeder[index][0])
            photos += len(batches[-1])
        return batches

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.joining = self.budget.fraction() >= self.start


class Progress(keras.callbacks.Callback):
    """Reports each batch and each whole epoch to a plain callable, as ProgressEvents."""

    def __init__(self, emit: ProgressFn, batches: BatchLog, epochs: EpochLog, total_epochs: int, started: float):
        super().__init__()
        self.emit, self.batches, self.epochs, self.started = emit, batches, epochs, started
        self.total_epochs = total_epochs

    def on_train_batch_end(self, batch, logs=None):
        row, steps = self.batches.rows[-1], self.epochs.steps
        logs = self.batches.last_logs
        self.emit(ProgressEvent("batch", row["epoch"], self.total_epochs, batch + 1, steps, logs, row["elapsed_s"]))

    def on_epoch_end(self, epoch, logs=None):
        if self.epochs.logged(epoch) is not None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            steps, elapsed = self.epochs.steps, time.time() - self.started
            self.emit(ProgressEvent("epoch", epoch + 1, self.total_epochs, steps, steps, logs, elapsed))


class StopOnCancel(keras.callbacks.Callback):
    """Honours Stop within a batch: training ends at the end of the batch in which cancel was set."""

    def __init__(self, cancel: threading.Event):
        super().__init__()
        self.cancel = cancel

    def on_train_batch_end(self, batch, logs=None):
        if self.cancel.is_set():
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    # The optimiser's learning-rate schedule over wall time, and the end of training when the time is up, so a run
    # fits a budget on any machine: a slow one trains fewer epochs but still anneals to the end. The epoch it stops
    # in is still validated, so the best-model keeper sees the final, lowest-rate weights.
    def __init__(self, budget_s: float, learning_rate: float, optimizer: str = "adamw", hold_from: float = 1.0):
        super().__init__()
        self.budget_s = budget_s
        # core.model.rate_schedule with seconds as its steps (it holds at its end value past the end), held from
        # hold_from of the budget on (stochastic weight averaging's constant rate).
        self.schedule = rate_schedule(optimizer, learning_rate, budget_s)
        self.hold_s = hold_from * budget_s
        self.started = 0.0
        self.expired = False

    def rate(self, elapsed_s: float) -> float:
        return float(self.schedule(min(elapsed_s, self.hold_s)))

    def fraction(self) -> float:
        """How much of the budget is spent, from 0 to 1."""
        return min((time.time() - self.started) / max(self.budget_s, 1e-6), 1.0) if self.started else 0.0

    def on_train_begin(self, logs=None):
        if not self.started:  # training in stages calls fit() once per stage: the clock runs across them
            self.started = time.time()

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.rate(time.time() - self.started))

    def on_train_batch_end(self, batch, logs=None):
        if self.fraction() >= 1:
            self.expired = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


class StageEnd(keras.callbacks.Callback):
    # Ends one stage of progressive resizing at the first epoch end past its share of the time budget.
    def __init__(self, budget: TimeBudget, until_fraction: float):
        super().__init__()
        self.budget, self.until_fraction = budget, until_fraction

    def on_epoch_end(self, epoch, logs=None):
        if self.budget.fraction() >= self.until_fraction:
            self.model.stop_training = True


@dataclass
class TrainingCallbacks:
    """A run's callbacks by job; `in_order` is the order Keras must call them in."""

    batches: BatchLog
    epochs: EpochLog
    best: BestCheckpoint
    progress: Progress
    stop: StopOnCancel
    budget: TimeBudget | None
    early: keras.callbacks.EarlyStopping | None
    average: WeightAverage | StochasticWeightAverage | None = None

    def start_stage(self, size: int, train_data: Feeder) -> None:
        """A new stage of progressive resizing: the size the epoch log records, and the photos a stochastic weight
        average's batch norm is recomputed on."""
        self.epochs.image_size = size
        if isinstance(self.average, StochasticWeightAverage):
            self.average.feeder = train_data

    def in_order(self, stage_end: StageEnd | None = None) -> list[keras.callbacks.Callback]:
        """The schedule, the logs, the averaged weights, the checkpoint, progress, then what ends training (a
        stage's end last)."""
        ordered = [self.budget, self.batches, self.epochs, self.average, self.best, self.progress, self.stop]
        ordered += [self.early, stage_end]
        return [callback for callback in ordered if callback is not None]


def training_callbacks(
    run: Run,
    config: TrainConfig,
    train_data: Feeder,
    validates: bool,
    emit: ProgressFn,
    cancel: threading.Event,
    started: float,
    export: Callable[[keras.Model], keras.Model],
) -> TrainingCallbacks:
    """The callbacks of one run: every job a fit() needs beyond the gradient steps."""
    batches = BatchLog(run, train_data.batch_images, started)
    epochs = EpochLog(run, cancel, len(train_data), config.stages[0], started)
    budgeted, settings = config.time_budget_min is not None, config.optimizer
    budget = (
        TimeBudget(config.time_budget_min * 60, config.learning_rate, settings.name, hold_from=1 - settings.swa)
        if budgeted
        else None
    )
    return TrainingCallbacks(
        batches=batches,
        epochs=epochs,
        best=BestCheckpoint(run, epochs, export),
        progress=Progress(emit, batches, epochs, config.epochs, started),
        stop=StopOnCancel(cancel),
        budget=budget,
        early=(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience)
            if config.early_stopping and validates
            else None
        ),
        average=_average(settings, budget),
    )


def _average(settings: OptimizerConfig, budget: TimeBudget | None):
    """The callback that swaps a weight average in for validation and the checkpoint, if the run keeps one."""
    if settings.ema:
        return WeightAverage()
    return StochasticWeightAverage(budget, 1 - settings.swa) if settings.swa else None
