"""What an image file's header claims, checked against the bytes actually present, before any decoder runs.

One walker per format we accept: JPEG, PNG, GIF, WebP, TIFF and BMP. Each checks that every segment, chunk,
block or strip the file lists lies inside the file, and reads what a decoder will allocate: the image's size
and every animation frame's, its channels and bit depth, and the working memory its decoder needs beyond the
decoded picture. A decoder never sees a file whose structure lies. The attack that made this necessary: a
140-byte PNG whose IDAT chunk claims 3.7 GB, which OpenCV allocated before failing.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from core.errors import ImageError

# Walking more pieces than this costs Python real time; real images have far fewer (a 64 MB PNG written in
# 8 KB IDAT chunks has 8,000; a 64 MB GIF written in full 255-byte sub-blocks has 263,000).
MAX_PIECES = 100_000
MAX_GIF_SUB_BLOCKS = 1_000_000
# Each progressive scan is a pass over every coefficient of the image; encoders write 10 or so. Crafted files
# with thousands of scans keep libjpeg busy for minutes.
MAX_JPEG_SCANS = 64
ACCEPTED = "JPEG, PNG, GIF, WebP, TIFF and BMP"


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read and checked without decoding pixels.

    work is the memory in bytes the decoder needs besides the picture it returns: a progressive JPEG's
    coefficients, a GIF's or an animation's canvases, a TIFF strip buffer, WebP lossless's ARGB copy.
    """

    format: str
    width: int
    height: int
    has_alpha: bool
    channels: int = 3
    bits: int = 8
    frames: int = 1
    work: int = 0


def read_header(data: bytes, max_pixels: int) -> ImageInfo:
    """The format, size and decoding needs of image bytes, or ImageError if the structure lies or is unsupported."""
    for magic, walker in _WALKERS:
        if data.startswith(magic) and (walker is not _webp or data[8:12] == b"WEBP"):
            return walker(data, max_pixels)
    found = next((name for magic, name in _UNSUPPORTED if data.startswith(magic)), None)
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_BRANDS:
        found = _ISO_BRANDS[data[8:12]]
    if found:
        raise ImageError(f"unsupported image format: {found} (we read {ACCEPTED})")
    raise ImageError("not an image: unrecognised file format")


def corrupt(fmt: str, detail: str) -> ImageError:
    """A structural fault: a length, offset or count that the bytes present cannot back."""
    return ImageError(f"truncated or corrupt {fmt}: {detail}")


def unsupported(fmt: str, detail: str) -> ImageError:
    """A well-formed variant of an accepted format that OpenCV here cannot decode."""
    return ImageError(f"unsupported {fmt}: {detail}")


def check_size(fmt: str, width: int, height: int, max_pixels: int, what: str = "") -> None:
    """Refuse an impossible or over-cap size the moment a header states it, before anything else is read."""
    if width <= 0 or height <= 0:
        raise ImageError(f"not an image: its {fmt} header gives no size ({width}x{height}{what})")
    if width * height > max_pixels:
        raise ImageError(
            f"too many pixels: {width}x{height}{what} = {width * height / 1e6:.0f} MP exceeds the "
            f"{max_pixels / 1e6:.0f} MP cap, refused before decoding"
        )


def _name(tag: bytes) -> str:
    # Chunk types are shown only when they are plain letters: never arbitrary bytes from a hostile file.
    return tag.decode("ascii").strip() if tag.replace(b" ", b"").isalnum() and tag.isascii() else "?"


# --- PNG ----------------------------------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PNG_CHECKSUMMED = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT"}  # what decoders act on
_APNG_WORK = 9.5  # bytes per canvas pixel and byte of sample: OpenCV keeps RGBA frames besides its output


def _png(data: bytes, max_pixels: int) -> ImageInfo:
    n, view = len(data), memoryview(data)
    i, pieces, ihdr, largest = 8, 0, None, 0
    state = {"idat": 0, "after_idat": False, "plte": False, "alpha": False, "frames": 0}
    while True:
        if i + 12 > n:
            raise corrupt("PNG", f"the file ends at byte {n:,}, before its IEND chunk")
        length, tag = struct.unpack_from(">I4s", data, i)
        name = _name(tag)
        if not tag.isalpha():
            raise corrupt("PNG", f"the chunk at byte {i:,} has no valid type")
        if length > n - i - 12:
            raise corrupt("PNG", f"chunk {name} at byte {i:,} claims {length:,} bytes, only {n - i - 12:,} remain")
        pieces, largest = pieces + 1, max(largest, length)
        if pieces > MAX_PIECES:
            raise corrupt("PNG", f"more than {MAX_PIECES:,} chunks")
        if tag in _PNG_CHECKSUMMED and zlib.crc32(view[i + 4 : i + 8 + length]) != _u32be(data, i + 8 + length):
            raise corrupt("PNG", f"chunk {name} at byte {i:,} fails its checksum")
        if ihdr is None:
            ihdr = _png_ihdr(data, i, length, max_pixels)
        elif _png_chunk(tag, data, i + 8, length, ihdr, state):
            break
        i += 12 + length
    width, height, depth, color = ihdr
    if not state["idat"]:
        raise corrupt("PNG", "it has no IDAT chunk, so no pixels")
    if color == 3 and not state["plte"]:
        raise corrupt("PNG", "a palette image without its PLTE chunk")
    frames = max(1, state["frames"])
    samples = 2 if depth == 16 else 1
    # OpenCV reads each chunk whole into one buffer, as large as the largest chunk.
    work = int(_APNG_WORK * width * height * samples) if state["frames"] else 0
    work += largest
    alpha = color in (4, 6) or state["alpha"]
    return ImageInfo("PNG", width, height, alpha, _PNG_CHANNELS[color], max(depth, 8), frames, work)


def _png_ihdr(data: bytes, i: int, length: int, max_pixels: int) -> tuple[int, int, int, int]:
    if data[i + 4 : i + 8] != b"IHDR" or length != 13:
        raise corrupt("PNG", "its first chunk is not a 13-byte IHDR")
    width, height, depth, color, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, i + 8)
    check_size("PNG", width, height, max_pixels)
    if depth not in _PNG_DEPTHS.get(color, ()) or compression or filtering or interlace > 1:
        raise corrupt("PNG", f"IHDR states an invalid format (colour type {color}, bit depth {depth})")
    return width, height, depth, color


def _png_chunk(tag: bytes, data: bytes, body: int, length: int, ihdr: tuple, state: dict) -> bool:
    # One chunk after IHDR; True at IEND. IDAT chunks must be consecutive, as libpng requires.
    if tag == b"IDAT":
        if state["after_idat"]:
            raise corrupt("PNG", "its IDAT chunks are not consecutive")
        state["idat"] += 1
        return False
    state["after_idat"] = state["idat"] > 0
    if tag == b"IHDR":
        raise corrupt("PNG", "a second IHDR chunk")
    if tag == b"IEND":
        return True
    if tag == b"PLTE":
        state["plte"] = True
        if length % 3 or not 3 <= length <= 768:
            raise corrupt("PNG", f"a PLTE chunk of {length:,} bytes")
    elif tag == b"tRNS":
        state["alpha"] = True
    elif tag == b"fcTL":
        if length != 26:
            raise corrupt("PNG", f"an fcTL chunk of {length:,} bytes")
        width, height, x, y = struct.unpack_from(">IIII", data, body + 4)
        state["frames"] += 1
        if not (width and height and x + width <= ihdr[0] and y + height <= ihdr[1]):
            raise corrupt(
                "PNG", f"animation frame {state['frames']} ({width}x{height} at {x},{y}) does not fit the image"
            )
    return False


def _u32be(data: bytes, i: int) -> int:
    return struct.unpack_from(">I", data, i)[0]


# --- JPEG ---------------------------------------------------------------------------------------------------

# Start-of-frame markers: C0-CF less DHT (C4), JPG (C8) and DAC (CC).
_JPEG_HUFFMAN = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC9: "arithmetic", 0xCA: "progressive"}
_JPEG_UNSUPPORTED = {0xC3: "lossless", 0xCB: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical"}
_JPEG_UNSUPPORTED |= {0xC7: "hierarchical", 0xCD: "hierarchical", 0xCE: "hierarchical", 0xCF: "hierarchical"}
# After a scan's header comes entropy-coded data, in which 0xFF is followed by 0x00 (stuffing) or a restart
# marker; the first other marker ends the scan.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg(data: bytes, max_pixels: int) -> ImageInfo:
    n, i, frame, scans, pieces, saved = len(data), 2, None, 0, 0, 0
    while True:
        if i + 2 > n:
            raise corrupt("JPEG", "the file ends before its end-of-image marker")
        if data[i] != 0xFF:
            raise corrupt("JPEG", f"expected a marker at byte {i:,}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0x00, 0xD8):
            raise corrupt("JPEG", f"a misplaced marker at byte {i:,}")
        if i + 4 > n:
            raise corrupt("JPEG", "the file ends inside a segment header")
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            raise corrupt("JPEG", f"segment at byte {i:,} claims {length:,} bytes, only {n - i - 2:,} remain")
        pieces += 1
        if pieces > MAX_PIECES:
            raise corrupt("JPEG", f"more than {MAX_PIECES:,} segments")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if frame is not None:
                raise corrupt("JPEG", "a second frame header")
            frame = _jpeg_frame(data, i, length, max_pixels)
        elif marker == 0xDA:
            scans += 1
            i = _jpeg_scan(data, i, length, frame, scans)
            continue
        elif marker in (0xE1, 0xE2):  # OpenCV keeps APP1 (EXIF) and APP2 (ICC) segments in memory while decoding
            saved += length
        i += 2 + length
    if frame is None or not scans:
        raise corrupt("JPEG", "it has no frame header or no scan, so no pixels")
    width, height, components, coefficients, progressive = frame
    work = saved + (coefficients if progressive or scans > 1 else 0)  # one scan decodes a row of blocks at a time
    return ImageInfo("JPEG", width, height, False, components, 8, 1, work)


def _jpeg_frame(data: bytes, i: int, length: int, max_pixels: int) -> tuple[int, int, int, int, bool]:
    marker = data[i + 1]
    if marker in _JPEG_UNSUPPORTED:
        raise unsupported("JPEG", f"{_JPEG_UNSUPPORTED[marker]} coding")
    if length < 8:
        raise corrupt("JPEG", f"a frame header of {length} bytes")
    precision, height, width, count = struct.unpack_from(">BHHB", data, i + 4)
    if height == 0:
        raise unsupported("JPEG", "the height is given after the first scan (DNL)")
    check_size("JPEG", width, height, max_pixels)
    if precision != 8:
        raise unsupported("JPEG", f"{precision}-bit samples")
    if count not in (1, 3, 4) or length != 8 + 3 * count:
        raise corrupt("JPEG", f"a frame header with {count} components in {length} bytes")
    factors = [(data[i + 11 + 3 * k] >> 4, data[i + 11 + 3 * k] & 15) for k in range(count)]
    if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in factors):
        raise corrupt("JPEG", "invalid sampling factors")
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    # A buffered (progressive or multi-scan) decode keeps every DCT coefficient: 64 x 2 bytes per 8x8 block.
    blocks = sum(-(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max)) for h, v in factors)
    return width, height, count, blocks * 128, marker in (0xC2, 0xCA)


def _jpeg_scan(data: bytes, i: int, length: int, frame: tuple | None, scans: int) -> int:
    # Check a start-of-scan header and return where the marker after its entropy-coded data begins.
    if frame is None:
        raise corrupt("JPEG", "a scan before the frame header")
    count = data[i + 4] if length >= 3 else 0
    if not 1 <= count <= 4 or length != 6 + 2 * count:
        raise corrupt("JPEG", f"a scan header of {length} bytes for {count} components")
    if scans > MAX_JPEG_SCANS:
        raise corrupt("JPEG", f"more than {MAX_JPEG_SCANS} scans")
    found = _JPEG_NEXT_MARKER.search(data, i + 2 + length)
    if found is None:
        raise corrupt("JPEG", f"the file ends inside scan {scans}, before its end-of-image marker")
    return found.start()


# --- GIF ----------------------------------------------------------------------------------------------------

# OpenCV's GIF decoder keeps an RGBA canvas and an index plane (5 bytes a pixel), one more plane when animated.
_GIF_WORK, _GIF_ANIMATED_WORK = 5, 6


def _gif(data: bytes, max_pixels: int) -> ImageInfo:
    n = len(data)
    if n < 13:
        raise corrupt("GIF", "the file ends inside its header")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    check_size("GIF", width, height, max_pixels, " logical screen")
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, pieces, alpha, budget = 0, 0, False, [MAX_GIF_SUB_BLOCKS]
    while True:
        if i >= n:
            raise corrupt("GIF", "the file ends before its trailer")
        block = data[i]
        pieces += 1
        if pieces > MAX_PIECES:
            raise corrupt("GIF", f"more than {MAX_PIECES:,} blocks")
        if block == 0x3B:
            break
        if block == 0x21 and i + 1 < n:
            # A graphic control extension before the first frame says whether that frame is transparent.
            if data[i + 1] == 0xF9 and not frames and i + 3 < n and data[i + 2] >= 4:
                alpha = bool(data[i + 3] & 1)
            i = _gif_sub_blocks(data, i + 2, budget)
        elif block == 0x2C:
            frames += 1
            i = _gif_frame(data, i, frames, width, height, budget)
        else:
            raise corrupt("GIF", f"an unknown block at byte {i:,}")
    if not frames:
        raise corrupt("GIF", "it has no image, only its header")
    work = (_GIF_ANIMATED_WORK if frames > 1 else _GIF_WORK) * width * height
    return ImageInfo("GIF", width, height, alpha, 3, 8, frames, work)


def _gif_frame(data: bytes, i: int, frame: int, width: int, height: int, budget: list) -> int:
    n = len(data)
    if i + 11 > n:
        raise corrupt("GIF", f"the file ends inside frame {frame}'s descriptor")
    x, y, w, h, flags = struct.unpack_from("<HHHHB", data, i + 1)
    if not (w and h and x + w <= width and y + h <= height):
        raise corrupt("GIF", f"frame {frame} ({w}x{h} at {x},{y}) does not fit the {width}x{height} screen")
    i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    if i >= n:
        raise corrupt("GIF", f"the file ends inside frame {frame}'s colour table")
    if not 2 <= data[i] <= 8:
        raise corrupt("GIF", f"frame {frame} states an LZW code size of {data[i]}")
    return _gif_sub_blocks(data, i + 1, budget)


def _gif_sub_blocks(data: bytes, i: int, budget: list) -> int:
    # Skip a chain of length-prefixed sub-blocks; return the index after its zero terminator.
    n, left = len(data), budget[0]
    while i < n:
        size = data[i]
        if not size:
            budget[0] = left
            return i + 1
        left -= 1
        if not left:
            raise corrupt("GIF", f"more than {MAX_GIF_SUB_BLOCKS:,} data sub-blocks")
        i += size + 1
    raise corrupt("GIF", "the file ends inside a block's data")


# --- WebP ---------------------------------------------------------------------------------------------------

# libwebp's lossless decoder keeps an ARGB copy; its animation decoder two RGBA canvases (bytes a pixel).
_WEBP_LOSSLESS_WORK, _WEBP_ANIMATED_WORK, _WEBP_ALPHA_WORK = 5, 9.5, 1


def _webp(data: bytes, max_pixels: int) -> ImageInfo:
    n = len(data)
    size = struct.unpack_from("<I", data, 4)[0] if n >= 12 else 0
    if n < 20 or size < 12 or 8 + size > n:
        raise corrupt("WebP", f"its RIFF header claims {size:,} bytes, only {max(n - 8, 0):,} are present")
    chunks = _riff_chunks(data, 12, 8 + size)
    tag, body, length = chunks[0]
    if tag == b"VP8X":
        return _webp_extended(data, chunks, max_pixels)
    width, height, alpha, lossless = _webp_bitstream(tag, data, body, length)
    check_size("WebP", width, height, max_pixels)
    work = width * height * (_WEBP_LOSSLESS_WORK if lossless else 0)
    return ImageInfo("WEBP", width, height, alpha, 4 if alpha else 3, 8, 1, work)


def _riff_chunks(data: bytes, i: int, end: int) -> list[tuple[bytes, int, int]]:
    chunks = []
    while i + 8 <= end:
        tag, length = struct.unpack_from("<4sI", data, i)
        if length > end - i - 8:
            raise corrupt(
                "WebP", f"chunk {_name(tag)} at byte {i:,} claims {length:,} bytes, only {end - i - 8:,} remain"
            )
        chunks.append((tag, i + 8, length))
        if len(chunks) > MAX_PIECES:
            raise corrupt("WebP", f"more than {MAX_PIECES:,} chunks")
        i += 8 + length + (length & 1)
    if not chunks:
        raise corrupt("WebP", "it has no chunks")
    return chunks


def _webp_bitstream(tag: bytes, data: bytes, body: int, length: int) -> tuple[int, int, bool, bool]:
    # The size a VP8 (lossy) or VP8L (lossless) bitstream states: (width, height, alpha, lossless).
    if tag == b"VP8 ":
        if length < 10:
            raise corrupt("WebP", f"a VP8 chunk of {length} bytes")
        tag_bits = data[body] | data[body + 1] << 8 | data[body + 2] << 16
        if tag_bits & 1 or data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise corrupt("WebP", "its VP8 data does not start with a key frame")
        if tag_bits >> 5 > length - 10:
            raise corrupt("WebP", "its VP8 first partition runs past the chunk")
        width, height = struct.unpack_from("<HH", data, body + 6)
        return width & 0x3FFF, height & 0x3FFF, False, False
    if tag == b"VP8L":
        if length < 5 or data[body] != 0x2F:
            raise corrupt("WebP", "its VP8L data has no valid signature")
        bits = struct.unpack_from("<I", data, body + 1)[0]
        if bits >> 29:
            raise unsupported("WebP", f"VP8L version {bits >> 29}")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1), True
    raise corrupt("WebP", f"expected image data, found chunk {_name(tag)}")


def _webp_extended(data: bytes, chunks: list, max_pixels: int) -> ImageInfo:
    _, body, length = chunks[0]
    if length < 10:
        raise corrupt("WebP", f"a VP8X chunk of {length} bytes")
    flags = data[body]
    width = 1 + int.from_bytes(data[body + 4 : body + 7], "little")
    height = 1 + int.from_bytes(data[body + 7 : body + 10], "little")
    check_size("WebP", width, height, max_pixels, " canvas")
    alpha = bool(flags & 0x10)
    if flags & 0x02:
        frames = [c for c in chunks if c[0] == b"ANMF"]
        if not frames:
            raise corrupt("WebP", "an animation without frames")
        for number, (_, frame_body, frame_length) in enumerate(frames, 1):
            _webp_frame(data, frame_body, frame_length, number, width, height)
        work = int(_WEBP_ANIMATED_WORK * width * height)
        return ImageInfo("WEBP", width, height, alpha, 4, 8, len(frames), work)
    images = [c for c in chunks[1:] if c[0] in (b"VP8 ", b"VP8L")]
    if not images:
        raise corrupt("WebP", "it has no image data")
    got = _webp_bitstream(images[0][0], data, *images[0][1:])
    if got[:2] != (width, height):
        raise corrupt("WebP", f"its image is {got[0]}x{got[1]}, its canvas {width}x{height}")
    has_alpha_plane = any(c[0] == b"ALPH" for c in chunks)
    work = width * height * (_WEBP_LOSSLESS_WORK if got[3] else _WEBP_ALPHA_WORK if has_alpha_plane else 0)
    return ImageInfo("WEBP", width, height, alpha or got[2], 4 if alpha else 3, 8, 1, work)


def _webp_frame(data: bytes, body: int, length: int, number: int, width: int, height: int) -> None:
    if length < 24:
        raise corrupt("WebP", f"animation frame {number} is {length} bytes")
    x, y = 2 * int.from_bytes(data[body : body + 3], "little"), 2 * int.from_bytes(data[body + 3 : body + 6], "little")
    w = 1 + int.from_bytes(data[body + 6 : body + 9], "little")
    h = 1 + int.from_bytes(data[body + 9 : body + 12], "little")
    if x + w > width or y + h > height:
        raise corrupt("WebP", f"animation frame {number} ({w}x{h} at {x},{y}) does not fit the {width}x{height} canvas")
    images = [c for c in _riff_chunks(data, body + 16, body + length) if c[0] in (b"VP8 ", b"VP8L")]
    if not images:
        raise corrupt("WebP", f"animation frame {number} has no image data")
    got = _webp_bitstream(images[0][0], data, *images[0][1:])
    if got[:2] != (w, h):
        raise corrupt("WebP", f"animation frame {number} holds a {got[0]}x{got[1]} image, it states {w}x{h}")


# --- TIFF ---------------------------------------------------------------------------------------------------

_TIFF_TYPES = {1: "u1", 2: "u1", 3: "u2", 4: "u4", 6: "i1", 7: "u1", 8: "i2", 9: "i4", 11: "f4", 13: "u4"}
_TIFF_TYPES |= {5: "u8", 10: "i8", 12: "f8"}  # rationals (two 32-bit numbers) and doubles: 8 bytes each
_TIFF_WANTED = {256, 257, 258, 259, 273, 277, 278, 279, 284, 322, 323, 324, 325, 338}
_TIFF_MAX_ENTRIES = 4096  # libtiff's own sanity limit on a directory


def _tiff(data: bytes, max_pixels: int) -> ImageInfo:
    n, order = len(data), "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0] if n >= 8 else 0
    if ifd < 8 or ifd + 2 > n:
        raise corrupt("TIFF", f"its first directory is at byte {ifd:,}, outside the {n:,}-byte file")
    count = struct.unpack_from(order + "H", data, ifd)[0]
    if not 1 <= count <= _TIFF_MAX_ENTRIES or ifd + 2 + 12 * count > n:
        raise corrupt("TIFF", f"its first directory lists {count:,} entries that the file cannot hold")
    tags = {}
    for k in range(count):
        entry = ifd + 2 + 12 * k
        tag, kind, items = struct.unpack_from(order + "HHI", data, entry)
        if kind not in _TIFF_TYPES:
            continue  # libtiff skips entries of unknown types
        dtype = np.dtype(order + _TIFF_TYPES[kind])
        size = items * dtype.itemsize
        where = entry + 8 if size <= 4 else struct.unpack_from(order + "I", data, entry + 8)[0]
        if where + size > n:
            raise corrupt("TIFF", f"tag {tag} claims {size:,} bytes at byte {where:,}, past the end of the file")
        if tag in _TIFF_WANTED and kind not in (5, 10, 12):
            tags[tag] = np.frombuffer(data, dtype, items, where).astype(np.int64)
    return _tiff_image(data, tags, max_pixels)


def _tiff_image(data: bytes, tags: dict, max_pixels: int) -> ImageInfo:
    def one(tag: int, default: int | None = None) -> int:
        values = tags.get(tag)
        if values is None or not len(values):
            if default is None:
                raise corrupt("TIFF", f"required tag {tag} is missing")
            return default
        return int(values[0])

    width, height = one(256), one(257)
    check_size("TIFF", width, height, max_pixels)
    samples, planar, compression = one(277, 1), one(284, 1), one(259, 1)
    depths = tags.get(258, np.array([1]))
    bits = int(depths.max()) if len(depths) else 1
    if not 1 <= samples <= 4 or planar not in (1, 2) or bits not in (1, 2, 4, 8, 16, 32, 64):
        raise unsupported("TIFF", f"{samples} samples of {bits} bits per pixel")
    if compression == 6:
        raise unsupported("TIFF", "old-style JPEG compression")
    tiled = 322 in tags
    tile_w, tile_h = (one(322), one(323)) if tiled else (width, min(max(one(278, height), 0), height))
    if tile_w <= 0 or tile_h <= 0:
        raise corrupt("TIFF", f"a strip or tile of {tile_w}x{tile_h} pixels")
    per_plane = -(-width // tile_w) * -(-height // tile_h)
    needed = per_plane * (samples if planar == 2 else 1)
    offsets, counts = tags.get(324 if tiled else 273), tags.get(325 if tiled else 279)
    if offsets is None or counts is None or min(len(offsets), len(counts)) < needed:
        raise corrupt("TIFF", f"it lists fewer than the {needed:,} strips or tiles its size needs")
    offsets, counts = offsets[:needed], counts[:needed]
    past = np.flatnonzero((offsets < 0) | (counts <= 0) | (offsets + counts > len(data)))
    if len(past):
        k = int(past[0])
        raise corrupt(
            "TIFF", f"strip {k + 1} claims {int(counts[k]):,} bytes at byte {int(offsets[k]):,}, outside the file"
        )
    if compression == 1:
        row = -(-tile_w * (samples if planar == 1 else 1) * bits // 8)
        if tiled and (counts < row * tile_h).any() or not tiled and counts.sum() < row * height:
            raise corrupt("TIFF", "its uncompressed strips hold fewer bytes than its pixels need")
    alpha = samples in (2, 4) and bool(np.isin(tags.get(338, np.array([])), (1, 2)).any())
    # OpenCV decodes a strip or tile at a time, through buffers of about samples + 3 bytes a pixel (measured on
    # single-strip TIFFs), besides libtiff's copy of the raw strip.
    work = tile_w * tile_h * (samples + 3) * max(1, bits // 8) + int(counts.max())
    return ImageInfo("TIFF", width, height, alpha, samples, bits, 1, work)


# --- BMP ----------------------------------------------------------------------------------------------------

_BMP_HEADERS = (12, 40, 52, 56, 108, 124)
_BMP_COMPRESSION = {0: (1, 4, 8, 16, 24, 32), 1: (8,), 2: (4,), 3: (16, 32), 6: (16, 32)}


def _bmp(data: bytes, max_pixels: int) -> ImageInfo:
    n = len(data)
    if n < 26:
        raise corrupt("BMP", "the file ends inside its header")
    pixels_at, header = struct.unpack_from("<II", data, 10)
    if header not in _BMP_HEADERS:
        raise unsupported("BMP", f"a {header}-byte info header")
    if 14 + header > n:
        raise corrupt("BMP", f"its {header}-byte info header runs past the end of the file")
    if header == 12:
        width, height, planes, depth = struct.unpack_from("<HHHH", data, 18)
        compression, colours, image_size = 0, 0, 0
    else:
        width, height, planes, depth, compression, image_size = struct.unpack_from("<iiHHII", data, 18)
        colours = struct.unpack_from("<I", data, 46)[0]
    rows = abs(height)
    check_size("BMP", width, rows, max_pixels)
    if planes != 1 or depth not in _BMP_COMPRESSION.get(compression, ()) or (height < 0 and compression in (1, 2)):
        raise unsupported("BMP", f"{depth} bits per pixel with compression {compression}")
    masks = 12 if header == 40 and compression == 3 else 16 if header == 40 and compression == 6 else 0
    if depth <= 8:
        if colours > 1 << depth:
            raise corrupt("BMP", f"a palette of {colours:,} colours for {depth}-bit pixels")
        table = (colours or 1 << depth) * (3 if header == 12 else 4)
    else:
        table = colours * 4 if colours <= 256 else 0
    if 14 + header + masks + min(table, 1024) > n or not 14 + header <= pixels_at < n:
        raise corrupt("BMP", f"its pixel data is said to start at byte {pixels_at:,}, outside the file")
    if compression in (1, 2):
        if image_size and pixels_at + image_size > n:
            raise corrupt("BMP", f"its pixel data claims {image_size:,} bytes, only {n - pixels_at:,} remain")
    elif pixels_at + ((width * depth + 31) // 32) * 4 * rows > n:
        raise corrupt("BMP", f"{width}x{rows} pixels need more bytes than the {n - pixels_at:,} present")
    alpha = depth == 32 and compression in (3, 6) and _bmp_alpha_mask(data, header, compression) != 0
    return ImageInfo("BMP", width, rows, alpha, 4 if alpha else 3, 8, 1, 0)


def _bmp_alpha_mask(data: bytes, header: int, compression: int) -> int:
    if header >= 56:
        return struct.unpack_from("<I", data, 14 + 52)[0]
    if header == 40 and compression == 6 and len(data) >= 14 + 40 + 16:
        return struct.unpack_from("<I", data, 14 + 40 + 12)[0]
    return 0


_WALKERS = (
    (b"\xff\xd8", _jpeg),
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"RIFF", _webp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"BM", _bmp),
)
_UNSUPPORTED = (
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"8BPS", "Photoshop PSD"),
)
_ISO_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}
