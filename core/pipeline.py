"""The cv2 pipeline: the one function that turns image bytes into the model's input, within a memory budget.

Every file's header is walked and checked against the bytes present first (core.formats). What the decode will
allocate is estimated from that checked header, refused past MAX_DECODE_BYTES, and admitted through one
process-wide DecodeBudget, so that the CLI's, the API's and a training load's threads together never hold more
than DECODE_BUDGET_BYTES of decoding. OpenCV is the only decoder: a file it fails on is refused, never handed
to a more lenient one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from core import config
from core.formats import ImageError, ImageInfo, read_header

__all__ = [
    "DECODE_BUDGET",
    "PIPELINE_VERSION",
    "DecodeBudget",
    "ImageError",
    "ImageInfo",
    "PipelineConfig",
    "decode",
    "decode_original",
    "decode_preview",
    "inspect",
    "preprocess",
    "to_model_input",
]

ColorMode = Literal["grayscale", "rgb"]
Read = Literal["gray", "bgr", "rgb", "unchanged"]

# Bumped whenever decode() changes output, so stale caches are never reused. 2: alpha and 16-bit images are
# reduced before they are composited and converted, not after.
PIPELINE_VERSION = 2

# OpenCV logs every file it cannot read to stderr, in its own words; each file gets our reason instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_SLACK = 16 * 2**20  # our own band buffers and the decoders' small tables, on top of the estimate
_BAND_BYTES = 8 * 2**20  # the most a full-frame conversion holds in temporaries at once
_SHOWN_FORMAT = {"WEBP": "WebP"}


class DecodeBudget:
    """Bytes that decodes may hold at once in this process; one that does not fit waits, first come first served.

    Every decode in core.pipeline holds its estimated cost here while it runs, so callers (the CLI, the API's
    request threads, training loads) need no admission control of their own. Holds do not nest: never decode
    inside a hold.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most held at once so far, for benchmarks and tests
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold nbytes (at most the capacity) for the duration of a with-block, waiting until they fit."""
        nbytes, ticket = min(nbytes, self.capacity), object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._queue[0] is ticket and self.in_use + nbytes <= self.capacity)
            self._queue.popleft()
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= nbytes
                self._changed.notify_all()


DECODE_BUDGET = DecodeBudget(config.DECODE_BUDGET_BYTES)


@dataclass(frozen=True)
class PipelineConfig:
    """How images become model input. The defaults are the seed tutorial's: 80x80 grayscale in [0, 1]."""

    size: int = 80
    color_mode: ColorMode = "grayscale"
    max_pixels: int = field(default_factory=lambda: config.MAX_PIXELS)  # read when built, so a test can lower it

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


def inspect(data: bytes, max_pixels: int | None = None) -> ImageInfo:
    """Read format, size and decoding needs from the checked header, refusing files that cannot become input.

    max_pixels None: config.MAX_PIXELS, read now."""
    max_pixels = config.MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageError("empty file (0 bytes)")
    info = read_header(data, max_pixels)
    if min(info.width, info.height) < config.MIN_IMAGE_SIDE:
        raise ImageError(
            f"too small: {info.width}x{info.height}, the minimum is {config.MIN_IMAGE_SIDE} px on the shorter side"
        )
    return info


# --- what a decode reads and what it costs --------------------------------------------------------------------

_REDUCED = {
    8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
    4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
    2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
}


def _jpeg_factor(info: ImageInfo, side: int, wanted: int) -> int:
    # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size far cheaper than a full decode + resize.
    if info.format == "JPEG":
        return next((f for f in _REDUCED if side >= f * wanted), 1)
    return 1


def _flag(read: Read, factor: int) -> int:
    if read == "unchanged":
        return cv2.IMREAD_UNCHANGED
    if factor == 1:
        return {"gray": cv2.IMREAD_GRAYSCALE, "bgr": cv2.IMREAD_COLOR, "rgb": cv2.IMREAD_COLOR_RGB}[read]
    gray, color = _REDUCED[factor]
    return (
        gray if read == "gray" else color if read == "bgr" else (color & ~cv2.IMREAD_COLOR_BGR) | cv2.IMREAD_COLOR_RGB
    )


def _reduced_flag(info: ImageInfo, cfg: PipelineConfig) -> int:
    """The cv2 flag decode() reads an opaque image with: reduced for JPEGs at least twice the target size."""
    read: Read = "gray" if cfg.color_mode == "grayscale" else "bgr"
    return _flag(read, _jpeg_factor(info, min(info.width, info.height), cfg.size))


def _sample_bytes(bits: int) -> int:
    return 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8


def _cost(info: ImageInfo, read: Read, factor: int, full_size: bool) -> int:
    """Bytes a decode holds at its peak: the decoder's work and picture, then the copy Python receives."""
    pixels = info.width * info.height
    out_pixels = -(-info.width // factor) * -(-info.height // factor)
    if read == "unchanged":
        out = out_pixels * 4 * _sample_bytes(info.bits)
        after = out_pixels * (3 if full_size else 0) + (out_pixels * 4 if info.bits > 16 else 0)
    else:
        out, after = out_pixels * (1 if read == "gray" else 3), 0
    convert = 3 * pixels if read == "gray" and info.format == "WEBP" else 0  # libwebp decodes colour first
    return max(info.work + convert + out, 2 * out, out + after) + _SLACK


def _describe(info: ImageInfo) -> str:
    words = [f"{info.width}x{info.height}"]
    words += [f"{info.bits}-bit"] if info.bits > 8 else []
    words += ["animated"] if info.frames > 1 else []
    words += [_SHOWN_FORMAT.get(info.format, info.format)]
    return " ".join(words) + (" with transparency" if info.has_alpha else "")


def _admitted(info: ImageInfo, read: Read, factor: int, full_size: bool) -> int:
    cost = _cost(info, read, factor, full_size)
    limit = min(config.MAX_DECODE_BYTES, DECODE_BUDGET.capacity)
    if cost > limit:
        raise ImageError(
            f"too large to decode: this {_describe(info)} needs about {cost / 2**20:.0f} MB to decode, "
            f"over the {limit / 2**20:.0f} MB allowed per image"
        )
    return cost


# --- decoding -------------------------------------------------------------------------------------------------

Fit = Callable[[tuple[int, int]], "tuple[int, int] | None"]  # decoded (height, width) -> (width, height) or keep


def _pixels(
    data: bytes, info: ImageInfo, read: Read, factor: int, fit: Fit, rgb: bool, full_size: bool = False
) -> np.ndarray:
    """Decode under the process's budget to 8 bits, alpha composited on white, reduced to fit() before converting.

    read is "gray", "bgr", "rgb" or, for transparent images, "unchanged", which gives RGB if rgb, else BGR.
    """
    with DECODE_BUDGET.hold(_admitted(info, read, factor, full_size)):
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), _flag(read, factor))
        except cv2.error:
            img = None
        if img is None or img.size == 0:
            shown = _SHOWN_FORMAT.get(info.format, info.format)
            raise ImageError(f"corrupt {shown} image: the decoder could not read its pixels")
        if read != "unchanged":
            return _resized(img, fit)
        return _opaque(img, fit, rgb=rgb)


def _resized(img: np.ndarray, fit: Fit) -> np.ndarray:
    size = fit(img.shape[:2])
    return img if size is None else cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _opaque(img: np.ndarray, fit: Fit, rgb: bool) -> np.ndarray:
    # An IMREAD_UNCHANGED picture as 8-bit BGR (RGB if asked) or gray: reduce first, in its own integer
    # samples, so that compositing and the 16-to-8-bit conversion never copy the full frame.
    img = _integer_samples(img)
    if img.ndim == 3 and img.shape[2] == 4:
        _premultiply(img)  # then averaging colour with alpha, as INTER_AREA does, composites correctly
        return _on_white(_resized(img, fit), rgb)
    img = _to_8_bits(_resized(img, fit))
    if not rgb:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.ndim == 3 else cv2.COLOR_GRAY2RGB)


def _bands(img: np.ndarray) -> Iterator[slice]:
    rows = max(1, _BAND_BYTES // max(1, img.shape[1] * 16))
    for top in range(0, img.shape[0], rows):
        yield slice(top, top + rows)


def _integer_samples(img: np.ndarray) -> np.ndarray:
    # uint8 and uint16 stay; float samples (a TIFF's) in [0, 1] become uint8, a band of rows at a time.
    if img.dtype in (np.uint8, np.uint16):
        return img
    if img.dtype.kind != "f":
        raise ImageError(f"unsupported image: {img.dtype.itemsize * 8}-bit integer samples")
    out = np.empty(img.shape, np.uint8)
    for rows in _bands(img):
        out[rows] = np.clip(np.nan_to_num(img[rows]), 0.0, 1.0) * 255.0 + 0.5
    return out


def _premultiply(img: np.ndarray) -> None:
    top = np.iinfo(img.dtype).max
    for rows in _bands(img):
        band = img[rows]
        alpha = band[:, :, 3]
        cv2.multiply(band, cv2.merge([alpha, alpha, alpha, np.full_like(alpha, top)]), dst=band, scale=1 / top)


def _on_white(img: np.ndarray, rgb: bool) -> np.ndarray:
    # Premultiplied colour over white: colour + (1 - alpha) * white, to 8-bit BGR (or RGB).
    top = np.iinfo(img.dtype).max
    out = np.empty((*img.shape[:2], 3), np.uint8)
    for rows in _bands(img):
        band = img[rows]
        inverse = top - band[:, :, 3]
        flat = cv2.add(np.ascontiguousarray(band[:, :, :3]), cv2.merge([inverse, inverse, inverse]))
        flat = _to_8_bits(flat)
        out[rows] = cv2.cvtColor(flat, cv2.COLOR_BGR2RGB) if rgb else flat
    return out


def _to_8_bits(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else cv2.convertScaleAbs(img, alpha=1 / 257)  # rounds, as x / 257 should


def decode_original(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """The photo as RGB uint8 at its original size, for display; refused exactly like model input."""
    info = inspect(data, max_pixels)
    read: Read = "unchanged" if info.has_alpha else "rgb"
    return _pixels(data, info, read, 1, lambda shape: None, rgb=True, full_size=True)


def decode_preview(data: bytes, max_side: int = 640, max_pixels: int | None = None) -> np.ndarray:
    """An 8-bit RGB picture of the photo for display, at most max_side on its longer side; refused like model input.

    Pages show this, never the uploaded bytes: a browser (or st.image) cannot show every format we decode
    (16-bit PNG, TIFF, CMYK JPEG), and a huge photo need not travel to the browser at full size. A big JPEG is
    decoded at 1/2, 1/4 or 1/8 of its size, which costs a fraction of a full decode.
    """
    info = inspect(data, max_pixels)

    def fit(shape: tuple[int, int]) -> tuple[int, int] | None:
        scale = max_side / max(shape)
        return None if scale >= 1 else (max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale)))

    factor = _jpeg_factor(info, max(info.width, info.height), max_side)
    return _pixels(data, info, "unchanged" if info.has_alpha else "rgb", factor, fit, rgb=True)


def decode(data: bytes, cfg: PipelineConfig = PipelineConfig()) -> np.ndarray:
    """Decode bytes to a uint8 array of cfg.input_shape (RGB order for colour), or raise ImageError."""
    info = inspect(data, cfg.max_pixels)
    gray = cfg.color_mode == "grayscale"
    read: Read = "unchanged" if info.has_alpha else "gray" if gray else "bgr"
    factor = 1 if info.has_alpha else _jpeg_factor(info, min(info.width, info.height), cfg.size)
    img = _pixels(data, info, read, factor, lambda shape: (cfg.size, cfg.size), rgb=False)
    return _to_color_mode(img, cfg.color_mode).reshape(cfg.input_shape)


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
