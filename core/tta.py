"""The flip test-time augmentation rule, the same function the standalone examples run.

Its one implementation is examples/cvd_tta.py (numpy only): the examples must run from a copy of their folder
with nothing of this project beside them, so the rule lives there and the app loads that file, never a copy.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from core.config import ROOT, TTA_MODES, UNSURE_MARGIN


def _load_rule():
    spec = importlib.util.spec_from_file_location("cvd_tta", ROOT / "examples" / "cvd_tta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if tuple(module.TTA_MODES) != TTA_MODES:
        raise ImportError("examples/cvd_tta.py and core.config disagree on the TTA modes")
    return module


_rule = _load_rule()
mirror = _rule.mirror


def flip_tta(
    predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, mode: str = "unsure", margin: float = UNSURE_MARGIN
) -> np.ndarray:
    """P(dog) of an NHWC batch with the app's flip TTA: unsure photos (|P(dog) - 0.5| < margin) mirrored, averaged."""
    return _rule.flip_tta(predict, pixels, mode=mode, margin=margin)
