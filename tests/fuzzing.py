"""Seeded mutations of real image bytes, for tests/test_fuzz.py and benchmarks/fuzz.py.

The seeds are real files that cv2 and Pillow encode from a drawn picture, in every format the pipeline accepts
(JPEG, PNG, GIF, WebP, TIFF, BMP, animations included). The mutations are the ways files arrive broken or
hostile: flipped bits, overwritten and inserted bytes, cuts, and edits of the fields decoders trust: sizes,
chunk and segment lengths, offsets and counts, set to 0, 1, off by one, doubled or to huge values.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Field:
    """A number in a seed's structure that decoders trust: where it is, its width and byte order."""

    offset: int
    size: int  # bytes: 1, 2, 3 or 4
    order: str  # "<" or ">"


def picture(width: int = 96, height: int = 72, seed: int = 0) -> np.ndarray:
    """An RGB picture with structure to compress: a gradient, quadrant colours and a few discs."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    img[: height // 2, : width // 2, 0] = 255
    img[height // 2 :, width // 2 :, 2] = 255
    for _ in range(4):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, center, int(rng.integers(4, max(5, height // 3))), color, -1)
    return img


def _cv2(img: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok, ext
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    """Real, valid files of every accepted format and variant, each small enough to decode in a millisecond."""
    rgb = picture()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    frames = [Image.fromarray(rgb), Image.fromarray(picture(seed=1))]
    animated = {"save_all": True, "append_images": frames[1:], "duration": 80}
    return {
        "baseline.jpg": _cv2(bgr, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "progressive.jpg": _cv2(bgr, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "gray.jpg": _cv2(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), ".jpg"),
        "cmyk.jpg": _pil(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "rgb.png": _cv2(bgr, ".png"),
        "rgba.png": _pil(rgba, "PNG"),
        "rgba16.png": _cv2(np.dstack([bgr, alpha]).astype(np.uint16) * 257, ".png"),
        "palette.png": _pil(Image.fromarray(rgb).convert("P"), "PNG", transparency=0),
        "gray16.png": _cv2(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257, ".png"),
        "animated.png": _pil(frames[0], "PNG", **animated),
        "still.gif": _pil(Image.fromarray(rgb), "GIF"),
        "transparent.gif": _pil(Image.fromarray(rgb).convert("P"), "GIF", transparency=0),
        "animated.gif": _pil(frames[0], "GIF", **animated),
        "lossy.webp": _cv2(bgr, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        "lossless-alpha.webp": _pil(rgba, "WEBP", lossless=True),
        "animated.webp": _pil(frames[0], "WEBP", **animated),
        "plain.tif": _pil(Image.fromarray(rgb), "TIFF"),
        "lzw.tif": _pil(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"),
        "rgba-deflate.tif": _pil(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "rgb.bmp": _cv2(bgr, ".bmp"),
        "palette.bmp": _pil(Image.fromarray(rgb).convert("P"), "BMP"),
        "gray.bmp": _cv2(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), ".bmp"),
    }


# --- where the trusted numbers are ---------------------------------------------------------------------------


def fields(data: bytes) -> list[Field]:
    """The length, size, offset and count fields of a valid seed, found by walking its structure."""
    for magic, finder in (
        (b"\xff\xd8", _jpeg_fields),
        (b"\x89PNG", _png_fields),
        (b"GIF8", _gif_fields),
        (b"RIFF", _riff_fields),
        (b"II*\x00", _tiff_fields),
        (b"MM\x00*", _tiff_fields),
        (b"BM", _bmp_fields),
    ):
        if data.startswith(magic):
            return finder(data)
    return []


def _png_fields(data: bytes) -> list[Field]:
    found, i = [], 8
    while i + 12 <= len(data):
        length, tag = struct.unpack_from(">I4s", data, i)
        found.append(Field(i, 4, ">"))
        if tag == b"IHDR":
            found += [Field(i + 8, 4, ">"), Field(i + 12, 4, ">"), Field(i + 16, 1, ">"), Field(i + 17, 1, ">")]
        elif tag == b"fcTL":
            found += [Field(i + 8 + k, 4, ">") for k in (4, 8, 12, 16)]
        elif tag == b"acTL":
            found.append(Field(i + 8, 4, ">"))
        i += 12 + length
    return found


def _jpeg_fields(data: bytes) -> list[Field]:
    found, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xD9:
            break
        length = struct.unpack_from(">H", data, i + 2)[0]
        found.append(Field(i + 2, 2, ">"))
        if marker in (0xC0, 0xC1, 0xC2):
            found += [Field(i + 5, 2, ">"), Field(i + 7, 2, ">"), Field(i + 9, 1, ">"), Field(i + 11, 1, ">")]
        if marker == 0xDA:
            found.append(Field(i + 4, 1, ">"))
            nxt = data.find(b"\xff", i + 2 + length)
            while nxt != -1 and nxt + 1 < len(data) and (data[nxt + 1] == 0 or 0xD0 <= data[nxt + 1] <= 0xD7):
                nxt = data.find(b"\xff", nxt + 2)
            if nxt == -1:
                break
            i = nxt
            continue
        i += 2 + length
    return found


def _gif_fields(data: bytes) -> list[Field]:
    found, i = [Field(6, 2, "<"), Field(8, 2, "<"), Field(10, 1, "<")], 13
    if data[10] & 0x80:
        i += 3 << ((data[10] & 7) + 1)
    while i < len(data) and data[i] != 0x3B:
        if data[i] == 0x2C:
            found += [Field(i + k, 2, "<") for k in (1, 3, 5, 7)] + [Field(i + 9, 1, "<")]
            flags = data[i + 9]
            i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            found.append(Field(i, 1, "<"))  # LZW code size
            i += 1
        else:
            i += 2
        while i < len(data) and data[i]:
            found.append(Field(i, 1, "<"))  # sub-block length
            i += data[i] + 1
        i += 1
    return found


def _riff_fields(data: bytes) -> list[Field]:
    found = [Field(4, 4, "<")]

    def walk(i: int, end: int) -> None:
        while i + 8 <= end:
            tag, length = struct.unpack_from("<4sI", data, i)
            found.append(Field(i + 4, 4, "<"))
            if tag == b"VP8X":
                found.extend([Field(i + 12, 3, "<"), Field(i + 15, 3, "<"), Field(i + 8, 1, "<")])
            elif tag == b"ANMF":
                found.extend(Field(i + 8 + k, 3, "<") for k in (0, 3, 6, 9))
                walk(i + 24, i + 8 + length)
            elif tag == b"VP8 ":
                found.extend([Field(i + 14, 2, "<"), Field(i + 16, 2, "<")])
            elif tag == b"VP8L":
                found.append(Field(i + 9, 4, "<"))
            i += 8 + length + (length & 1)

    walk(12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0]))
    return found


def _tiff_fields(data: bytes) -> list[Field]:
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    found = [Field(4, 4, order), Field(ifd, 2, order)]
    count = struct.unpack_from(order + "H", data, ifd)[0]
    for k in range(count):
        entry = ifd + 2 + 12 * k
        tag, kind, items = struct.unpack_from(order + "HHI", data, entry)
        found += [Field(entry + 4, 4, order), Field(entry + 8, 4 if kind == 4 else 2, order)]
        size = {3: 2, 4: 4}.get(kind, 1) * items
        if size > 4 and tag in (273, 279, 258, 324, 325):  # arrays of offsets, byte counts, bit depths
            where = struct.unpack_from(order + "I", data, entry + 8)[0]
            width = {3: 2, 4: 4}.get(kind, 1)
            found += [Field(where + width * j, width, order) for j in range(min(items, 4))]
    return found


def _bmp_fields(data: bytes) -> list[Field]:
    offsets = [(2, 4), (10, 4), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2), (30, 4), (34, 4), (46, 4)]
    return [Field(offset, size, "<") for offset, size in offsets if offset + size <= len(data)]


# --- the mutations -------------------------------------------------------------------------------------------


def _interesting(original: int, size: int, rng: np.random.Generator) -> int:
    top = (1 << (8 * size)) - 1
    choices = [0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, original + 1, original - 1, original * 2]
    choices += [original * 16, original // 2, 0xE0000000 & top, int(rng.integers(0, top + 1, dtype=np.uint64))]
    return int(choices[int(rng.integers(0, len(choices)))]) & top


def set_field(data: bytearray, field: Field, value: int) -> None:
    """Write value into a field in its own width and byte order."""
    raw = value.to_bytes(field.size, "little" if field.order == "<" else "big")
    data[field.offset : field.offset + field.size] = raw


def get_field(data: bytes, field: Field) -> int:
    return int.from_bytes(data[field.offset : field.offset + field.size], "little" if field.order == "<" else "big")


def _flip(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
    for _ in range(int(rng.integers(1, 9))):
        out[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
    return out


def _bytes(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
    for _ in range(int(rng.integers(1, 6))):
        out[int(rng.integers(0, n))] = int(rng.integers(0, 256))
    return out


def _cut(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
    return out[: int(rng.integers(0, n))]


def _fields(count: int | None):
    # count None: 2 to 4 fields
    def change(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
        for _ in range(count or int(rng.integers(2, 5))):
            field = found[int(rng.integers(0, len(found)))]
            if field.offset + field.size <= len(out):
                set_field(out, field, _interesting(get_field(out, field), field.size, rng))
        return out

    return change


def _insert(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
    at = int(rng.integers(0, n))
    out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return out


def _delete(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
    at = int(rng.integers(0, n))
    del out[at : at + int(rng.integers(1, 64))]
    return out


def _repeat(out: bytearray, n: int, found: list[Field], rng: np.random.Generator) -> bytearray:
    # A stretch of the file repeated, as a broken writer or a crafted chunk list does.
    at, length = int(rng.integers(0, n)), int(rng.integers(8, 256))
    out[at:at] = out[at : at + length] * int(rng.integers(1, 4))
    return out


_MUTATIONS = {
    "flip": _flip,
    "bytes": _bytes,
    "cut": _cut,
    "field": _fields(1),
    "fields": _fields(None),
    "insert": _insert,
    "delete": _delete,
    "repeat": _repeat,
}


def mutate(data: bytes, found: list[Field], rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded mutation of a seed: (what was done, the mutated bytes)."""
    kind = str(rng.choice(["flip", "bytes", "cut", "field", "field", "fields", "insert", "delete", "repeat"]))
    # A field mutation of a seed without known fields repeats a stretch instead.
    change = _MUTATIONS[kind] if found or kind not in ("field", "fields") else _repeat
    out = change(bytearray(data), len(data), found, rng)
    if out.startswith(b"\x89PNG") and rng.random() < 0.5:
        kind += "+crc"  # as a crafted file would be: the checksums agree, so only the structure can give it away
        _fix_png_checksums(out)
    return kind, bytes(out)


def _fix_png_checksums(data: bytearray) -> None:
    i = 8
    while i + 12 <= len(data):
        length = struct.unpack_from(">I", data, i)[0]
        if i + 12 + length > len(data):
            return
        struct.pack_into(">I", data, i + 8 + length, zlib.crc32(data[i + 4 : i + 8 + length]))
        i += 12 + length


def corpus(count: int, seed: int = 0) -> Iterator[tuple[str, str, bytes]]:
    """count seeded mutations, round-robin over the seeds: (seed name, mutation kind, bytes)."""
    rng = np.random.default_rng(seed)
    made = seeds()
    names = sorted(made)
    found = {name: fields(made[name]) for name in names}
    for k in range(count):
        name = names[k % len(names)]
        kind, data = mutate(made[name], found[name], rng)
        yield name, kind, data


# --- hostile files of the kinds issue #11 measured, at the limits ---------------------------------------------


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def huge_idat_png() -> bytes:
    """The issue's attack: 64x48 in IHDR, then an IDAT header claiming ~3.7 GB, in about 140 bytes."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0))
    body = zlib.compress(bytes(64 * 3 + 1) * 48)[:60]
    return b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", 0xE0000000) + b"IDAT" + body + b"\x00" * 4


def big_png(width: int, height: int, color_type: int = 2, depth: int = 8) -> bytes:
    """A valid PNG of any size in a small file: a gradient first row, then rows that repeat it (filter Up)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type] * depth // 8
    row = (np.arange(width * channels) % 251).astype(np.uint8).tobytes()
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(b"\x00" + row)]
    same = b"\x02" + bytes(len(row))
    parts += [compressor.compress(same) for _ in range(height - 1)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )


def gif_with_screen(width: int, height: int) -> bytes:
    """A real 64x48 GIF whose logical screen was edited to width x height."""
    data = bytearray(_pil(Image.fromarray(picture(64, 48)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_rle8(width: int, height: int) -> bytes:
    """A valid 8-bit run-length BMP that ends its bitmap at once: a big picture from a few hundred bytes."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x00\x01"  # end of bitmap: the rest is the background
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def hostile_files() -> dict[str, bytes]:
    """Files at and past the limits, each a class the issue measured or one like it (built in well under a second)."""
    side = 6320  # 6320 x 6320 = 39.9 MP, just under the 40 MP cap
    return {
        "huge-idat.png": huge_idat_png(),
        "rgba16-39.9MP.png": big_png(side, side, 6, 16),
        "rgba16-14.7MP.png": big_png(3840, 3840, 6, 16),
        "rgba-31.4MP.png": big_png(5600, 5600, 6, 8),
        "rgb-39.9MP.png": big_png(side, side, 2, 8),
        "gray16-39.9MP.png": big_png(side, side, 0, 16),
        "gif-screen-39.9MP.gif": gif_with_screen(side, side),
        "gif-screen-65535.gif": gif_with_screen(65_535, 65_535),
        "bmp-rle8-39.9MP.bmp": bmp_rle8(side, side),
    }


# Run in a fresh interpreter: decode one file once and report the outcome, the wall and CPU seconds, and the
# peak resident memory above the interpreter's own once cv2, numpy and the pipeline are loaded and warm. The peak
# is VmHWM, this process's own high-water mark: getrusage's ru_maxrss would start from the parent's peak, which
# a vfork()ed child inherits at exec.
_MEASURE = """
import json, re, sys, time
import cv2, numpy as np
from core import pipeline

def high_water():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024

path, call = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
warm = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
pipeline.decode(warm)  # OpenCV's lazy set-up belongs to the baseline, not to the decode measured
calls = {
    "gray": lambda: pipeline.decode(data),
    "rgb": lambda: pipeline.decode(data, pipeline.PipelineConfig(96, "rgb")),
    "preview": lambda: pipeline.decode_preview(data),
    "original": lambda: pipeline.decode_original(data),
}
base = high_water()
wall, cpu = time.perf_counter(), time.process_time()
try:
    shape, outcome = list(calls[call]().shape), "decoded"
except pipeline.ImageError as err:
    shape, outcome = None, str(err)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
above = high_water() - base
print(json.dumps({"outcome": outcome, "shape": shape, "wall_s": wall, "cpu_s": cpu, "peak_bytes": above}))
"""


def measure_decode(path: str, call: str, root: str) -> dict:
    """Decode the file at path in a fresh process (call: gray, rgb, preview or original) and report what it cost."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, path, call], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
