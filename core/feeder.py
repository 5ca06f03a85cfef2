"""The training feeder: batches of uint8 photos turned into model input, augmented and resized if asked."""

from __future__ import annotations

import keras
import numpy as np

from core.augment import IDENTITY, Augmentation, augment_batch, cutmix, mixup
from core.distribute import batch_sizes
from core.pipeline import to_model_input


class Feeder(keras.utils.PyDataset):
    """Feeds uint8 arrays through the same to_model_input() that prediction uses, augmented if asked.

    Random draws are fixed by (seed, epoch, batch), so a run can be repeated. shuffle_seed None: the photos in
    order, every epoch (validation). augment: True for the default Augmentation, or the one to use. size: the side to
    train at, when it is not the photos' own. With the Augmentation's alternate_flip, each photo's mirror is drawn
    once and alternates from epoch to epoch ("alternating flip", Jordan 2024): every photo is seen both ways in any
    two epochs in a row, where random flips leave a quarter of them the same way twice.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle_seed: int | None = None,
        replicas: int = 1,
        augment: bool | Augmentation = False,
        size: int | None = None,
        first_epoch: int = 0,
    ):
        super().__init__()
        self.x, self.y, self.shuffle_seed, self.size = x, y, shuffle_seed, size
        self.augment = Augmentation() if augment is True else augment or None
        self.batch_images = np.array(batch_sizes(len(y), batch_size, replicas))  # images in each batch
        self.bounds = np.cumsum([0, *self.batch_images])
        self.order = np.arange(len(y))
        self.first_flips = self._first_flips()  # None unless the flips alternate
        self.epoch = first_epoch
        self.on_epoch_end()

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(self.order[self.bounds[i] : self.bounds[i + 1]])
        pixels, labels = self.x[idx], self.y[idx].astype(np.float32)
        if self.augment or (self.size and self.size != pixels.shape[1]):  # the warp also rescales
            rng = np.random.default_rng([self.shuffle_seed or 0, self.epoch, i])
            pixels = augment_batch(pixels, rng, self.augment or IDENTITY, self.size, self._flips(idx))
            if self.augment and self.augment.cutmix:  # drawn last: without it, the photos are as they were
                pixels, labels = cutmix(pixels, labels, rng, self.augment.cutmix)
            if self.augment and self.augment.mixup:  # after CutMix, so a run without mixup draws as before
                pixels, labels = mixup(pixels, labels, rng, self.augment.mixup)
        return to_model_input(pixels), labels

    def _first_flips(self) -> np.ndarray | None:
        if not (self.augment and self.augment.flip and self.augment.alternate_flip):
            return None
        return np.random.default_rng([self.shuffle_seed or 0, len(self.y)]).random(len(self.y)) < 0.5

    def _flips(self, idx: np.ndarray) -> np.ndarray | None:
        if self.first_flips is None:
            return None  # augment_batch draws them
        return self.first_flips[idx] ^ bool(self.epoch % 2)

    def on_epoch_end(self) -> None:
        if self.shuffle_seed is not None:
            self.order = np.random.default_rng(self.shuffle_seed + self.epoch).permutation(len(self.y))
            self.epoch += 1
