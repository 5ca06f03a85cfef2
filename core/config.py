"""Every path and default the project uses, built in one place with pathlib."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from core.errors import WriteError

ROOT = Path(__file__).resolve().parent.parent

# Where a user puts Kaggle's train.zip (or an extracted train/ folder).
# Tests and servers may point these elsewhere with CVD_DATA_DIR / CVD_MODELS_DIR / CVD_RUNS_DIR.
DATA_DIR = Path(os.environ.get("CVD_DATA_DIR", ROOT / "data"))
UPLOADS_DIR = DATA_DIR / "uploads"
CACHE_DIR = DATA_DIR / "cache"
# The dataset every session opens until it chooses another (else data/train.zip, else data/train/).
DEFAULT_DATASET = Path(os.environ["CVD_DEFAULT_DATASET"]) if os.environ.get("CVD_DEFAULT_DATASET") else None
# Folders a visitor may type a path under, besides DATA_DIR (os.pathsep-separated): nothing else on the server is
# reachable from the Dataset page.
EXTRA_DATA_ROOTS = [Path(p) for p in os.environ.get("CVD_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
# A dropped zip that no session has used for this long is deleted (its runs keep their own copy of the model).
UPLOAD_TTL_HOURS = float(os.environ.get("CVD_UPLOAD_TTL_HOURS", 24))

MODELS_DIR = Path(os.environ.get("CVD_MODELS_DIR", ROOT / "models"))
RUNS_DIR = Path(os.environ.get("CVD_RUNS_DIR", MODELS_DIR / "runs"))
DEFAULT_MODEL = MODELS_DIR / "default.keras"
DEFAULT_MODEL_META = MODELS_DIR / "default.json"

# Label corrections, one JSON file per dataset fingerprint (core.corrections), and the photos users labelled
# themselves ("my photos"), stored by content hash in the class-folder layout cat/<sha256>.jpg, dog/<sha256>.jpg.
CORRECTIONS_DIR = DATA_DIR / "corrections"
MY_PHOTOS_DIR = DATA_DIR / "my-photos"

# The shared real data that tests and benchmarks read in place (never copied into the project).
SHARED_DATA = Path(os.environ.get("CVD_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
KAGGLE_TRAIN_ZIP = SHARED_DATA / "dogs-vs-cats" / "train.zip"
KAGGLE_TEST_ZIP = SHARED_DATA / "dogs-vs-cats" / "test1.zip"
BAD_INPUTS = SHARED_DATA / "bad-inputs"

# Labels follow the seed tutorial: cat = 0, dog = 1.
CLASS_NAMES = ("cat", "dog")
# Flip test-time augmentation (core.predict.Predictor): "unsure" mirrors a photo only when P(dog) is within
# UNSURE_MARGIN of 0.5 (between 0.1 and 0.9) and averages the two looks; "all" mirrors every photo.
TTA_MODES = ("off", "unsure", "all")
UNSURE_MARGIN = 0.4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# The dashboard loads its default model in the background once the first page is drawn (CVD_WARM_UP_MODEL=0: not).
WARM_UP_MODEL = os.environ.get("CVD_WARM_UP_MODEL", "1") != "0"

# Hostile-input limits. OpenCV's own pixel cap (2^30) is far too large for a web app.
MAX_PIXELS = int(os.environ.get("CVD_MAX_PIXELS", 40_000_000))
MAX_FILE_BYTES = 64 * 1024 * 1024  # one image, or one zip entry, uncompressed
MAX_ZIP_TOTAL_BYTES = 8 * 1024 * 1024 * 1024  # all entries of one zip, uncompressed
MAX_ZIP_RATIO = 200  # uncompressed / compressed; real photos compress ~1:1
# Decoding's memory, estimated from a file's checked header before any decoder runs (core.pipeline). One image
# may need at most MAX_DECODE_BYTES: a 40 MP RGB photo needs 245 MB (OpenCV's picture and the copy Python gets),
# a 40 MP 16-bit RGBA PNG 656 MB, refused. All the decodes of one process together (the CLI's and the API's
# threads, a training load) hold at most DECODE_BUDGET_BYTES at once; a decode that does not fit waits its turn.
MAX_DECODE_BYTES = int(os.environ.get("CVD_MAX_DECODE_MB", 256)) * 2**20
DECODE_BUDGET_BYTES = int(os.environ.get("CVD_DECODE_BUDGET_MB", 384)) * 2**20
# A photo shorter than this on either side gets a reason, not a label (a 1x1 image got "dog, 0.593"). Shrunk to
# s x s, 1,000 of the shipped model's validation photos from train.zip score 95.1% at 200 px, 81.3% at 32,
# 67.8% at 16, 55.7% at 8 and 50.3% (chance) at 4 (benchmarks/min_size.py): 16 px is the last size clearly
# above chance; the smallest real photo in Kaggle's test1.zip is 41x50.
MIN_IMAGE_SIDE = 16

# The HTTP API (core.api). An optional bearer token: when set, every route but /health needs it.
API_TOKEN_ENV = "CVD_API_TOKEN"
# Origins allowed to call the API from a browser, comma-separated; none (no CORS headers) unless set.
API_CORS_ORIGINS_ENV = "CVD_API_CORS_ORIGINS"
# Open connections waitress holds at once. Idle or slow ones cost a socket and a little memory each, no thread;
# past the limit new connections wait in the listen backlog, so the limit sits well above the 500 that must fit.
API_CONNECTION_LIMIT = int(os.environ.get("CVD_API_CONNECTION_LIMIT", 2000))
API_CHANNEL_TIMEOUT_S = 30  # a connection that sends nothing for this long is closed


def default_dataset() -> Path | None:
    """The dataset the app opens by default: CVD_DEFAULT_DATASET, else data/train.zip, else data/train/, else none."""
    candidates = [DEFAULT_DATASET] if DEFAULT_DATASET else [DATA_DIR / "train.zip", DATA_DIR / "train"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


def data_roots() -> list[Path]:
    """The folders typed dataset paths must resolve into: DATA_DIR, then CVD_DATA_ROOTS."""
    return [DATA_DIR, *EXTRA_DATA_ROOTS]


def temp_sibling(path: Path) -> Path:
    """A temp path in the same folder, unique per process and thread, for write-then-os.replace saves."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}-{threading.get_ident()}{path.suffix}")


# What a failed write says happened, in words, by errno; others use the system's own wording.
_WRITE_FAILURES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for this file system or process limit",
    errno.ENOENT: "its folder does not exist",
}


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """The WriteError for a failed write of path: `could not write PATH: disk full`."""
    reason = _WRITE_FAILURES.get(err.errno) or (err.strerror or str(err) or type(err).__name__).lower()
    return WriteError(err.errno, f"could not write {path}: {reason}")


def check_writable(path: str | os.PathLike) -> Path:
    """path, if a file could be written there; checked before long work whose result is to be saved there.

    WriteError: path is a folder, or no folder above it is one this process may write in (missing folders
    between are made when the file is written).
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"could not write {path}: it is a folder; give a file's name in it")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(errno.EACCES, f"could not write {path}: {folder} is not a folder this process may write in")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write path through a temp file in its folder, then os.replace, so readers see the old file or the new one.

    write(tmp) writes the temp file. Whatever fails, the temp file is removed (a partial one would keep a full
    disk full) and an OSError becomes a WriteError naming path, never the temp file.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise write_error(path, err) from err
    finally:
        with contextlib.suppress(OSError):  # nothing to remove, or a folder we may not write to
            tmp.unlink(missing_ok=True)
    return path
