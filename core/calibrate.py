"""Calibration: make P(dog) mean what it says, fitted on photos the training held out, folded into the model.

A net trained with cross-entropy is usually overconfident in the middle: photos it puts at 0.5-0.6 are right
less often than 55% of the time. Temperature scaling (Guo et al., 2017) divides the logit by one number T fitted
on held-out photos; Platt scaling also shifts it. Either is folded into the last Dense layer (its kernel and
bias scaled), so the saved `.keras`, its exports and every engine predict the calibrated P(dog) with no extra
step anywhere. The photos it is fitted on must be neither training photos (their logits are too confident)
nor the validation photos that report the accuracy (that would grade the model on its own answer key).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from core.metrics import expected_calibration_error

METHODS = ("temperature", "platt")
# P(dog) is clipped this far from 0 and 1 before its logit is taken: float32 sigmoids saturate at 1.0.
_EPS = 1e-7


@dataclass(frozen=True)
class Calibration:
    """logit' = scale * logit + shift, fitted on n photos (named by `on`) by `method`."""

    scale: float
    shift: float
    method: str
    n: int
    on: str
    ece_before: float
    ece_after: float

    @property
    def temperature(self) -> float | None:
        return 1.0 / self.scale if self.scale > 0 else None

    @property
    def usable(self) -> bool:
        """False when the logit carries no signal (an untrained net): folding it would flatten or invert P(dog)."""
        return self.scale > 0.01

    def apply(self, prob_dog: np.ndarray) -> np.ndarray:
        """Calibrated P(dog) for uncalibrated P(dog)."""
        return _sigmoid(self.scale * logit(prob_dog) + self.shift)

    def record(self) -> dict:
        """What run.json and default.json keep about it."""
        return asdict(self) | {"temperature": self.temperature}


def logit(prob_dog: np.ndarray) -> np.ndarray:
    """The log-odds of P(dog), clipped off 0 and 1."""
    p = np.clip(np.asarray(prob_dog, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _nll(z: np.ndarray, y: np.ndarray, scale: float, shift: float = 0.0) -> float:
    s = scale * z + shift
    return float(np.mean(np.logaddexp(0.0, s) - y * s))  # binary cross-entropy on logits, overflow-free


def _fit_temperature(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    found = minimize_scalar(lambda a: _nll(z, y, a), bounds=(0.05, 20.0), method="bounded")
    return float(found.x), 0.0


def _fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    fitted = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)  # C large: no shrinkage of 2 params
    return float(fitted.coef_[0, 0]), float(fitted.intercept_[0])


def fit_calibration(prob_dog: np.ndarray, labels: np.ndarray, on: str, method: str = "temperature") -> Calibration:
    """Fit a calibration on held-out photos' single-look P(dog) and true labels (0 cat, 1 dog)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    y = np.asarray(labels, int)
    if len(y) == 0 or len(set(y.tolist())) < 2:
        raise ValueError("calibration needs held-out photos of both classes")
    z = logit(prob_dog)
    scale, shift = (_fit_temperature if method == "temperature" else _fit_platt)(z, y)
    after = _sigmoid(scale * z + shift)
    return Calibration(
        scale,
        shift,
        method,
        len(y),
        on,
        expected_calibration_error(prob_dog, y),
        expected_calibration_error(after, y),
    )


def fold_into(model, calibration: Calibration, layer: str = "prob_dog") -> None:
    """Scale the last Dense layer's kernel and bias so the model itself outputs the calibrated P(dog)."""
    dense = model.get_layer(layer)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * calibration.scale, bias * calibration.scale + calibration.shift])


def cross_fits(
    prob_dog: np.ndarray, labels: np.ndarray, method: str, folds: int = 2, seed: int = 0
) -> list[tuple[np.ndarray, Calibration]]:
    """(photo indices, a calibration fitted on all other photos) per fold: a method's effect, estimated honestly."""
    prob, y = np.asarray(prob_dog, np.float64), np.asarray(labels, int)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(order, folds)
    return [
        (
            part,
            fit_calibration(prob[np.setdiff1d(order, part)], y[np.setdiff1d(order, part)], "the other folds", method),
        )
        for part in parts
    ]
