"""The Keras side of training, imported only once a run starts so that `core.train` stays cheap to import."""

from __future__ import annotations

import math
import threading
import time

import keras
import numpy as np
import pandas as pd

from core.model import save_model
from core.runs import Run
from core.settings import TrainConfig
from core.train import ProgressEvent, ProgressFn


class BestKeeper(keras.callbacks.Callback):
    # Reports progress, honours Stop every batch, and keeps (and checkpoints) the best epoch by val_loss.
    def __init__(
        self,
        run: Run,
        emit: ProgressFn,
        cancel: threading.Event,
        config: TrainConfig,
        train_data,
        started: float,
        export=lambda model: model,
    ):
        super().__init__()
        self.run, self.emit, self.cancel, self.started = run, emit, cancel, started
        self.export = export  # the model to save, given the one in training
        self.image_size = config.image_size  # the size the current epochs train at, recorded per epoch
        self.epochs = config.epochs
        self.steps = len(train_data)
        self.batch_images = np.diff(train_data.bounds)  # images in each batch, for the throughput figure
        self.rows: list[dict] = []
        self.batch_rows: list[dict] = []  # every batch's loss and learning rate, kept in batches.csv
        self.epoch_images = 0
        self.epoch_loss_sum = 0.0
        self.best: dict = {}
        self.best_weights = None
        self.epoch = 0
        self.batches_done = 0
        self.images = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        self.epoch_images, self.epoch_loss_sum = 0, 0.0  # Keras restarts its running means every epoch

    def _batch_logs(self, batch: int, logs: dict) -> dict:
        # Keras logs the epoch's running mean, weighted by batch size; this batch's own loss is the difference
        # of the running sums, which is what TensorBoard users expect to smooth.
        size = int(self.batch_images[batch])
        self.epoch_images += size
        logs = {k: float(v) for k, v in logs.items()}
        if "loss" in logs:
            loss_sum = logs["loss"] * self.epoch_images
            logs["batch_loss"] = (loss_sum - self.epoch_loss_sum) / max(size, 1)
            self.epoch_loss_sum = loss_sum
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))  # also mirrored
        return logs

    def on_train_batch_end(self, batch, logs=None):
        self.batches_done += 1
        self.images += int(self.batch_images[batch])
        logs = self._batch_logs(batch, logs or {})
        elapsed = time.time() - self.started
        self.batch_rows.append({"epoch": self.epoch, "batch": batch + 1, **logs, "elapsed_s": elapsed})
        self.emit(ProgressEvent("batch", self.epoch, self.epochs, batch + 1, self.steps, logs, elapsed))
        if self.cancel.is_set():
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        # Also when stopped before the first epoch ends: such a run saves no model, but keeps what it logged.
        pd.DataFrame(self.batch_rows).to_csv(self.run.batches_path, index=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.cancel.is_set() and self.batches_done % self.steps:
            return  # an interrupted epoch is not a real one
        row = {"epoch": epoch + 1, **logs, "train_size": self.image_size, "elapsed_s": time.time() - self.started}
        self.rows.append(row)
        score = logs.get("val_loss", logs.get("loss", math.inf))
        if score < self.best.get("val_loss", self.best.get("loss", math.inf)) or not self.best:
            self.best = row
            self.best_weights = self.model.get_weights()
            self._checkpoint()
        self.run.save_history(self.rows)  # the curves so far survive a crash too
        self.emit(
            ProgressEvent("epoch", epoch + 1, self.epochs, self.steps, self.steps, logs, time.time() - self.started)
        )

    def _checkpoint(self) -> None:
        # The best epoch so far, saved with what run.json says of it: a crash later still leaves a usable model.
        save_model(self.export(self.model), self.run.model_path)
        best = {"best_val_accuracy": self.best.get("val_accuracy"), "best_val_loss": self.best.get("val_loss")}
        self.run.update_meta(metrics={**best, "best_epoch": self.best["epoch"]})


class TimeBudget(keras.callbacks.Callback):
    # A cosine learning rate over wall time, and the end of training when the time is up, so a run fits a budget
    # on any machine: a slow one trains fewer epochs but still anneals to the end. The epoch it stops in is
    # still validated, so the best-model keeper sees the final, lowest-rate weights.
    def __init__(self, budget_s: float, learning_rate: float, alpha: float = 0.01):
        super().__init__()
        self.budget_s = budget_s
        # Keras's own cosine, with seconds as its steps (it holds at alpha past the end).
        self.schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(budget_s, 1e-6), alpha=alpha)
        self.started = 0.0
        self.expired = False

    def rate(self, elapsed_s: float) -> float:
        return float(self.schedule(elapsed_s))

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
