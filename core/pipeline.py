"""The cv2 pipeline: the one function that turns image bytes into the model's input."""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.config import MAX_PIXELS

ColorMode = Literal["grayscale", "rgb"]

# Bumped whenever decode() changes output, so stale caches are never reused.
PIPELINE_VERSION = 1


class ImageError(ValueError):
    """A file that cannot become model input; str(err) is the per-file reason shown to users."""


@dataclass(frozen=True)
class PipelineConfig:
    """How images become model input. The defaults are the seed tutorial's: 80x80 grayscale in [0, 1]."""

    size: int = 80
    color_mode: ColorMode = "grayscale"
    max_pixels: int = MAX_PIXELS

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    @classmethod
    def from_input_shape(cls, shape: tuple) -> PipelineConfig:
        """The pipeline a saved model was trained with, read from its input shape."""
        size, channels = int(shape[-2]), int(shape[-1])
        return cls(size=size, color_mode="grayscale" if channels == 1 else "rgb")

    def cache_key(self) -> str:
        return f"v{PIPELINE_VERSION}-{self.size}-{self.color_mode}"


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels."""

    format: str
    width: int
    height: int
    has_alpha: bool


def inspect(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read format and size from the header only, refusing empty, non-image, oversized and truncated files."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    jpeg_size = _jpeg_size(data)
    if jpeg_size is not None:
        fmt, (width, height), has_alpha = "JPEG", jpeg_size, False
    else:
        fmt, width, height, has_alpha = _inspect_with_pillow(data, max_pixels)
    if width <= 0 or height <= 0:
        raise ImageError("not an image: header has no size")
    if width * height > max_pixels:
        raise ImageError(
            f"too many pixels: {width}x{height} = {width * height / 1e6:.0f} MP "
            f"exceeds the {max_pixels / 1e6:.0f} MP cap, refused before decoding"
        )
    if fmt == "JPEG" and not _jpeg_is_complete(data):
        raise ImageError("truncated or corrupt JPEG: the file ends before its end-of-image marker")
    return ImageInfo(fmt, width, height, has_alpha)


def _inspect_with_pillow(data: bytes, max_pixels: int) -> tuple[str, int, int, bool]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning; we apply our cap below
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height), mode = im.format or "?", im.size, im.mode
                has_alpha = mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "the image"
        raise ImageError(
            f"too many pixels: {size} exceeds the {max_pixels / 1e6:.0f} MP cap, refused before decoding"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError("not an image: unrecognised file format") from None
    return fmt, width, height, has_alpha


# Start-of-frame markers, whose segment holds a JPEG's size: C0-CF less DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments to the frame header. Pillow's parser costs ~20x more and holds the GIL,
    # which serialises the decoding threads; None hands the file to Pillow for a verdict.
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _jpeg_is_complete(data: bytes) -> bool:
    # libjpeg decodes a truncated file to a partial image with only a warning, so look for the
    # end-of-image marker after the last start-of-scan; trailing junk after EOI is allowed.
    last_scan = data.rfind(b"\xff\xda")
    return last_scan != -1 and data.rfind(b"\xff\xd9") > last_scan


def _reduced_flag(info: ImageInfo, cfg: PipelineConfig) -> int:
    # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size far cheaper than a full decode + resize.
    gray = cfg.color_mode == "grayscale"
    if info.format == "JPEG":
        for factor, (flag_gray, flag_color) in {
            8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
            4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
            2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
        }.items():
            if min(info.width, info.height) >= factor * cfg.size:
                return flag_gray if gray else flag_color
    return cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR


def _decode_with_alpha(data: bytes) -> np.ndarray | None:
    # Composite transparent images on white, as a viewer shows them; dropping alpha exposes junk pixels.
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4:
        return img
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)
    alpha = img[:, :, 3:4].astype(np.float32) / 255.0
    rgb = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return rgb.round().astype(np.uint8)


def _decode_with_pillow(data: bytes) -> np.ndarray:
    # Fallback for formats this OpenCV build cannot read (e.g. GIF); returns BGR like cv2.
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        rgb = np.asarray(im.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _decode_pixels(data: bytes, info: ImageInfo, flag: int) -> np.ndarray:
    # Every decode path: alpha composited on white, Pillow for formats this OpenCV lacks, 8-bit out.
    try:
        img = _decode_with_alpha(data) if info.has_alpha else cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if img is None:
            img = _decode_with_pillow(data)
    except (cv2.error, OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"corrupt {info.format} image: {str(err).strip().splitlines()[-1][:120]}") from None
    if img is None or img.size == 0:
        raise ImageError(f"corrupt {info.format} image: the decoder returned no pixels")
    if img.dtype != np.uint8:  # e.g. 16-bit PNG read unchanged
        img = (img / 257).astype(np.uint8)
    return img


def decode_original(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The photo as RGB uint8 at its original size, for display; refused exactly like model input."""
    info = inspect(data, max_pixels)
    return _to_color_mode(_decode_pixels(data, info, cv2.IMREAD_COLOR), "rgb")


def decode_preview(data: bytes, max_side: int = 640, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An 8-bit RGB picture of the photo for display, at most max_side on its longer side; refused like model input.

    Pages show this, never the uploaded bytes: a browser (or st.image) cannot show every format we decode
    (16-bit PNG, TIFF, CMYK JPEG), and a huge photo need not travel to the browser at full size.
    """
    img = decode_original(data, max_pixels)
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def decode(data: bytes, cfg: PipelineConfig = PipelineConfig()) -> np.ndarray:
    """Decode bytes to a uint8 array of cfg.input_shape (RGB order for colour), or raise ImageError."""
    info = inspect(data, cfg.max_pixels)
    img = _to_color_mode(_decode_pixels(data, info, _reduced_flag(info, cfg)), cfg.color_mode)
    img = cv2.resize(img, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
    return img.reshape(cfg.input_shape)


def _to_color_mode(img: np.ndarray, mode: ColorMode) -> np.ndarray:
    if img.ndim == 2:
        return img if mode == "grayscale" else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if mode == "grayscale":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels (one image or a batch) to float32 in [0, 1], as the seed divides by 255."""
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


def preprocess(data: bytes, cfg: PipelineConfig = PipelineConfig()) -> np.ndarray:
    """Turn image bytes into one model input of shape cfg.input_shape, float32 in [0, 1]."""
    return to_model_input(decode(data, cfg))
