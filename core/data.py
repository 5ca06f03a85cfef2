"""Dataset ingest: folders and zips of photos read in place, a manifest, and a cached parallel load."""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
import os
import posixpath
import re
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from core import config
from core.config import temp_sibling
from core.errors import DatasetError
from core.pipeline import ImageError, PipelineConfig, decode, inspect

OK = "ok"
MANIFEST_COLUMNS = ["source", "name", "label", "width", "height", "bytes", "status"]
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
_LABEL_WORDS = {"cat": 0, "cats": 0, "dog": 1, "dogs": 1}
_NAME_LABEL = re.compile(r"^(cat|dog)s?(?=[._\-\s\d]|$)", re.IGNORECASE)
Progress = Callable[[int, int], None]


def _parts(name: str) -> list[str]:
    # The components PurePosixPath(name).parts gives, less the root, at a tenth of the cost: this runs
    # several times for every entry of a 25,000-file zip on every load.
    return [p for p in name.split("/") if p not in ("", ".")]


def label_from_name(name: str) -> int | None:
    """1 for a dog, 0 for a cat, None if unlabeled: from the file name (Kaggle) or a class folder."""
    parts = _parts(name)
    if not parts:
        return None
    found = _NAME_LABEL.match(parts[-1])
    if found:
        return _LABEL_WORDS[found.group(1).lower()]
    for folder in reversed(parts[:-1]):
        if folder.lower() in _LABEL_WORDS:
            return _LABEL_WORDS[folder.lower()]
    return None


def _is_junk(name: str) -> bool:
    # OS litter that no user means as data: macOS resource forks, dotfiles, Windows thumbnails.
    parts = _parts(name)
    if not parts:
        return False
    return any(p == "__MACOSX" or (p.startswith(".") and p != "..") for p in parts) or parts[-1].lower() in _JUNK_NAMES


def _unsafe_path(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None or ".." in re.split(r"[/\\]", name)


def _too_big(size: int) -> str:
    return f"refused: {size / 2**20:.0f} MB uncompressed, over the {config.MAX_FILE_BYTES // 2**20} MB per-file cap"


@dataclass(frozen=True)
class Listed:
    """One file of a source as listed, before reading: its name, size, a content token and a refusal.

    index is the entry's position in its zip's infolist() (-1 outside zips): Source.read_item() opens that very
    entry, never another one that happens to share its name.
    """

    name: str
    size: int
    token: int
    refusal: str | None = None
    index: int = -1


class Source:
    """A dataset source read in place: a folder, a zip, or a single image file; or a zip held in memory."""

    def __init__(self, path: str | os.PathLike, data: bytes | None = None):
        self.path = Path(path) if data is not None else Path(path).expanduser()  # an upload's name is just a name
        self._data = data
        self._local = threading.local()
        self._names: dict[str, Listed] | None = None
        if data is not None:  # the same listing, caps and per-entry reasons as a zip on disk, from the one buffer
            self.is_zip = True
            self.listing = list(_list_zip_entries(io.BytesIO(data), self.path.name))
            return
        if not self.path.exists():
            raise DatasetError(f"{self.path}: no such file or folder")
        self.is_zip = self.path.is_file() and self.path.suffix.lower() == ".zip"
        if self.is_zip:
            self.listing = self._list_zip()
        elif self.path.is_dir():
            self.listing = self._list_folder()
        else:
            stat = self.path.stat()
            self.listing = [Listed(self.path.name, stat.st_size, stat.st_mtime_ns, self._type_refusal(self.path.name))]

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Source:
        """A zip held in memory (an upload), listed and read from that buffer: nothing is written, nothing copied."""
        return cls(Path(name).name or "upload.zip", data)

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def in_memory(self) -> bool:
        return self._data is not None

    @staticmethod
    def _type_refusal(name: str) -> str | None:
        if posixpath.splitext(name.rsplit("/", 1)[-1])[1].lower() not in config.IMAGE_EXTENSIONS:
            return "skipped: not an image file type"
        return None

    def _list_folder(self) -> list[Listed]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
            for fname in sorted(filenames):
                full = Path(dirpath) / fname
                name = full.relative_to(self.path).as_posix()
                if _is_junk(name) or not full.is_file():
                    continue
                stat = full.stat()
                refusal = self._type_refusal(name)
                if refusal is None and stat.st_size > config.MAX_FILE_BYTES:
                    refusal = _too_big(stat.st_size)
                found.append(Listed(name, stat.st_size, stat.st_mtime_ns, refusal))
        return found

    def _list_zip(self) -> list[Listed]:
        return list(_zip_listing(str(self.path.resolve()), dataset_version(self.path)))

    def read(self, name: str) -> bytes:
        """The bytes of the listed file of that name: in a zip, the entry of that name that counts (the first)."""
        item = self._by_name().get(name)
        if item is None:
            raise ImageError(f"not in {self.label}: {name}")
        if item.refusal:
            raise ImageError(item.refusal)
        return self.read_item(item)

    def _by_name(self) -> dict[str, Listed]:
        found = self._names
        if found is None:  # later entries of a duplicated name are refused, so the first is the one that counts
            found = {}
            for item in self.listing:
                found.setdefault(item.name, item)
            self._names = found  # published whole: decoder threads read it while another may still be building
        return found

    def read_item(self, item: Listed) -> bytes:
        """The bytes of one listed file, read in place and never more than the per-file cap."""
        if self.is_zip:
            data = self._read_entry(item)
        else:
            full = self.path if self.path.is_file() else self.path / item.name
            try:
                with open(full, "rb") as fh:
                    data = fh.read(config.MAX_FILE_BYTES + 1)
            except OSError as err:  # deleted since listing, permission denied, ...
                raise ImageError(f"unreadable file: {err.strerror or 'the system refused to read it'}") from None
        if len(data) > config.MAX_FILE_BYTES:
            raise ImageError(f"refused: file expands past the {config.MAX_FILE_BYTES // 2**20} MB cap")
        return data

    def _read_entry(self, item: Listed) -> bytes:
        zf = getattr(self._local, "zf", None)
        if zf is None:  # one handle per thread: zip reads then run in parallel (a BytesIO shares the one buffer)
            zf = self._local.zf = zipfile.ZipFile(self.path if self._data is None else io.BytesIO(self._data))
        infos = zf.infolist()
        info = infos[item.index] if 0 <= item.index < len(infos) else None
        if info is None or (info.filename, info.file_size, info.CRC) != (item.name, item.size, item.token):
            raise ImageError("unreadable zip entry: the zip changed since it was listed")
        try:
            with zf.open(info) as fh:
                return fh.read(config.MAX_FILE_BYTES + 1)
        except _ZIP_ERRORS as err:
            raise ImageError(f"unreadable zip entry: {_zip_reason(err, info)}") from None

    def fingerprint(self) -> str:
        """A content fingerprint: names, sizes and CRC32s (zips) or modification times (folders)."""
        digest = hashlib.blake2b(digest_size=16)
        for item in sorted(self.listing, key=lambda x: x.name):
            digest.update(f"{item.name}\0{item.size}\0{item.token}\n".encode())
        return digest.hexdigest()

    def inputs(self, items: Iterable[Listed] | None = None) -> Iterator[Input]:
        """Each listed file (or only the given ones) as an Input named by its name in the source."""
        for item in self.listing if items is None else items:
            reader = None if item.refusal else functools.partial(self.read_item, item)
            yield Input(item.name, reader, item.refusal)


def dataset_version(path: str | os.PathLike) -> str:
    """The one version of a dataset on disk that every cache of it is keyed on; OSError when it is gone.

    A zip or a single file: its resolved path, size and mtime_ns, from one stat (a zip rewritten in place changes
    them). A folder: its path and a digest of its listing (names, sizes, mtimes), which a file added, removed or
    rewritten anywhere under it changes. Where a content key is needed (the .npz cache, corrections), the version
    maps to Source.fingerprint().
    """
    path = Path(path).expanduser()
    resolved = path.resolve()
    if path.is_dir():
        return f"{resolved}/@{Source(path).fingerprint()}"
    stat = path.stat()
    return f"{resolved}@{stat.st_size}:{stat.st_mtime_ns}"


# What zipfile and its decompressors raise on a damaged, encrypted or exotic entry (RuntimeError: encrypted).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, ValueError)
_ZIP_ERRORS += (NotImplementedError, RuntimeError)


def _zip_reason(err: Exception, info: zipfile.ZipInfo) -> str:
    # Our own words: zipfile's messages quote names as Python reprs and mention its internals.
    if info.flag_bits & 0x1:
        return "it is encrypted (password-protected)"
    if isinstance(err, NotImplementedError):
        return f"its compression method ({info.compress_type}) is not supported"
    if "CRC" in str(err):
        return "its data fails its CRC-32 check"
    if isinstance(err, zipfile.BadZipFile | zipfile.LargeZipFile):
        return "its header is damaged"
    return "its compressed data is corrupt"


@functools.lru_cache(maxsize=16)
def _zip_listing(path: str, version: str) -> tuple[Listed, ...]:
    # Listing 25,000 entries costs ~0.2 s; a cached reload must not pay it again for an unchanged file.
    return _list_zip_entries(path, Path(path).name)


def _list_zip_entries(file: str | io.BytesIO, label: str) -> tuple[Listed, ...]:
    # The one place a zip's entries get their caps and refusals, whether the zip is on disk or in memory.
    try:
        with zipfile.ZipFile(file) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as err:
        detail = str(err) if re.fullmatch(r"[A-Za-z0-9 ,.:-]{1,80}", str(err)) else "its directory is damaged"
        raise DatasetError(f"{label}: not a readable zip file ({detail})") from None
    except OSError as err:
        raise DatasetError(f"{label}: not a readable zip file ({err.strerror or 'unreadable'})") from None
    total = sum(i.file_size for i in infos)
    if total > config.MAX_ZIP_TOTAL_BYTES:
        raise DatasetError(
            f"{label}: refused as a zip bomb: it expands to {total / 2**30:.1f} GB, "
            f"over the {config.MAX_ZIP_TOTAL_BYTES / 2**30:.0f} GB cap"
        )
    found = []
    named = _duplicates(infos)
    for index, info in enumerate(infos):
        name = info.filename
        if info.is_dir() or (_is_junk(name) and not _unsafe_path(name)):
            continue
        refusal = Source._type_refusal(name)
        if _unsafe_path(name):
            refusal = "refused: unsafe path in zip (absolute or '..')"
        elif index in named:
            refusal = named[index]
        elif info.file_size > config.MAX_FILE_BYTES:
            refusal = _too_big(info.file_size)
        elif info.file_size > 2**20 and info.file_size > config.MAX_ZIP_RATIO * max(info.compress_size, 1):
            refusal = "refused: suspicious compression ratio (zip bomb)"
        found.append(Listed(name, info.file_size, info.CRC, refusal, index))
    return tuple(found)


def _duplicates(infos: list[zipfile.ZipInfo]) -> dict[int, str]:
    # Entries whose path repeats an earlier one's (as extracting them would), by index: the first one counts and
    # each later one is refused by its own position, so one photo never counts twice nor hides another.
    entries: dict[str, list[int]] = {}
    for index, info in enumerate(infos):
        if not info.is_dir():
            entries.setdefault("/".join(_parts(info.filename)), []).append(index)
    refused = {}
    for indices in entries.values():
        for k, index in enumerate(indices[1:], 2):
            refused[index] = (
                f"refused: duplicate name in zip (entry {k} of {len(indices)} named {infos[index].filename})"
            )
    return refused


def _parallel_map(fn: Callable, items: list, progress: Progress | None, workers: int | None = None) -> list:
    # cv2 decoding and zlib release the GIL, so threads give real parallelism here.
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    results: list = [None] * len(items)
    chunk = max(16, len(items) // (workers * 8) or 1)
    done = 0
    lock = threading.Lock()

    def run(start: int) -> None:
        nonlocal done
        for i in range(start, min(start + chunk, len(items))):
            results[i] = fn(items[i])
        with lock:
            done = min(done + chunk, len(items))
            if progress:
                progress(done, len(items))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, range(0, len(items), chunk)))
    return results


def scan(path: str | os.PathLike, progress: Progress | None = None) -> pd.DataFrame:
    """The manifest of a source: one row per file with label, size and status ('ok' or the reason)."""
    source = Source(path)

    def row(item: Listed) -> dict:
        rec = {
            "source": source.label,
            "name": item.name,
            "label": label_from_name(item.name),
            "width": None,
            "height": None,
            "bytes": item.size,
            "status": item.refusal or OK,
        }
        if item.refusal is None:
            try:
                info = inspect(source.read_item(item))
                rec["width"], rec["height"] = info.width, info.height
            except ImageError as err:
                rec["status"] = str(err)
        return rec

    rows = _parallel_map(row, source.listing, progress)
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("label", "width", "height"):
        frame[col] = frame[col].astype("Int64")
    return frame


def summarize(manifest: pd.DataFrame) -> dict:
    """Counts per class, unlabeled and skipped, as the CLI and the dashboard show them."""
    ok = manifest[manifest.status == OK]
    return {
        "cats": int((ok.label == 0).sum()),
        "dogs": int((ok.label == 1).sum()),
        "unlabeled": int(ok.label.isna().sum()),
        "skipped": int((manifest.status != OK).sum()),
        "total": len(manifest),
    }


@dataclass
class LoadedDataset:
    """Decoded, preprocessed images (uint8, cfg.input_shape) with labels and per-file failures."""

    x: np.ndarray
    y: np.ndarray
    names: np.ndarray
    skipped: pd.DataFrame
    fingerprint: str
    pipeline: PipelineConfig
    source: str
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.y)


def _subset(items: list[Listed], limit: int | None, seed: int) -> list[Listed]:
    # A balanced, deterministic slice, so small test and benchmark runs see both classes.
    if not limit or limit >= len(items):
        return items
    rng = np.random.default_rng(seed)
    picked: list[Listed] = []
    for label in (0, 1):
        group = [it for it in items if label_from_name(it.name) == label]
        take = min(len(group), limit // 2 + (limit % 2 if label == 0 else 0))
        picked += [group[i] for i in sorted(rng.choice(len(group), take, replace=False))]
    return sorted(picked, key=lambda it: it.name)


def split_indices(labels: np.ndarray, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/validation split that is the same for the same labels and seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(idx) * validation_split))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_dataset(
    path: str | os.PathLike,
    cfg: PipelineConfig = PipelineConfig(),
    limit: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    cache_dir: Path | None | bool = None,
) -> LoadedDataset:
    """Decode every labeled image of a source in parallel, cached as .npz by content fingerprint."""
    cache_dir = config.CACHE_DIR if cache_dir is None or cache_dir is True else cache_dir
    source = Source(path)
    fingerprint = source.fingerprint()
    key = f"{fingerprint}-{cfg.cache_key()}-{limit or 'all'}-{seed if limit else 0}"
    cache_file = cache_dir / f"{key}.npz" if cache_dir else None
    cached = _read_cache(cache_file, source, fingerprint, cfg) if cache_file else None
    if cached is not None:
        return cached
    readable = [it for it in source.listing if it.refusal is None]
    refused = [(it.name, it.refusal) for it in source.listing if it.refusal is not None]
    unlabeled = [it for it in readable if label_from_name(it.name) is None]
    refused += [(it.name, "unlabeled: not used for training") for it in unlabeled]
    readable = [it for it in readable if label_from_name(it.name) is not None]
    usable = _subset(readable, limit, seed)

    x = np.zeros((len(usable), *cfg.input_shape), np.uint8)

    def load_one(i: int) -> str | None:
        try:
            x[i] = decode(source.read_item(usable[i]), cfg)
            return None
        except ImageError as err:
            return str(err)

    errors = _parallel_map(load_one, list(range(len(usable))), progress)
    keep = np.array([e is None for e in errors], bool)
    refused += [(usable[i].name, e) for i, e in enumerate(errors) if e is not None]
    x = x[keep] if not keep.all() else x
    y = np.array([label_from_name(it.name) for it in usable], np.uint8)[keep]
    names = np.array([it.name for it in usable], dtype=str)[keep]
    dataset = LoadedDataset(
        x, y, names, pd.DataFrame(refused, columns=["name", "status"]), fingerprint, cfg, source.label, False
    )
    if cache_file:
        _write_cache(cache_file, dataset)
    return dataset


def _read_cache(cache_file: Path, source: Source, fingerprint: str, cfg: PipelineConfig) -> LoadedDataset | None:
    # The decoded arrays saved by _write_cache, or None when there are none, or they are damaged (then removed).
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            skipped = pd.DataFrame({"name": z["skipped_names"], "status": z["skipped_reasons"]})
            return LoadedDataset(z["x"], z["y"], z["names"], skipped, fingerprint, cfg, source.label, True)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):  # TypeError: a .npy, not a .npz
        cache_file.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
        return None


def _write_cache(cache_file: Path, dataset: LoadedDataset) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # Unique per thread too: two threads (e.g. two dashboard sessions) may build the same cache at once.
    tmp = temp_sibling(cache_file)
    skipped = dataset.skipped
    np.savez(
        tmp,
        x=dataset.x,
        y=dataset.y,
        names=dataset.names,
        skipped_names=skipped.name.to_numpy(dtype=str),
        skipped_reasons=skipped.status.to_numpy(dtype=str),
    )
    os.replace(tmp, cache_file)


@dataclass(frozen=True)
class Input:
    """One thing to predict: the name it is shown by, how to get its bytes, or why it is refused unread."""

    name: str
    reader: Callable[[], bytes] | None = None
    refusal: str | None = None

    @classmethod
    def of_bytes(cls, name: str, data: bytes) -> Input:
        """Bytes already in memory (an upload), shown by name."""
        return cls(name, lambda: data)

    def read(self) -> bytes:
        """The bytes; ImageError with the refusal for an input refused unread."""
        if self.refusal or self.reader is None:
            raise ImageError(self.refusal or "nothing to read")
        return self.reader()


class Uploaded(Protocol):
    """A file held in memory, as Streamlit's UploadedFile is: a name and its bytes."""

    name: str

    def getvalue(self) -> bytes: ...


def iter_inputs(sources: Iterable[str | os.PathLike | Uploaded], zip_refusal: str | None = None) -> Iterator[Input]:
    """Each image among files, folders and zips on disk and files held in memory (uploads), as Inputs.

    An uploaded zip is listed from memory with exactly the guards of one on disk and its photos are named as in
    the zip, unless zip_refusal is given: then it is one Input refused with that reason.
    """
    for source in sources:
        if isinstance(source, str | os.PathLike):
            yield from _path_inputs(source)
        elif not source.name.lower().endswith(".zip"):
            yield Input.of_bytes(source.name, source.getvalue())
        elif zip_refusal is not None:
            yield Input(source.name, None, zip_refusal)
        else:
            try:
                yield from Source.from_bytes(source.name, source.getvalue()).inputs()
            except DatasetError as err:
                yield Input(source.name, None, str(err))


def _path_inputs(path: str | os.PathLike) -> Iterator[Input]:
    # Named by path: the file itself, or the folder or zip, a slash, and the name inside it.
    try:
        source = Source(path)
    except DatasetError as err:
        yield Input(str(path), None, str(err))
        return
    single = not source.is_zip and source.path.is_file()
    for found in source.inputs():
        yield replace(found, name=str(source.path) if single else f"{source.path}/{found.name}")
