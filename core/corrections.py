"""Label corrections, one readable JSON file per dataset fingerprint, and the "my photos" store.

A correction is an action on one photo of one dataset, by its name there:
- "cat" or "dog": relabel it as that class;
- "exclude": it is neither a cat nor a dog, leave it out of training;
- "keep": its label is right (reviewed), so a review list can skip it.

The file is `config.CORRECTIONS_DIR / "<dataset fingerprint>.json"`, written atomically (temp file, then
os.replace), and applied only to the dataset whose fingerprint it names.

"My photos" are photos users labelled themselves (e.g. "Wrong? Correct it." on Predict), stored by content sha256
in the class-folder layout `cat/<sha256>.jpg`, `dog/<sha256>.png` under `config.MY_PHOTOS_DIR`, so that
`core.data.Source` reads the folder as a dataset as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.config import CLASS_NAMES, temp_sibling
from core.data import LoadedDataset, label_from_name, split_indices
from core.errors import CorrectionsError
from core.pipeline import decode, decode_original, inspect

ACTIONS = ("cat", "dog", "exclude", "keep")
FORMAT = "cats-vs-dogs-studio corrections"
FORMAT_VERSION = 1
_FINGERPRINT = re.compile(r"[0-9a-f]{8,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    # One lock per file for read-modify-write: dashboard sessions share the server process, and two clicks in two
    # tabs must not lose one another. Writes are atomic besides, so a reader never sees half a file.
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path.resolve(), threading.Lock())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Correction:
    """One photo's action, the label the dataset gave it, and when it was recorded."""

    action: str
    given: str | None = None
    at: str = ""


@dataclass
class Corrections:
    """The corrections of one dataset: an action per photo name."""

    fingerprint: str
    source: str = ""
    photos: dict[str, Correction] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.fingerprint, str) or not _FINGERPRINT.fullmatch(self.fingerprint):
            raise CorrectionsError("a dataset fingerprint is 8 to 128 lower-case hex digits")

    def set(self, name: str, action: str, given: str | None = None, at: str | None = None) -> None:
        """Record an action for one photo (replacing any earlier one)."""
        if not isinstance(name, str) or not name:
            raise CorrectionsError("a correction needs the photo's name in its dataset")
        if not isinstance(action, str) or action not in ACTIONS:
            raise CorrectionsError(f"{name!r}: unknown action {action!r}: choose from {', '.join(ACTIONS)}")
        if given is not None and given not in CLASS_NAMES:
            raise CorrectionsError(f"a given label is cat or dog, not {given!r}")
        self.photos[name] = Correction(action, given, _now() if at is None else str(at))

    def remove(self, name: str) -> bool:
        """Forget one photo's correction; False if it had none."""
        return self.photos.pop(name, None) is not None

    def action(self, name: str) -> str | None:
        """The photo's action, or None if it has none."""
        found = self.photos.get(name)
        return found.action if found else None

    def apply(
        self, names: Iterable[str], labels: Iterable[int], fingerprint: str
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(names, labels, excluded) of a dataset with these corrections: relabelled photos get their new label,
        excluded ones are dropped (and listed). fingerprint is the dataset's; another dataset's is refused."""
        self.check(fingerprint)
        names = np.asarray(list(names), dtype=str)
        labels = np.array(list(labels), dtype=np.int64)
        if len(names) != len(labels):
            raise ValueError(f"{len(names)} names but {len(labels)} labels")
        keep = np.ones(len(names), bool)
        index = {name: i for i, name in enumerate(names)}
        for name, correction in self.photos.items():
            i = index.get(name)
            if i is None or correction.action == "keep":
                continue  # a photo the dataset no longer has, or one reviewed as right
            if correction.action == "exclude":
                keep[i] = False
            else:
                labels[i] = CLASS_NAMES.index(correction.action)
        return names[keep], labels[keep], names[~keep].tolist()

    def relabelled(self, names: Iterable[str]) -> np.ndarray:
        """Which of these photos have a new label (to keep them out of a validation split)."""
        changed = {name for name, c in self.photos.items() if c.action in CLASS_NAMES}
        return np.array([name in changed for name in names], bool)

    def check(self, fingerprint: str) -> None:
        """Refuse to be applied to any dataset but the one they were made for."""
        if fingerprint != self.fingerprint:
            raise CorrectionsError(
                f"these corrections were made for another dataset (fingerprint {self.fingerprint}), "
                f"not this one ({fingerprint}); they are not applied"
            )

    def digest(self) -> str:
        """A fingerprint of what training uses (relabels and exclusions, with the dataset's fingerprint)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.fingerprint}\n".encode())
        for name in sorted(self.photos):
            if self.photos[name].action != "keep":  # a reviewed-as-right photo trains as before
                h.update(f"{name}\t{self.photos[name].action}\n".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        """Counts per action and the digest, as run.json records them."""
        actions = [c.action for c in self.photos.values()]
        return {
            "dataset_fingerprint": self.fingerprint,
            "fingerprint": self.digest(),
            "relabelled": sum(a in CLASS_NAMES for a in actions),
            "excluded": actions.count("exclude"),
            "reviewed": actions.count("keep"),
        }

    def to_json(self) -> dict:
        """The file's content: readable, sorted by photo name."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dataset": {"fingerprint": self.fingerprint, "source": self.source},
            "updated_at": _now(),
            "photos": {
                name: {k: v for k, v in vars(c).items() if v not in (None, "")}
                for name, c in sorted(self.photos.items())
            },
        }

    @classmethod
    def from_json(cls, data: object, where: str = "corrections file") -> Corrections:
        """Corrections from a file's parsed content; CorrectionsError for anything malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise CorrectionsError(f"{where}: not a corrections file of this app (version {FORMAT_VERSION})")
        try:
            dataset = data["dataset"]
            found = cls(dataset["fingerprint"], str(dataset.get("source", "")))
            for name, item in data["photos"].items():
                found.set(name, item["action"], item.get("given"), item.get("at", ""))
        except (AttributeError, KeyError, TypeError) as err:
            raise CorrectionsError(f"{where}: malformed corrections file (missing or wrong {err})") from None
        except CorrectionsError as err:
            raise CorrectionsError(f"{where}: {err}") from None
        return found


def corrections_path(fingerprint: str, root: Path | None = None) -> Path:
    """Where a dataset's corrections live: one JSON file per dataset fingerprint."""
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise CorrectionsError("a dataset fingerprint is 8 to 128 lower-case hex digits")
    return Path(root or config.CORRECTIONS_DIR) / f"{fingerprint}.json"


def read_corrections(path: str | os.PathLike) -> Corrections:
    """Read any corrections file (e.g. one passed to training); CorrectionsError if it cannot be used."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorrectionsError(f"{path.name}: no such corrections file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CorrectionsError(f"{path.name}: unreadable ({getattr(err, 'strerror', None) or err})") from None
    except json.JSONDecodeError as err:
        raise CorrectionsError(f"{path.name}: not valid JSON (line {err.lineno}, column {err.colno})") from None
    return Corrections.from_json(data, path.name)


def load_corrections(fingerprint: str, root: Path | None = None, source: str = "") -> Corrections:
    """The saved corrections of the dataset with this fingerprint, or empty ones if it has none yet."""
    path = corrections_path(fingerprint, root)
    if not path.exists():
        return Corrections(fingerprint, source)
    found = read_corrections(path)
    found.check(fingerprint)  # a file copied or renamed onto another dataset's name is not applied
    return found


def usable_corrections(fingerprint: str, root: Path | None = None) -> tuple[Path | None, dict]:
    """A dataset's corrections file if training has something to apply from it (a relabel or an exclusion),
    else None; with its summary (counts per action)."""
    try:
        found = load_corrections(fingerprint, root)
    except CorrectionsError:  # unreadable or another dataset's: nothing training may apply
        return None, {}
    summary = found.summary()
    useful = summary["relabelled"] or summary["excluded"]
    return (corrections_path(fingerprint, root) if useful else None), summary


def save_corrections(corrections: Corrections, root: Path | None = None) -> Path:
    """Write the dataset's corrections file atomically; returns its path."""
    path = corrections_path(corrections.fingerprint, root)
    _write_atomic(path, json.dumps(corrections.to_json(), indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
    return path


def record(
    fingerprint: str,
    changes: dict[str, str | None],
    root: Path | None = None,
    source: str = "",
    given: dict[str, str] | None = None,
) -> Corrections:
    """Load, change (an action per name; None removes it), and save, under a lock: one click's whole update."""
    path = corrections_path(fingerprint, root)
    with _lock(path):
        found = load_corrections(fingerprint, root, source)
        for name, action in changes.items():
            if action is None:
                found.remove(name)
            else:
                found.set(name, action, (given or {}).get(name))
        save_corrections(found, root)
    return found


# "My photos".

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif"}
_INDEX = ".index.json"  # a dotfile, so core.data.Source skips it like OS litter


@dataclass(frozen=True)
class MyPhoto:
    """One stored photo: its content hash, the label its user gave, its file, and where it came from."""

    sha256: str
    label: str
    path: Path
    name: str = ""  # the file name it was uploaded under, for display
    added_at: str = ""


class MyPhotos:
    """Photos users labelled themselves, by content sha256, stored as cat/<sha>.ext and dog/<sha>.ext."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or config.MY_PHOTOS_DIR)

    def add(self, data: bytes, label: str | int, name: str = "") -> MyPhoto:
        """Store a photo with its label (a photo stored before moves to the new label); ImageError if unusable."""
        label = CLASS_NAMES[label] if isinstance(label, int | np.integer) and 0 <= label < 2 else label
        if label not in CLASS_NAMES:
            raise ValueError(f"a label is cat or dog, not {label!r}")
        info = inspect(data)
        decode(data)  # refused exactly as training would refuse it, before anything is stored
        sha = hashlib.sha256(data).hexdigest()  # of the bytes as given, so the same upload finds its photo again
        ext = _EXTENSIONS.get(info.format)
        if ext is None:  # a format core.data lists under no image extension: stored as PNG
            ext, data = ".png", _png(decode_original(data))
        with _lock(self.root / _INDEX):
            for old in self._files(sha):
                if old.parent.name != label or old.suffix != ext:
                    old.unlink(missing_ok=True)
            path = self.root / label / f"{sha}{ext}"
            _write_atomic(path, data)
            index = self._index()
            index[sha] = {"name": Path(name).name if name else "", "added_at": _now()}
            self._save_index(index)
        return MyPhoto(sha, label, path, index[sha]["name"], index[sha]["added_at"])

    def list(self) -> list[MyPhoto]:
        """Every stored photo, newest first."""
        index = self._index()
        found = []
        for label in CLASS_NAMES:
            folder = self.root / label
            for path in sorted(folder.glob("*")) if folder.is_dir() else []:
                sha = path.stem
                if _SHA256.fullmatch(sha) and path.suffix in _EXTENSIONS.values() and path.is_file():
                    meta = index.get(sha, {})
                    found.append(MyPhoto(sha, label, path, meta.get("name", ""), meta.get("added_at", "")))
        return sorted(found, key=lambda p: (p.added_at, p.sha256), reverse=True)

    def get(self, sha256: str) -> MyPhoto | None:
        """The stored photo with this content hash, if any."""
        return next((p for p in self.list() if p.sha256 == sha256), None)

    def counts(self) -> dict[str, int]:
        """How many stored photos of each class."""
        photos = self.list()
        return {label: sum(p.label == label for p in photos) for label in CLASS_NAMES}

    def prune(self, shas: Iterable[str]) -> int:
        """Delete these photos (by content hash); returns how many were deleted."""
        removed = 0
        with _lock(self.root / _INDEX):
            index = self._index()
            for sha in set(shas):
                if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                    continue  # never a path: only hashes name files here
                files = self._files(sha)
                for path in files:
                    path.unlink(missing_ok=True)
                removed += bool(files)
                index.pop(sha, None)
            self._save_index(index)
        return removed

    def clear(self) -> int:
        """Delete every stored photo; returns how many."""
        return self.prune([p.sha256 for p in self.list()])

    def folder(self) -> Path:
        """The store's folder, created if need be, to read as a dataset (core.data.Source, load_dataset)."""
        for label in CLASS_NAMES:
            (self.root / label).mkdir(parents=True, exist_ok=True)
        return self.root

    def _files(self, sha: str) -> list[Path]:
        return [p for label in CLASS_NAMES for p in (self.root / label).glob(f"{sha}.*") if p.is_file()]

    def _index(self) -> dict:
        try:
            data = json.loads((self.root / _INDEX).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # the names and times are for display only; the folders are the store itself

    def _save_index(self, index: dict) -> None:
        live = {sha: meta for sha, meta in index.items() if self._files(sha)}
        _write_atomic(self.root / _INDEX, json.dumps(live, indent=2, sort_keys=True).encode("utf-8"))


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


# The data side of training: corrections applied, extra photos appended, and a split that keeps them out of
# validation.


def prepare_training_data(
    dataset: LoadedDataset, corrections: Corrections | None = None, extras: Sequence[LoadedDataset] = ()
) -> tuple[LoadedDataset, np.ndarray, dict]:
    """(photos to train on, forced_train mask, record for run.json) of a dataset with corrections and extras.

    Relabelled photos take their new label, excluded ones are dropped; the extras' photos (e.g. "my photos") are
    appended under `"<their fingerprint[:8]>:<name>"`, so no name clashes with the dataset's. forced_train marks
    the relabelled and extra photos: they must train, never validate, so that validation stays the photos (and
    labels) a run without them validates on. The result keeps the dataset's own fingerprint, source and order,
    so a run's held-out photos are still found in it; what changed is in the record's fingerprint.
    """
    names, y = dataset.names, dataset.y.astype(dataset.y.dtype)
    keep, forced = np.ones(len(names), bool), np.zeros(len(names), bool)
    if corrections is not None:
        kept_names, labels, excluded = corrections.apply(names, y, dataset.fingerprint)
        keep = ~np.isin(names, excluded)
        y = np.asarray(labels, dataset.y.dtype)
        forced = corrections.relabelled(kept_names)
    xs, ys, ns, fs = [dataset.x[keep]], [y], [names[keep]], [forced]
    for extra in extras:
        if extra.pipeline.input_shape != dataset.pipeline.input_shape:
            raise ValueError(
                f"{extra.source} was loaded at {extra.pipeline.input_shape}, not {dataset.pipeline.input_shape}"
            )
        xs.append(extra.x)
        ys.append(extra.y.astype(dataset.y.dtype))
        ns.append(np.array([f"{extra.fingerprint[:8]}:{n}" for n in extra.names], dtype=str))
        fs.append(np.ones(len(extra), bool))
    combined = LoadedDataset(
        np.concatenate(xs) if extras else xs[0],
        np.concatenate(ys),
        np.concatenate(ns) if extras else ns[0],
        dataset.skipped,
        dataset.fingerprint,
        dataset.pipeline,
        dataset.source,
    )
    forced_train = np.concatenate(fs)
    return combined, forced_train, _training_record(dataset, corrections, extras, keep, combined, forced_train)


def _training_record(dataset, corrections, extras, keep, combined, forced_train) -> dict:
    # Counts of what was applied to this dataset (a correction for a photo it no longer has applies to nothing),
    # and one fingerprint of it all: the same dataset, corrections and extras give the same one.
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{dataset.fingerprint}\n".encode())
    record: dict = {"dataset_fingerprint": dataset.fingerprint, "n_images": len(combined)}
    if corrections is not None:
        h.update(f"corrections {corrections.digest()}\n".encode())
        relabelled = int(corrections.relabelled(dataset.names).sum())
        record["corrections"] = {**corrections.summary(), "applied_relabelled": relabelled}
        record["corrections"]["applied_excluded"] = int((~keep).sum())
    record["extras"] = []
    for extra in extras:
        h.update(f"extra {extra.fingerprint}\n".encode())
        counts = np.bincount(extra.y.astype(int), minlength=2)
        record["extras"].append(
            {"source": extra.source, "fingerprint": extra.fingerprint, "photos": len(extra)}
            | {f"{name}s": int(n) for name, n in zip(CLASS_NAMES, counts, strict=True)}
        )
    record["forced_train"] = int(forced_train.sum())
    record["fingerprint"] = h.hexdigest()
    return record


def split_for_training(
    base: LoadedDataset,
    dataset: LoadedDataset,
    forced_train: np.ndarray,
    validation_split: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into `dataset` (prepare_training_data's) that never validate a forced photo.

    Validation is the split core.data.split_indices makes of `base` (the dataset as loaded, before corrections)
    with this seed, less the photos excluded or forced to train: a run with corrections validates on the photos
    a run without them validates on, less those, and with their given labels.
    """
    forced_train = np.asarray(forced_train, bool)
    if len(forced_train) != len(dataset):
        raise ValueError(f"forced_train has {len(forced_train)} entries for {len(dataset)} photos")
    _, base_val = split_indices(base.y, validation_split, seed)
    validating = np.isin(dataset.names, base.names[base_val]) & ~forced_train
    return np.flatnonzero(~validating), np.flatnonzero(validating)


def corrections_from_review(review: dict[str, str], fingerprint: str, source: str = "") -> Corrections:
    """Corrections from a review's verdicts ({photo name: cat, dog, exclude or keep}); the given labels come from
    the names (cat.1.jpg)."""
    found = Corrections(fingerprint, source)
    if not isinstance(review, dict):
        raise CorrectionsError("a review is a JSON object of photo name: cat, dog, exclude or keep")
    for name, action in review.items():
        given = label_from_name(name)
        found.set(name, action, None if given is None else CLASS_NAMES[given])
    return found
