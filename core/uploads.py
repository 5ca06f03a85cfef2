"""A session's dataset uploads: each zip stored once per content hash under uploads/<sha256>/, listed for the
owners (opaque browser ids) that dropped it, under the names they gave it, and swept once nobody uses it.

Nothing here belongs to a visitor by itself: the dashboard passes an `owner` where an upload belongs to someone.
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
from core.data import DatasetError, Source
from core.datasets import inside, missing_classes
from core.runs import write_json


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
    return any(inside(Path(os.path.realpath(path)), Path(os.path.realpath(folder))) for path in keep)


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
