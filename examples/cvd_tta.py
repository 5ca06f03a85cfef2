"""The flip test-time augmentation rule of Cats vs Dogs Studio, with numpy alone.

This file is the rule's one implementation. The app loads it (core/tta.py) and the example scripts beside it
import it, so a copy of this folder next to an exported model predicts exactly what the app predicts.

The rule: predict every photo once. A photo whose P(dog) is within `margin` of 0.5 (the app's margin is 0.4,
so P(dog) strictly between 0.1 and 0.9) gets a second look at its mirror image (left and right swapped), and its
P(dog) becomes the mean of the two looks. Confident photos keep their single look. Mode "all" mirrors every
photo; mode "off" never does. The mode and margin an export was made with are in its sidecar, under "tta".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TTA_MODES = ("off", "unsure", "all")


def mirror(pixels: np.ndarray) -> np.ndarray:
    """A batch of NHWC images with left and right swapped, as a contiguous array (runtimes want one)."""
    return np.ascontiguousarray(pixels[:, :, ::-1])


def flip_tta(
    predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, *, mode: str, margin: float
) -> np.ndarray:
    """P(dog) of an NHWC batch, as float32, with a mirrored second look for the unsure photos (see above).

    predict maps a batch to P(dog) (any shape that flattens to one value per image); pixels are whatever it
    takes (uint8 for an export, float32 in [0, 1] for the Keras model).
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {mode!r}")
    prob = np.array(predict(pixels), dtype=np.float32).reshape(-1)
    if mode == "off" or not len(prob):
        return prob
    second = np.abs(prob - 0.5) < margin if mode == "unsure" else np.ones(len(prob), bool)
    if second.any():
        mirrored = np.asarray(predict(mirror(pixels[second])), dtype=np.float32).reshape(-1)
        prob[second] = (prob[second] + mirrored) / 2
    return prob
