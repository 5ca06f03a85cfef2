"""Does temperature or Platt scaling calibrate a model? Cross-fitted on its validation photos, side by side.

A shipped model must be calibrated on photos that are neither its training photos nor the validation photos
that report its accuracy (core.calibrate, fitted during training). To judge the *methods* on a model that was
trained without such a part, this script cross-fits on its validation split instead: each half is calibrated
by a fit on the other half, so no photo is scored by a fit that saw it. It prints, for uncalibrated,
temperature and Platt: the expected calibration error (5 bins over confidence 0.5-1), accuracy and per-class
accuracy, both for the single look and as the app predicts (unsure photos mirrored and averaged).

Usage: python benchmarks/calibration.py [--model models/default.keras] [--folds 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core import config
from core.calibrate import cross_fits
from core.config import UNSURE_MARGIN
from core.metrics import expected_calibration_error
from core.predict import Predictor, evaluate
from core.runs import model_meta


def _looks(model: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-look and mirrored P(dog) of each validation photo, and its true label."""
    first = evaluate(Predictor(model, tta="off"), config.KAGGLE_TRAIN_ZIP, names).predictions
    both = evaluate(Predictor(model, tta="all"), config.KAGGLE_TRAIN_ZIP, names).predictions
    both = both.set_index("file").loc[first.file]
    p0 = first.prob_dog.to_numpy(float)
    return p0, 2 * both.prob_dog.to_numpy(float) - p0, first.true.to_numpy(int)


def _as_app(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    unsure = np.abs(p0 - 0.5) < UNSURE_MARGIN
    return np.where(unsure, (p0 + p1) / 2, p0)


def _row(name: str, prob: np.ndarray, y: np.ndarray) -> str:
    pred = (prob >= 0.5).astype(int)
    cat, dog = (pred[y == 0] == 0).mean(), (pred[y == 1] == 1).mean()
    ece = expected_calibration_error(prob, y)
    return f"| {name} | {(pred == y).mean():.2%} | {cat:.2%} | {dog:.2%} | {ece:.2%} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=config.DEFAULT_MODEL)
    parser.add_argument("--folds", type=int, default=2)
    args = parser.parse_args()
    names = model_meta(args.model)["validation_names"]
    p0, p1, y = _looks(args.model, names)
    print(f"{args.model.name}: {len(y):,} validation photos of train.zip, {args.folds}-fold cross-fit\n")
    print("| calibration | accuracy | cats | dogs | ECE |\n| --- | --: | --: | --: | --: |")
    for method in (None, "temperature", "platt"):
        c0, c1 = p0.copy(), p1.copy()
        for part, fit in cross_fits(p0, y, method, args.folds) if method else []:
            c0[part], c1[part] = fit.apply(p0[part]), fit.apply(p1[part])  # one fit, as folded into the model
        label = method or "none"
        print(_row(f"{label}, single look", c0, y))
        print(_row(f"{label}, as the app predicts", _as_app(c0, c1), y))


if __name__ == "__main__":
    main()
