"""What every use of an exported Cats vs Dogs Studio model must do, with numpy and OpenCV alone.

The predict_<format>.py scripts beside this file share it: read and check the export's sidecar, decode photos
exactly as the app does, apply the app's flip TTA (cvd_tta.py), and print the rows `python -m core predict`
prints. Copy this folder next to an export (the model and its `.json` sidecar) and it runs on its own.

Preprocessing, as the sidecar's "preprocessing" section says:
- decode with cv2.imdecode; a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, cv2.IMREAD_REDUCED_*)
  with the largest factor that keeps its shorter side at least factor x the model's size; other formats at full
  size, transparent ones composited on white;
- colour order RGB (cv2 decodes BGR) or one gray channel, as the model's input says;
- cv2.resize to size x size with cv2.INTER_AREA: the aspect ratio is not kept, nothing is cropped or padded;
- uint8, NHWC. The /255 scaling is inside the exported model: never scale the pixels yourself.

The app also refuses hostile files (decompression bombs, truncated JPEGs) before decoding and reads a few more
formats (GIF) through Pillow; here such a file just gets an error row.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
from cvd_tta import TTA_MODES, flip_tta

SCHEMA = "cats-vs-dogs-studio/export/1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
BATCH = 64


class ExportRefused(ValueError):
    """An export that must not be used: no sidecar, another format, or bytes that are not what was exported."""


def sidecar_path(model: Path) -> Path:
    """The metadata file written beside an export: its name plus .json."""
    return model.with_name(model.name + ".json")


def artifact_sha256(path: Path) -> str:
    """sha256 of an export: of the file, or for a folder (SavedModel) of every file's relative path and bytes."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_sidecar(model: Path, fmt: str, suffix: str) -> dict:
    """The export's metadata, after checking it is ours, of this format, and that the model's bytes match it."""
    side = sidecar_path(model)
    if not model.exists():
        raise ExportRefused(f"{model}: no such export")
    kind = "a SavedModel folder" if fmt == "saved_model" else f"a {suffix} file"
    if (fmt == "saved_model") != model.is_dir() or (model.is_file() and model.suffix != suffix):
        raise ExportRefused(f"{model}: not a {fmt} export ({kind} expected)")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        raise ExportRefused(f"{model}: its metadata {side.name} is missing or unreadable; export it again") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA or meta.get("format") != fmt:
        raise ExportRefused(f"{model}: {side.name} does not describe a {fmt} export of this project")
    if artifact_sha256(model) != meta.get("artifact", {}).get("sha256"):
        raise ExportRefused(f"{model}: its bytes differ from what was exported (corrupt or replaced); export it again")
    return meta


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Width and height from the frame header: walk the marker segments to the first start-of-frame.
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        elif marker in (0xD9, 0xDA):
            return None
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _decode_flag(data: bytes, size: int, gray: bool) -> int:
    jpeg = _jpeg_size(data) if data.startswith(b"\xff\xd8") else None
    if jpeg is not None:
        for factor, flags in ((8, "_8"), (4, "_4"), (2, "_2")):
            if min(jpeg) >= factor * size:
                return getattr(cv2, ("IMREAD_REDUCED_GRAYSCALE" if gray else "IMREAD_REDUCED_COLOR") + flags)
    return cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR


def _on_white(img: np.ndarray) -> np.ndarray:
    # Transparent pixels shown as a viewer shows them, in 8 bits.
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)
    alpha = img[:, :, 3:4].astype(np.float32) / 255.0
    return (img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)


def decode(data: bytes, size: int, gray: bool) -> np.ndarray:
    """Image bytes to the model's input: uint8, size x size, RGB or one gray channel (see the module docstring)."""
    buf = np.frombuffer(data, np.uint8)
    if not data:
        raise ValueError("empty file (0 bytes)")
    img = None if data.startswith(b"\xff\xd8") else cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is not None and img.ndim == 3 and img.shape[2] == 4:
        img = _on_white(img)
    else:
        img = cv2.imdecode(buf, _decode_flag(data, size, gray))
    if img is None or img.size == 0:
        raise ValueError("not an image OpenCV can decode")
    if img.ndim == 2:
        img = img if gray else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, 1 if gray else 3)


def iter_images(args: list[str]) -> Iterator[tuple[str, Path | None, str | None]]:
    """(shown name, file, error) for each image among files and folders, named as `python -m core predict` does."""
    for arg in args:
        path = Path(arg).expanduser()
        if path.is_file():
            yield str(path), path, None
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
                for name in sorted(filenames):
                    file = Path(dirpath) / name
                    if file.suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                        yield f"{path}/{file.relative_to(path).as_posix()}", file, None
        else:
            yield str(path), None, f"{path}: no such file or folder"


def predict_rows(
    images: list[tuple[str, Path | None, str | None]], predict: Callable, meta: dict, tta: str
) -> Iterator[list]:
    """file,label,prob_dog,error rows, in order, inferring in batches with the app's TTA rule and threshold."""
    size, gray = meta["input"]["shape"][1], meta["input"]["color"] == "gray"
    names, threshold = meta["labels"]["class_names"], meta["labels"]["threshold"]
    for start in range(0, len(images), BATCH):
        decoded: list = []
        for _, file, error in images[start : start + BATCH]:
            try:
                decoded.append(error or decode(file.read_bytes(), size, gray))
            except (OSError, ValueError, cv2.error) as err:
                decoded.append(f"cannot read this image: {str(err).strip().splitlines()[-1][:120]}")
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        batch = np.stack([decoded[i] for i in good]) if good else None
        probs = flip_tta(predict, batch, mode=tta, margin=meta["tta"]["margin"]).tolist() if good else []
        by_index = dict(zip(good, probs, strict=True))
        for i, (shown, _, _) in enumerate(images[start : start + BATCH]):
            if i in by_index:
                yield [shown, names[int(by_index[i] >= threshold)], by_index[i], ""]
            else:
                yield [shown, "", "", decoded[i]]


def default_model(script: str, suffix: str) -> Path | None:
    """The one export of this format beside the script, else the project's models/default export."""
    here = Path(script).resolve().parent
    found = sorted(here.glob(f"*{suffix}"))
    if len(found) == 1:
        return found[0]
    shipped = here.parent / "models" / f"default{suffix}"
    return shipped if shipped.exists() else None


def main(argv: list[str], fmt: str, suffix: str, load: Callable[..., Callable], engines: tuple[str, ...]) -> int:
    """The shared command line: check the export, load it with `load`, print a row per image; 2 on a bad export."""
    parser = argparse.ArgumentParser(description=f"Label photos with a {fmt} export; prints file,label,prob_dog,error.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    parser.add_argument("--model", help=f"the export (default: the one *{suffix} beside this script)")
    parser.add_argument("--tta", choices=TTA_MODES, help="flip TTA (default: the sidecar's, as the app predicts)")
    parser.add_argument("--engine", choices=engines, default=engines[0])
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else default_model(sys.argv[0], suffix)
    try:
        if model is None:
            raise ExportRefused(f"no {suffix or 'SavedModel'} export found: pass --model")
        meta = read_sidecar(model, fmt, suffix)
        predict = load(model, meta, args.engine)
    except ExportRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a runtime's own complaint about the file, as one line rather than a traceback
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        print(f"error: {model}: {args.engine} cannot load it: {reason}", file=sys.stderr)
        return 2
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["file", "label", "prob_dog", "error"])
    writer.writerows(predict_rows(list(iter_images(args.images)), predict, meta, args.tta or meta["tta"]["default"]))
    return 0
