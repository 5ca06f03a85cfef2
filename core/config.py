"""Every path and default the project uses, built in one place with pathlib."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where a user puts Kaggle's train.zip (or an extracted train/ folder).
# Tests and servers may point these elsewhere with CVD_DATA_DIR / CVD_MODELS_DIR / CVD_RUNS_DIR.
DATA_DIR = Path(os.environ.get("CVD_DATA_DIR", ROOT / "data"))
UPLOADS_DIR = DATA_DIR / "uploads"
CACHE_DIR = DATA_DIR / "cache"

MODELS_DIR = Path(os.environ.get("CVD_MODELS_DIR", ROOT / "models"))
RUNS_DIR = Path(os.environ.get("CVD_RUNS_DIR", MODELS_DIR / "runs"))
DEFAULT_MODEL = MODELS_DIR / "default.keras"
DEFAULT_MODEL_META = MODELS_DIR / "default.json"

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


def default_dataset() -> Path | None:
    """The dataset the app opens by default: data/train.zip, else data/train/, else none."""
    for candidate in (DATA_DIR / "train.zip", DATA_DIR / "train"):
        if candidate.exists():
            return candidate
    return None


def temp_sibling(path: Path) -> Path:
    """A temp path in the same folder, unique per process and thread, for write-then-os.replace saves."""
    import threading

    return path.with_name(f".{path.stem}.tmp{os.getpid()}-{threading.get_ident()}{path.suffix}")
