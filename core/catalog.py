"""What a user can pick: datasets (default, uploaded, typed) and models (shipped default, saved runs).

Nothing here belongs to a visitor by itself: the dashboard keeps each session's choice in its own state and
passes an `owner` (an opaque id of the browser) where an upload belongs to someone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core import config
from core.data import OK, DatasetError, Source, label_from_name
from core.metrics import Accuracy, recorded_accuracies
from core.pipeline import PipelineConfig
from core.runs import RUN_ID, Run, RunStore, model_meta, write_json

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


def find(key: str | None) -> ModelChoice | None:
    """The pickable model with this key (the default or a run id), or None if there is none (any more)."""
    return next((choice for choice in choices() if choice.key == key), None) if key else None


def _server_default_file() -> Path:
    # Written only by an explicit "Make default for everyone"; a session's own pick never touches it.
    return Path(config.RUNS_DIR) / "server-default.json"


def server_default_record() -> dict:
    """What "Make default for everyone" last stored: {"model", "set_at", "set_by"}, or {} if never used."""
    try:
        record = json.loads(_server_default_file().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def server_default() -> ModelChoice | None:
    """The model of every session that has not picked its own: the one made default for everyone if it still
    exists, else the shipped default, else the newest run, else None."""
    available = choices()
    chosen = server_default_record().get("model")
    return next((c for c in available if c.key == chosen), available[0] if available else None)


def set_server_default(key: str, by: str | None = None) -> ModelChoice:
    """Make the shipped default or a saved run the model of every session that has not picked its own."""
    choice = find(key)
    if choice is None:
        raise KeyError(f"no model named {key!r}")
    target = _server_default_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, {"model": choice.key, "set_at": time.time(), "set_by": by})
    return choice


# ---- Typed paths: only under the allowed roots, and one refusal for everything else -------------------------


def path_refusal() -> str:
    """The one refusal every path outside the allowed roots gets, whether or not it exists on the server."""
    roots = ", ".join(str(root) for root in config.data_roots())
    return f"Not a dataset path this server offers: type a folder or .zip under {roots}."


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def resolve_dataset_path(typed: str | os.PathLike) -> Path:
    """A typed folder or zip, resolved (symlinks too) and allowed only under config.data_roots().

    Everything outside them, and the app's own uploads/ and cache/ folders, gets path_refusal() word for word,
    so the answer never tells which server paths exist. A relative path is read from DATA_DIR.
    """
    text = str(typed).strip()
    if not text or "\0" in text:
        raise DatasetError(path_refusal())
    path = Path(os.path.expanduser(text))
    path = Path(os.path.realpath(path if path.is_absolute() else Path(config.DATA_DIR) / path))
    roots = [Path(os.path.realpath(root)) for root in config.data_roots()]
    private = [Path(os.path.realpath(p)) for p in (config.UPLOADS_DIR, config.CACHE_DIR)]
    if not any(_inside(path, root) for root in roots) or any(_inside(path, p) or _inside(p, path) for p in private):
        raise DatasetError(path_refusal())
    return path


def check_dataset(typed: str | os.PathLike) -> Path:
    """A typed dataset path that is allowed, exists and is a folder or a .zip; its contents are scanned later,
    in the background (core.jobs.DatasetScans), never here."""
    path = resolve_dataset_path(typed)
    shown = _shown(path)
    if not path.exists():
        raise DatasetError(f"{shown}: no such folder or zip")
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip")):
        raise DatasetError(f"{shown}: choose a folder of photos or a .zip, not a single file")
    return path


def _shown(path: Path) -> str:
    # Under a root, say where relative to it: the user typed that much, and nothing more is revealed.
    for root in config.data_roots():
        real = Path(os.path.realpath(root))
        if _inside(path, real) and path != real:
            return f"{root.name}/{path.relative_to(real).as_posix()}"
    return path.name


def missing_classes(shown: str, entries: Iterable[tuple[str, str | None]]) -> str | None:
    """Why a source cannot be trained on (it lacks usable photos of a class, and what was refused), or None.

    entries are (file name, refusal or None), as a listing (Listed.refusal) or a manifest (status) gives them.
    """
    usable, refused = {0: 0, 1: 0}, {}
    for name, refusal in entries:
        if refusal is None:
            label = label_from_name(name)
            if label is not None:
                usable[label] += 1
        else:
            refused.setdefault(refusal, []).append(name)
    if usable[0] and usable[1]:
        return None
    message = (
        f"{shown}: needs photos of both classes, named like cat.1.jpg / dog.1.jpg or in cat/ and dog/ folders; "
        f"it has {usable[0]:,} usable cat and {usable[1]:,} usable dog photos"
    )
    for reason, names in sorted(refused.items(), key=lambda kv: not kv[0].startswith("refused")):
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")
        message += f"; {len(names):,} {'entry' if len(names) == 1 else 'entries'} {reason}: {listed}"
    return message + "."


def manifest_entries(manifest) -> list[tuple[str, str | None]]:
    """A scan's manifest as missing_classes() reads it."""
    pairs = zip(manifest.name, manifest.status, strict=True)
    return [(name, None if status == OK else status) for name, status in pairs]


# ---- The default dataset and a session's uploads ------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A dataset zip a session dropped: stored once per content hash, shown under the name that session gave it."""

    digest: str  # sha256 of the bytes: the same zip dropped twice is one file, different zips never collide
    path: Path
    name: str
    size: int
    uploaded_at: float
    last_used: float


_DIGEST = re.compile(r"[0-9a-f]{64}")
_UPLOADS_LOCK = threading.Lock()  # one read-modify-write of an upload's record at a time in this server
_RECORD = "upload.json"


def _uploads_root() -> Path:
    return Path(config.UPLOADS_DIR)


def _record(folder: Path) -> dict:
    try:
        record = json.loads((folder / _RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("uses"), dict) else {}


def _valid_use(use) -> bool:
    return (
        isinstance(use, dict)
        and isinstance(use.get("name"), str)
        and all(isinstance(use.get(k), int | float) for k in ("uploaded_at", "last_used"))
    )


def _stored_zip(folder: Path) -> Path | None:
    zips = [p for p in folder.glob("*.zip") if p.is_file() and not p.is_symlink()]
    return zips[0] if len(zips) == 1 else None


def _upload_folders() -> list[Path]:
    root = _uploads_root()
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if _DIGEST.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]


def uploads(owner: str) -> list[Upload]:
    """The zips this owner dropped and has not removed, newest first, under the names it gave them."""
    found = []
    for folder in _upload_folders():
        use = _record(folder).get("uses", {}).get(owner)
        stored = _stored_zip(folder) if _valid_use(use) else None
        if stored is not None:
            size = stored.stat().st_size
            found.append(Upload(folder.name, stored, use["name"], size, use["uploaded_at"], use["last_used"]))
    return sorted(found, key=lambda u: u.uploaded_at, reverse=True)


def upload_of(path: str | os.PathLike, owner: str) -> Upload | None:
    """This owner's upload stored at path, or None (not an upload, not theirs, or removed)."""
    path = Path(path)
    return next((u for u in uploads(owner) if u.path == path), None)


def dataset_candidates(owner: str | None = None) -> list[Path]:
    """The datasets a session is offered without typing a path: the default, then that owner's uploads."""
    found = [path] if (path := config.default_dataset()) else []
    return found + ([u.path for u in uploads(owner)] if owner else [])


def _display_name(name: str) -> str:
    # The name as the user sees it again, never a path: the last component, printable, at most 100 characters.
    name = re.split(r"[/\\]", str(name))[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "dataset.zip"
    return name[:100]


def _file_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")[:80] or "dataset"
    return f"{stem}.zip"


def _write_incoming(data: BinaryIO, tmp: Path) -> str:
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _check_upload(tmp: Path, shown: str) -> None:
    if not zipfile.is_zipfile(tmp):
        raise DatasetError(f"{shown}: not a readable zip file")
    try:
        listing = Source(tmp).listing
    except DatasetError as err:  # a zip bomb, a damaged directory: said about the user's file, not our temp file
        reason = str(err).replace(str(tmp), shown).replace(tmp.name, shown)
        raise DatasetError(reason if reason.startswith(shown) else f"{shown}: {reason}") from None
    if problem := missing_classes(shown, [(item.name, item.refusal) for item in listing]):
        raise DatasetError(problem)


def save_upload(name: str, data: BinaryIO, owner: str) -> Upload:
    """Keep a dropped dataset zip under uploads/<sha256>/ and list it for this owner; unusable zips are refused
    with a reason that names the user's file."""
    shown = _display_name(name)
    root = _uploads_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".incoming-{os.getpid()}-{threading.get_ident()}.zip"
    try:
        digest = _write_incoming(data, tmp)
        folder = root / digest
        with _UPLOADS_LOCK:
            stored = _stored_zip(folder) if folder.is_dir() else None
            if stored is None:
                _check_upload(tmp, shown)
                folder.mkdir(exist_ok=True)
                stored = folder / _file_name(shown)
                os.replace(tmp, stored)
            now = time.time()
            record = _record(folder) or {"uses": {}}
            record["uses"][owner] = {"name": shown, "uploaded_at": now, "last_used": now}
            write_json(folder / _RECORD, record)
    except OSError as err:
        raise DatasetError(f"{shown}: could not be saved on the server ({err.strerror or 'I/O error'})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Upload(digest, stored, shown, stored.stat().st_size, now, now)


def touch_upload(upload: Upload, owner: str, now: float | None = None) -> None:
    """Note that this owner still uses the upload, so the sweep keeps it."""
    now = time.time() if now is None else now
    with _UPLOADS_LOCK:
        record = _record(upload.path.parent)
        use = record.get("uses", {}).get(owner)
        if isinstance(use, dict):
            use["last_used"] = now
            write_json(upload.path.parent / _RECORD, record)


def remove_upload(upload: Upload, owner: str, keep: Iterable[Path] = ()) -> None:
    """Take an upload off this owner's list; its file goes once no session lists it and nothing in keep uses it."""
    folder = upload.path.parent
    with _UPLOADS_LOCK:
        record = _record(folder)
        record.get("uses", {}).pop(owner, None)
        if record.get("uses") or _in_use(folder, keep):
            write_json(folder / _RECORD, record)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _in_use(folder: Path, keep: Iterable[Path]) -> bool:
    return any(_inside(Path(os.path.realpath(path)), Path(os.path.realpath(folder))) for path in keep)


def sweep_uploads(ttl_hours: float, now: float | None = None, keep: Iterable[Path] = ()) -> list[Path]:
    """Forget uses older than ttl_hours and delete the uploads nobody uses any more (except those in keep).

    Zips left at the top of uploads/ by older versions, and half-written incoming files, go by their age.
    Returns what was deleted.
    """
    now, keep = (time.time() if now is None else now), list(keep)
    oldest = now - ttl_hours * 3600
    removed = []
    with _UPLOADS_LOCK:
        for folder in _upload_folders():
            record = _record(folder)
            uses = {o: u for o, u in record.get("uses", {}).items() if _valid_use(u) and u["last_used"] > oldest}
            if uses or _in_use(folder, keep):
                if uses != record.get("uses"):
                    write_json(folder / _RECORD, {**record, "uses": uses})
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        root = _uploads_root()
        loose = [*root.glob("*.zip"), *root.glob(".incoming-*")] if root.is_dir() else []
        for path in loose:
            if path.is_file() and path.stat().st_mtime < oldest and not _in_use(path, keep):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ---- Run folders the Runs page cannot list ------------------------------------------------------------------


def odd_run_folders() -> list[tuple[str, str]]:
    """Entries of the runs folder that are not listed as runs, with why: symlinks, half-written folders."""
    root = Path(config.RUNS_DIR)
    if not root.is_dir():
        return []
    odd = []
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            odd.append((path.name, "a symbolic link, which is never followed"))
        elif not path.is_dir() or path.name.startswith("."):
            continue
        elif RUN_ID.fullmatch(path.name) is None:
            odd.append((path.name[:60], "not a run folder name"))
        elif not (path / "run.json").is_file():
            odd.append((path.name, "no run.json yet: a run being written, or one that crashed before saving"))
    return odd
