"""Honest numbers: an accuracy with its 95% interval and what it was measured on, and calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# The two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054
AS_THE_APP_PREDICTS = "as the app predicts: a photo it is unsure about gets a second look, mirrored"
ONE_LOOK = "one look per photo, as training measured it"


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a share of correct answers (95% by default); (0, 1) when n is 0.

    Unlike the textbook p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and keeps its coverage near 0% and 100%,
    where a good classifier lives (Wilson 1927; Newcombe 1998 compares the methods).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= n:
        raise ValueError(f"{correct} correct out of {n} is not a share")
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The exact ends, not a rounding error away from them: 0 of n cannot have a lower bound above 0.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def percent(share: float) -> str:
    """A share as a percentage with one decimal, e.g. 96.5%."""
    return f"{share:.1%}"


@dataclass(frozen=True)
class Accuracy:
    """How many of n photos a model got right, which photos they were, and how it predicted them."""

    correct: int
    n: int
    on: str  # e.g. "the 2,000 photos of train.zip held out from training"
    how: str = AS_THE_APP_PREDICTS

    @classmethod
    def from_share(cls, share: float, n: int, on: str, how: str = AS_THE_APP_PREDICTS) -> Accuracy:
        """From a recorded share of n photos (shares are saved, counts are not)."""
        return cls(int(round(share * n)), n, on, how)

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def interval_text(self) -> str:
        """e.g. '95% CI 95.6–97.2%'."""
        low, high = self.interval
        return f"95% CI {low * 100:.1f}–{high * 100:.1f}%"

    @property
    def headline(self) -> str:
        """The value and its interval, e.g. '96.5% (95% CI 95.6–97.2%)'."""
        return f"{percent(self.value)} ({self.interval_text})"

    def __str__(self) -> str:
        return f"{self.headline} on {self.on}"


def held_out(n: int, source: str) -> str:
    """How a model's own validation photos are named wherever an accuracy measured on them is shown."""
    return f"the {n:,} photos of {source} held out from training"


def _confidence(prob_dog: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob_dog, true = np.asarray(prob_dog, float), np.asarray(true, int)
    return np.maximum(prob_dog, 1 - prob_dog), (prob_dog >= 0.5).astype(int) == true


def reliability_bins(prob_dog, true, n_bins: int = 5) -> pd.DataFrame:
    """Photos grouped by the model's confidence in its answer: how sure it was against how often it was right.

    A two-class model's confidence, max(P(dog), P(cat)), lies in [0.5, 1], so n_bins equal bins cover that
    range (5 bins of 0.1 are the usual 10 bins over [0, 1], half of which a binary model never fills). Only
    bins with photos are returned: low, high, photos, confidence (mean), accuracy, and correct.
    """
    confidence, right = _confidence(prob_dog, true)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "photos": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(right[inside].mean()),
                    "correct": int(right[inside].sum()),
                }
            )
    return pd.DataFrame(rows, columns=["low", "high", "photos", "confidence", "accuracy", "correct"])


def expected_calibration_error(prob_dog, true, n_bins: int = 5) -> float:
    """The gap between confidence and accuracy, averaged over the reliability bins weighted by their photos."""
    bins = reliability_bins(prob_dog, true, n_bins)
    total = bins.photos.sum()
    return float((bins.photos * (bins.accuracy - bins.confidence).abs()).sum() / total) if total else 0.0


def recorded_accuracies(meta: dict) -> tuple[Accuracy | None, Accuracy | None]:
    """A saved model's accuracies from its JSON: as the app predicts (if measured) and the training's one look.

    Both are on the model's own held-out photos. Models saved before counts were recorded give none for the
    first unless their validation split's size is known.
    """
    metrics, n_val = meta.get("metrics", {}), meta.get("n_val") or 0
    source = meta.get("dataset", {}).get("source", "its dataset")
    app = None
    if metrics.get("accuracy") is not None and (n := metrics.get("accuracy_n") or n_val):
        on = str(metrics.get("measured_on") or held_out(n, source)).split(", predicted as")[0]
        app = Accuracy.from_share(metrics["accuracy"], n, on, metrics.get("predicted", AS_THE_APP_PREDICTS))
    single = None
    if metrics.get("best_val_accuracy") is not None and n_val:
        single = Accuracy.from_share(metrics["best_val_accuracy"], n_val, held_out(n_val, source), ONE_LOOK)
    return app, single
