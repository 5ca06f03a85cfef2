"""Calibration: make P(dog) mean what it says, fitted on photos the training held out, folded into the model.

A net trained with cross-entropy is usually overconfident in the middle: photos it puts at 0.5-0.6 are right
less often than 55% of the time. Temperature scaling (Guo et al., 2017) divides the logit by one number T fitted
on held-out photos; Platt scaling also shifts it. Either is folded into the last Dense layer (its kernel and
bias scaled), so the saved `.keras`, its exports and every engine predict the calibrated P(dog) with no extra
step anywhere. The photos it is fitted on must be neither training photos (their logits are too confident)
nor the validation photos that report the accuracy (that would grade the model on its own answer key).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from core.data import Source, label_from_name
from core.errors import DatasetError, ModelError, SettingsError
from core.metrics import expected_calibration_error
from core.predict import Predictor, evaluate
from core.runs import model_meta, record_accuracy, regression_sample, write_json

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


def split_held_out(names: list[str], share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """A model's held-out photos in two, per class: `share` of them to fit a calibration, the rest to report on."""
    if not 0 < share < 1:
        raise SettingsError(f"the share of held-out photos to fit on lies between 0 and 1, not {share}")
    rng = np.random.default_rng(seed)
    fit: list[str] = []
    for label in (0, 1):
        group = sorted(n for n in names if label_from_name(n) == label)
        fit += [group[i] for i in rng.permutation(len(group))[: round(share * len(group))]]
    chosen = set(fit)
    return sorted(fit), [n for n in names if n not in chosen]


def calibrate_saved(target, source, share: float = 0.5, method: str = "platt", seed: int = 0) -> Calibration:
    """Calibrate a saved model that trained without a calibration split, on part of its own held-out photos.

    The photos its training held out are split in two per class (`split_held_out`): the calibration is fitted on
    one part (single looks), folded into the model file, and from then on the model reports its accuracy on the
    other part only, so no reported number is measured on the photos that fitted it. Its JSON keeps both lists,
    the calibration, and training's own one-look figure under `before_calibration`.
    """
    from core.model import load_model, save_model  # keras and TensorFlow: only when calibrating a saved model

    target, meta = Path(target), model_meta(Path(target))
    names = list(meta.get("validation_names") or [])
    if meta.get("calibration") or meta.get("calibration_names"):
        raise ModelError(
            f"{target.name} is calibrated already ({meta.get('calibration', {}).get('on', 'in training')})"
        )
    if not names or Source(source).fingerprint() != meta.get("dataset", {}).get("fingerprint"):
        raise DatasetError(f"{source}: not the dataset {target.name} was trained on, or it records no held-out photos")
    fit, report = split_held_out(names, share, seed)
    found = evaluate(Predictor(target, tta="off"), source, fit).predictions.dropna(subset=["prob_dog"])
    on = f"{len(found):,} of the {len(names):,} photos of {Path(source).name} its training held out"
    calibration = fit_calibration(found.prob_dog.to_numpy(), found.true.to_numpy(), on, method)
    if not calibration.usable:
        raise ModelError(f"{target.name}: its P(dog) carries no signal on those photos, so it cannot be calibrated")
    model = load_model(target)
    fold_into(model, calibration)
    save_model(model, target)
    if "model_sha256" in meta:  # a promoted model's record of its own file
        data = target.read_bytes()
        meta.update(model_sha256=hashlib.sha256(data).hexdigest(), model_bytes=len(data))
    metrics = meta.get("metrics", {})
    before = {k: metrics.pop(k) for k in ("best_val_accuracy", "best_val_loss") if k in metrics}
    meta.update(
        calibration=calibration.record() | {"folded": True, "after_training": True},
        calibration_names=fit,
        n_calibration=len(fit),
        validation_names=report,
        n_val=len(report),
        regression_sample=regression_sample(report),
        before_calibration=before | {"n_val": len(names), "accuracy": metrics.get("accuracy")},
        metrics=metrics,
    )
    write_json(target.with_suffix(".json"), meta)
    record_accuracy(target, source)
    return calibration
