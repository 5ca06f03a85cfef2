"""Training-time augmentation on uint8 batches with cv2: one affine warp per photo, a flip, a contrast jitter and,
if asked, random erasing (Zhong et al., 2017: a random rectangle of the photo replaced with noise), CutMix (Yun et
al., 2019: a random box of another photo of the batch pasted in, the label mixed by its area) and mixup (Zhang et
al., 2018: the whole photo blended with another, the labels by the same weight).

It runs in the batch feeder, not as Keras layers inside the model: a single cv2.warpAffine per photo costs about
as much as one Keras transform layer costs per batch, so training runs ~25% faster, and saved models hold only
the net.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; each photo draws its own values."""

    rotation_deg: float = 18.0  # uniform in [-r, r]
    zoom: float = 0.15  # scale uniform in [1 - z, 1 + z]
    translation: float = 0.1  # shift of up to this fraction of the side, each axis
    contrast: float = 0.1  # (x - mean) * f + mean with f uniform in [1 - c, 1 + c]
    flip: bool = True  # mirror left-right half the time
    alternate_flip: bool = False  # with flip: the feeder mirrors each photo every other epoch instead (see Feeder)
    erase: float = 0.0  # share of photos that get one random rectangle (2-25% of the area) replaced with noise
    cutmix: float = 0.0  # share of photos that get a box of another photo of the batch (see cutmix())
    mixup: float = 0.0  # share of photos blended with another photo of the batch (see mixup())


ERASE_AREA = (0.02, 0.25)  # the rectangle's share of the photo's area, uniform
ERASE_ASPECT = (0.3, 3.3)  # its height / width, log-uniform
MIXUP_ALPHA = 0.4  # mixup's weights are Beta(alpha, alpha): mostly near 0 or 1 (the paper's ImageNet range, 0.1-0.4)


IDENTITY = Augmentation(rotation_deg=0, zoom=0, translation=0, contrast=0, flip=False)  # rescaling only


def augment_batch(
    pixels: np.ndarray,
    rng: np.random.Generator,
    aug: Augmentation = Augmentation(),
    size: int | None = None,
    flips: np.ndarray | None = None,
) -> np.ndarray:
    """A randomly transformed copy of a uint8 batch of shape (N, H, W, C); the input is not changed.

    With size, the photos come out size x size: the same warp also scales them, at no extra cost (progressive
    resizing trains early epochs on smaller photos). flips, one bool a photo, mirrors those photos instead of a
    random half (the random draw is still made, so the other transforms stay as they were).
    """
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a uint8 batch (N, H, W, C), got {pixels.dtype} {pixels.shape}")
    n, h, w, c = pixels.shape
    out_w, out_h = (size, size) if size else (w, h)
    angles = rng.uniform(-aug.rotation_deg, aug.rotation_deg, n)
    scales = rng.uniform(1 - aug.zoom, 1 + aug.zoom, n)
    shifts = rng.uniform(-aug.translation, aug.translation, (n, 2)) * (w, h)
    drawn = rng.random(n) < 0.5 if aug.flip else np.zeros(n, bool)
    flips = drawn if flips is None else np.asarray(flips, bool)
    factors = rng.uniform(1 - aug.contrast, 1 + aug.contrast, n)
    out = np.empty((n, out_h, out_w, c), np.uint8)
    centre = ((w - 1) / 2, (h - 1) / 2)
    for i in range(n):
        matrix = cv2.getRotationMatrix2D(centre, float(angles[i]), float(scales[i]))
        matrix[:, 2] += shifts[i]
        if flips[i]:  # mirror the output: x' = (w - 1) - x
            matrix[0] = -matrix[0]
            matrix[0, 2] += w - 1
        if (out_w, out_h) != (w, h):  # scale about pixel centres: x' = s (x + 0.5) - 0.5
            matrix[0] *= out_w / w
            matrix[1] *= out_h / h
            matrix[:, 2] += (out_w / w / 2 - 0.5, out_h / h / 2 - 0.5)
        warped = cv2.warpAffine(
            pixels[i], matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        ).reshape(out_h, out_w, c)
        if aug.contrast:
            mean = warped.mean(axis=(0, 1), dtype=np.float32)
            warped = np.clip((warped - mean) * np.float32(factors[i]) + mean, 0, 255).round()
        out[i] = warped
    if aug.erase:
        _erase(out, rng, aug.erase)
    return out


def _erase(out: np.ndarray, rng: np.random.Generator, share: float) -> None:
    """Random erasing in place: each photo, with probability share, gets a random rectangle filled with noise.
    Drawn after the other transforms, so erase=0 leaves a run's random stream (and its photos) as they were."""
    n, h, w, c = out.shape
    chosen = rng.random(n) < share
    areas = rng.uniform(*ERASE_AREA, n) * h * w
    aspects = np.exp(rng.uniform(*np.log(ERASE_ASPECT), n))
    heights = np.clip(np.sqrt(areas * aspects).round().astype(int), 1, h)
    widths = np.clip(np.sqrt(areas / aspects).round().astype(int), 1, w)
    tops, lefts = rng.random(n) * (h - heights + 1), rng.random(n) * (w - widths + 1)
    for i in np.flatnonzero(chosen):
        top, left = int(tops[i]), int(lefts[i])
        out[i, top : top + heights[i], left : left + widths[i]] = rng.integers(0, 256, (heights[i], widths[i], c))


def cutmix(
    pixels: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """CutMix (Yun et al., 2019) on an augmented uint8 batch: each photo, with probability share, gets a box of
    another photo of the batch pasted in, and its label becomes the two labels mixed by the box's share of the area.

    The box's area is uniform in [0, 1] of the photo (Beta(1, 1), the paper's), its centre uniform, clipped at the
    borders; the labels are weighted by the area actually pasted. Returns new arrays: float32 labels in [0, 1].
    """
    n, h, w, _ = pixels.shape
    partners = rng.permutation(n)
    chosen = rng.random(n) < share
    sides = np.sqrt(rng.uniform(0, 1, n))  # the box's side as a share of the photo's, so its area is uniform
    centres = rng.random((n, 2)) * (h, w)
    out, mixed = pixels.copy(), labels.astype(np.float32)
    for i in np.flatnonzero(chosen):
        half = sides[i] * np.array([h, w]) / 2
        top, left = np.clip(np.round(centres[i] - half).astype(int), 0, (h, w))
        bottom, right = np.clip(np.round(centres[i] + half).astype(int), 0, (h, w))
        j, area = partners[i], (bottom - top) * (right - left) / (h * w)
        out[i, top:bottom, left:right] = pixels[j, top:bottom, left:right]
        mixed[i] = (1 - area) * labels[i] + area * labels[j]
    return out, mixed


def mixup(
    pixels: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """mixup (Zhang et al., 2018) on an augmented uint8 batch: each photo, with probability share, is blended with
    another photo of the batch, weight lam ~ Beta(MIXUP_ALPHA, MIXUP_ALPHA) on its own, and its label becomes the two
    labels mixed by the same weight. Returns new arrays: the blend rounded to uint8, float32 labels in [0, 1]."""
    n = len(pixels)
    partners = rng.permutation(n)
    chosen = rng.random(n) < share
    lam = np.where(chosen, rng.beta(MIXUP_ALPHA, MIXUP_ALPHA, n), 1.0).astype(np.float32)
    weight = lam[:, None, None, None]
    blended = weight * pixels + (1 - weight) * pixels[partners]
    out = np.clip(blended.round(), 0, 255).astype(np.uint8)
    mixed = lam * labels.astype(np.float32) + (1 - lam) * labels[partners].astype(np.float32)
    return out, mixed
