"""How long a training run will take on this machine, judged by the runs this machine has already timed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import SettingsError
from core.runs import Run
from core.settings import TrainConfig


@dataclass(frozen=True)
class Estimate:
    """The training time of a run to come, at the pace a finished run like it kept here."""

    seconds: float
    images_per_s: float
    train_photos: int
    based_on: str  # the run whose pace it assumes
    budget_bound: bool  # the time budget, not the epochs, ends the run


# Pace depends on the network, the input size and its stages, the augmentation and the batch size; the learning
# rate does not.
_SAME_PACE = ("net", "image_size", "color_mode", "train_scales", "augment", "batch_size")


def _alike(config: TrainConfig, meta: dict, keys: tuple[str, ...]) -> bool:
    try:
        timed = TrainConfig.from_record(meta.get("config", {}))
    except SettingsError:  # a run.json this version cannot read is like nothing
        return False
    return all(timed.value(key) == config.value(key) for key in keys)


def _timed(runs: Iterable[Run]) -> list[tuple[Run, dict, float]]:
    found = []
    for run in runs:
        meta = run.meta
        metrics = meta.get("metrics", {})
        if metrics.get("train_images_per_s") and metrics.get("epochs_completed"):
            found.append((run, meta, metrics["train_images_per_s"]))
    return found


def estimate_training(config: TrainConfig, labeled: int, runs: Iterable[Run]) -> Estimate | None:
    """The fit time for config on `labeled` photos, at the pace of the newest run like it here; None if none ran.

    A run with the same batch size is preferred; failing one, any batch size of the same network and input.
    """
    timed = _timed(runs)
    matches = [t for t in timed if _alike(config, t[1], _SAME_PACE)]
    matches = matches or [t for t in timed if _alike(config, t[1], _SAME_PACE[:-1])]
    if not matches:
        return None
    run, _, pace = matches[0]  # runs come newest first
    used = min(config.limit, labeled) if config.limit else labeled
    train_photos = used - int(round(used * config.validation_split))
    seconds = config.epochs * train_photos / pace
    budget_s = config.time_budget_min * 60 if config.time_budget_min else None
    bound = budget_s is not None and budget_s < seconds
    return Estimate(budget_s if bound else seconds, pace, train_photos, run.id, bound)
