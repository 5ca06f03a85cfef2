"""How long a training run will take on this machine, judged by the runs this machine has already timed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.runs import Run
from core.train import TrainConfig


@dataclass(frozen=True)
class Estimate:
    """The training time of a run to come, at the pace a finished run like it kept here."""

    seconds: float
    images_per_s: float
    train_photos: int
    based_on: str  # the run whose pace it assumes
    budget_bound: bool  # the time budget, not the epochs, ends the run


def _alike(config: TrainConfig, meta: dict) -> bool:
    # Pace depends on the network, the input size and the augmentation; batch size and learning rate matter less.
    cfg = meta.get("config", {})
    same = ("preset", "image_size", "color_mode", "augment")
    scales = tuple(cfg.get("train_scales") or ())
    return all(cfg.get(key) == getattr(config, key) for key in same) and scales == tuple(config.train_scales)


def estimate_training(config: TrainConfig, labeled: int, runs: Iterable[Run]) -> Estimate | None:
    """The fit time for config on a dataset of `labeled` photos, from the newest alike run; None if none ran here."""
    for run in runs:
        meta = run.meta
        pace = meta.get("metrics", {}).get("train_images_per_s")
        if not pace or not meta.get("metrics", {}).get("epochs_completed") or not _alike(config, meta):
            continue
        used = min(config.limit, labeled) if config.limit else labeled
        train_photos = used - int(round(used * config.validation_split))
        seconds = config.epochs * train_photos / pace
        budget_s = config.time_budget_min * 60 if config.time_budget_min else None
        bound = budget_s is not None and budget_s < seconds
        return Estimate(budget_s if bound else seconds, pace, train_photos, run.id, bound)
    return None
