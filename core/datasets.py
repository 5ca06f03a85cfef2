"""The datasets a session may name: a typed folder or zip only under the allowed roots, with one refusal for
everything else, and why a source cannot be trained on, in words.

The default dataset and a session's uploads are offered without typing (core.uploads.dataset_candidates).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from core import config
from core.data import OK, DatasetError, label_from_name


def path_refusal() -> str:
    """The one refusal every path outside the allowed roots gets, whether or not it exists on the server."""
    roots = ", ".join(str(root) for root in config.data_roots())
    return f"Not a dataset path this server offers: type a folder or .zip under {roots}."


def inside(path: Path, folder: Path) -> bool:
    """Whether path is folder or lies under it (compare resolved paths)."""
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
    if not any(inside(path, root) for root in roots) or any(inside(path, p) or inside(p, path) for p in private):
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
        if inside(path, real) and path != real:
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
