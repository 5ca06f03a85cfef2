"""The models a user can pick, the one rule for "the model" when none is named, and the one reader of what a
model's JSON says about it.

Every front end asks here: the dashboard for a session that picked no model of its own, the CLI and the API
when no --model is given. Only the shipped default and saved runs are offered, never a file a user uploaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from core import config
from core.errors import NotFound
from core.metrics import Accuracy, recorded_accuracies
from core.pipeline import PipelineConfig
from core.runs import Run, RunStore, model_meta, write_json

DEFAULT_KEY = "default"


@dataclass(frozen=True)
class ModelChoice:
    """One pickable model, the shipped default or a run, and what its JSON says: preset, input, accuracy."""

    key: str  # DEFAULT_KEY or a run id
    path: Path
    preset: str | None
    accuracy: float | None
    measured_on: str  # which photos the accuracy was measured on, in words
    # The accuracy shown for it, with its interval: as the app predicts when measured, else training's one look.
    score: Accuracy | None = None
    single_look: Accuracy | None = None  # training's own figure on the same photos, for a tooltip
    pipeline: PipelineConfig | None = None  # the input it was trained on, read from its JSON (no TensorFlow)
    trained_at: str | None = None  # when its run finished (ISO 8601), if it did

    @property
    def name(self) -> str:
        return "Shipped default" if self.key == DEFAULT_KEY else self.key

    @property
    def label(self) -> str:
        accuracy = f"{self.accuracy:.1%}" if self.accuracy is not None else "accuracy not measured"
        return f"{self.name} ({self.preset or 'unknown preset'}, {accuracy})"


def _pipeline(meta: dict) -> PipelineConfig | None:
    cfg = meta.get("pipeline") or meta.get("config") or {}
    size, color = cfg.get("size", cfg.get("image_size")), cfg.get("color_mode")
    return PipelineConfig(int(size), color) if size and color in ("grayscale", "rgb") else None


def describe(key: str, path: Path, meta: dict | None = None) -> ModelChoice:
    """What the JSON saved beside a model says about it (core.runs.model_meta, unless meta is given).

    The accuracy is the app's own (a second, mirrored look for unsure photos) where it was measured, else
    training's one look; models saved before photo counts were recorded get the recorded share and its source.
    """
    meta = model_meta(path) if meta is None else meta
    app, single = recorded_accuracies(meta)
    score = app or single
    if score is not None:
        accuracy, measured_on = score.value, score.on
    else:
        metrics = meta.get("metrics", {})
        accuracy = metrics.get("accuracy", metrics.get("best_val_accuracy"))
        measured_on = metrics.get("measured_on") or f"validation split of {meta.get('dataset', {}).get('source')}"
    preset = meta.get("config", {}).get("preset")
    return ModelChoice(
        key, Path(path), preset, accuracy, measured_on, score, single, _pipeline(meta), meta.get("finished_at")
    )


def _from_run(run: Run) -> ModelChoice:
    return describe(run.id, run.model_path, run.meta)


def choices() -> list[ModelChoice]:
    """Every model a user may pick, the shipped default first, then runs newest first."""
    found = [describe(DEFAULT_KEY, config.DEFAULT_MODEL)] if config.DEFAULT_MODEL.exists() else []
    return found + [_from_run(run) for run in RunStore().with_models()]


def find(key: str | None) -> ModelChoice | None:
    """The pickable model with this key (the default or a run id), or None if there is none (any more)."""
    return next((choice for choice in choices() if choice.key == key), None) if key else None


def _default_record_file() -> Path:
    # Written only by an explicit "Make default for everyone"; a session's own pick never touches it.
    return Path(config.RUNS_DIR) / "server-default.json"


def default_model_record() -> dict:
    """What "Make default for everyone" last stored: {"model", "set_at", "set_by"}, or {} if never used."""
    try:
        record = json.loads(_default_record_file().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def default_model() -> ModelChoice | None:
    """The model used wherever none is named (a session that picked none, the CLI, the API): the one made
    default for everyone while it still exists, else the shipped default, else the newest run, else None."""
    available = choices()
    chosen = default_model_record().get("model")
    return next((c for c in available if c.key == chosen), available[0] if available else None)


def set_default_model(key: str, by: str | None = None) -> ModelChoice:
    """Make the shipped default or a saved run the model used wherever none is named; `by` says who did."""
    choice = find(key)
    if choice is None:
        raise NotFound(f"no model named {key!r}")
    target = _default_record_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, {"model": choice.key, "set_at": time.time(), "set_by": by})
    return choice
