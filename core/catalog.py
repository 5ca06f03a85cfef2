"""What a user can pick: datasets (default, uploaded, typed) and models (shipped default, saved runs)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core import config
from core.data import DatasetError, Source, label_from_name
from core.metrics import Accuracy, recorded_accuracies
from core.pipeline import PipelineConfig
from core.runs import Run, RunStore, model_meta, write_json

DEFAULT_KEY = "default"


@dataclass(frozen=True)
class ModelChoice:
    """One pickable model: the shipped default or a run, with its accuracy and where that was measured."""

    key: str  # DEFAULT_KEY or a run id
    path: Path
    preset: str | None
    accuracy: float | None
    measured_on: str
    # The accuracy shown for it, with its interval: as the app predicts when measured, else training's one look.
    score: Accuracy | None = None
    single_look: Accuracy | None = None  # training's own figure on the same photos, for a tooltip
    pipeline: PipelineConfig | None = None  # the input it was trained on, read from its JSON (no TensorFlow)

    @property
    def name(self) -> str:
        return "Shipped default" if self.key == DEFAULT_KEY else self.key

    @property
    def label(self) -> str:
        accuracy = f"{self.accuracy:.1%}" if self.accuracy is not None else "accuracy not measured"
        return f"{self.name} ({self.preset or 'unknown preset'}, {accuracy})"


def describe(key: str, path: Path, meta: dict | None = None) -> ModelChoice:
    """A model's accuracy and where it was measured, read from the JSON saved beside it."""
    meta = model_meta(path) if meta is None else meta
    app, single = recorded_accuracies(meta)
    score = app or single
    if score is not None:
        accuracy, measured_on = score.value, score.on
    else:
        metrics = meta.get("metrics", {})
        accuracy = metrics.get("accuracy", metrics.get("best_val_accuracy"))
        measured_on = metrics.get("measured_on") or f"validation split of {meta.get('dataset', {}).get('source')}"
    cfg = meta.get("pipeline") or meta.get("config") or {}
    size, color = cfg.get("size", cfg.get("image_size")), cfg.get("color_mode")
    pipeline = PipelineConfig(int(size), color) if size and color in ("grayscale", "rgb") else None
    preset = meta.get("config", {}).get("preset")
    return ModelChoice(key, Path(path), preset, accuracy, measured_on, score, single, pipeline)


def _from_run(run: Run) -> ModelChoice:
    return describe(run.id, run.model_path, run.meta)


def choices() -> list[ModelChoice]:
    """Every model a user may pick, default first; never a file a user uploaded."""
    found = [describe(DEFAULT_KEY, config.DEFAULT_MODEL)] if config.DEFAULT_MODEL.exists() else []
    return found + [_from_run(run) for run in RunStore().with_models()]


def _selection_file() -> Path:
    return Path(config.RUNS_DIR) / "active.json"


def active() -> ModelChoice | None:
    """The chosen model if it still exists, else the shipped default, else the newest run, else None."""
    available = choices()
    try:
        chosen = json.loads(_selection_file().read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        chosen = None
    for choice in available:
        if choice.key == chosen:
            return choice
    return available[0] if available else None


def set_active(key: str) -> ModelChoice:
    """Make the default or a saved run the active model for every session of this server."""
    for choice in choices():
        if choice.key == key:
            _selection_file().parent.mkdir(parents=True, exist_ok=True)
            write_json(_selection_file(), {"model": key})
            return choice
    raise KeyError(f"no model named {key!r}")


def dataset_candidates() -> list[Path]:
    """The datasets offered without typing a path: data/train.zip or data/train/, then uploaded zips."""
    found = [path] if (path := config.default_dataset()) else []
    uploads = Path(config.UPLOADS_DIR)
    if uploads.is_dir():
        found += sorted(p for p in uploads.iterdir() if p.suffix.lower() == ".zip" and p.is_file())
    return found


def check_dataset(path: str | os.PathLike) -> Path:
    """A typed folder or zip path, validated: it exists and holds labeled photos of both classes."""
    path = Path(path).expanduser()
    if not str(path).strip() or not path.exists():
        raise DatasetError(f"{path}: no such folder or zip")
    if not (path.is_dir() or path.suffix.lower() == ".zip"):
        raise DatasetError(f"{path}: choose a folder of photos or a .zip, not a single file")
    labels = {label_from_name(item.name) for item in Source(path).listing if item.refusal is None}
    if not {0, 1} <= labels:
        raise DatasetError(
            f"{path.name}: needs photos of both classes, named like cat.1.jpg / dog.1.jpg or in cat/ and dog/ folders"
        )
    return path


def save_upload(name: str, data: BinaryIO) -> Path:
    """Keep a dropped dataset zip under data/uploads/ (safe file name, atomic write), refusing unusable zips."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "dataset"
    target = Path(config.UPLOADS_DIR) / f"{stem}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{stem}.tmp{os.getpid()}.zip")
    try:
        with open(tmp, "wb") as out:
            while chunk := data.read(1 << 20):
                out.write(chunk)
        check_dataset(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
