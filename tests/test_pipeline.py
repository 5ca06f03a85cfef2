"""The cv2 pipeline: one function turns image bytes into model input, and every bad file gets a clear reason."""

from __future__ import annotations

import io
import struct
import threading
import time
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from conftest import make_jpeg
from PIL import Image

from core import config
from core.pipeline import (
    ImageError,
    PipelineConfig,
    _reduced_flag,
    decode,
    decode_original,
    decode_preview,
    inspect,
    preprocess,
    to_model_input,
)

RGB80 = PipelineConfig(80, "rgb")
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(width: int = 320, height: int = 240) -> np.ndarray:
    """An RGB picture whose layout shows orientation and channel order: red, green / blue, white."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2, : width // 2] = RED
    img[: height // 2, width // 2 :] = GREEN
    img[height // 2 :, : width // 2] = BLUE
    img[height // 2 :, width // 2 :] = WHITE
    return img


def quadrant_colors(x: np.ndarray) -> list[tuple[int, ...]]:
    """The colour at the centre of each quadrant of a decoded square image: TL, TR, BL, BR."""
    q = x.shape[0] // 4
    return [tuple(int(v) for v in x[r, c]) for r, c in ((q, q), (q, 3 * q), (3 * q, q), (3 * q, 3 * q))]


def assert_quadrants(x: np.ndarray, tolerance: int) -> None:
    for got, want in zip(quadrant_colors(x), (RED, GREEN, BLUE, WHITE), strict=True):
        assert np.abs(np.array(got) - np.array(want)).max() <= tolerance, (got, want)


def pillow_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def cv2_bytes(img: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a valid header claiming width x height pixels: the shape of a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


# --- the seed's defaults and the settings -------------------------------------------------------------------


def test_defaults_are_the_seed_tutorials_80x80_grayscale_scaled_to_0_1(jpeg):
    cfg = PipelineConfig()
    assert (cfg.size, cfg.color_mode, cfg.input_shape) == (80, "grayscale", (80, 80, 1))
    x = preprocess(jpeg)
    assert x.shape == (80, 80, 1)
    assert x.dtype == np.float32
    assert 0.0 <= x.min() < x.max() <= 1.0
    np.testing.assert_allclose(x, decode(jpeg).astype(np.float32) / 255.0, atol=1e-6)


def test_grayscale_output_is_the_seeds_cv2_grayscale_resized_with_inter_area():
    # A picture too small for reduced decoding: the pipeline must equal the plain cv2 recipe exactly.
    data = make_jpeg(150, 120, seed=3)
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(gray, (80, 80), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(decode(data)[:, :, 0], expected)


def test_black_is_zero_and_white_is_one():
    img = np.zeros((100, 100), np.uint8)
    img[:, 50:] = 255
    x = preprocess(cv2_bytes(img, ".png"))
    assert x[:, :30].max() == 0.0
    assert x[:, 50:].min() == 1.0


@pytest.mark.parametrize("size", [32, 64, 96, 128, 150])
@pytest.mark.parametrize("mode, channels", [("grayscale", 1), ("rgb", 3)])
def test_size_and_color_mode_are_settings(jpeg, size, mode, channels):
    x = preprocess(jpeg, PipelineConfig(size, mode))
    assert x.shape == (size, size, channels)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_rgb_mode_is_in_rgb_order_not_opencvs_bgr():
    x = decode(cv2_bytes(cv2.cvtColor(quadrants(), cv2.COLOR_RGB2BGR), ".png"), RGB80)
    assert_quadrants(x, tolerance=0)


def test_to_model_input_scales_a_batch_like_the_seed():
    batch = np.array([[[[0]], [[128]], [[255]]]], np.uint8)
    out = to_model_input(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1), [0.0, 128 / 255, 1.0], rtol=1e-6)


def test_pipeline_config_round_trips_through_a_models_input_shape():
    for cfg in (PipelineConfig(), PipelineConfig(96, "rgb"), PipelineConfig(64, "grayscale")):
        assert PipelineConfig.from_input_shape((None, *cfg.input_shape)) == cfg


def test_cache_key_names_every_setting_that_changes_output():
    keys = {PipelineConfig(s, m).cache_key() for s in (64, 80) for m in ("grayscale", "rgb")}
    assert len(keys) == 4


# --- formats that must decode correctly ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, options, tolerance",
    [
        ("PNG", {}, 0),
        ("GIF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 40),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("JPEG", {"quality": 95}, 40),
    ],
)
def test_every_common_format_decodes_with_the_right_layout_and_colors(fmt, options, tolerance):
    data = pillow_bytes(Image.fromarray(quadrants()), fmt, **options)
    assert_quadrants(decode(data, RGB80), tolerance)


def test_cmyk_jpeg_decodes_to_the_right_colors():
    data = pillow_bytes(Image.fromarray(quadrants()).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_quadrants(decode(data, RGB80), tolerance=40)


def test_grayscale_jpeg_decodes_in_both_color_modes():
    gray = np.zeros((120, 160), np.uint8)
    gray[:, 80:] = 200
    data = cv2_bytes(gray, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    x_gray = decode(data)
    assert abs(int(x_gray[40, 10, 0]) - 0) <= 8 and abs(int(x_gray[40, 70, 0]) - 200) <= 8
    x_rgb = decode(data, RGB80)
    assert x_rgb.shape == (80, 80, 3)
    assert (x_rgb[:, :, 0] == x_rgb[:, :, 1]).all() and (x_rgb[:, :, 1] == x_rgb[:, :, 2]).all()


def test_rgba_png_is_composited_on_white_not_stripped_of_alpha():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[:, :50] = (255, 0, 0, 0)  # fully transparent red: a viewer shows the background
    rgba[:, 50:] = (0, 0, 255, 255)  # opaque blue
    data = pillow_bytes(Image.fromarray(rgba, "RGBA"), "PNG")
    x = decode(data, RGB80)
    assert tuple(x[40, 10]) == WHITE
    assert tuple(x[40, 70]) == BLUE
    half = rgba.copy()
    half[:] = (0, 0, 0, 128)  # half-transparent black over white is mid grey
    assert abs(int(decode(pillow_bytes(Image.fromarray(half, "RGBA"), "PNG"))[40, 40, 0]) - 127) <= 2


def test_grayscale_with_alpha_png_is_composited_too():
    la = np.zeros((100, 100, 2), np.uint8)
    la[:, :, 0] = 50
    la[:, 50:, 1] = 255  # left half transparent
    x = decode(pillow_bytes(Image.fromarray(la, "LA"), "PNG"))
    assert x[40, 10, 0] == 255 and x[40, 70, 0] == 50


def test_a_preview_is_8_bit_rgb_at_most_max_side_and_keeps_the_aspect_ratio():
    gray16 = np.full((300, 1200), 65535, np.uint16)  # a format st.image cannot show from its bytes
    preview = decode_preview(cv2_bytes(gray16, ".png"), max_side=400)
    assert preview.dtype == np.uint8 and preview.shape == (100, 400, 3) and (preview == 255).all()
    small = decode_preview(make_jpeg(120, 90), max_side=400)
    assert small.shape == (90, 120, 3)  # never enlarged
    with pytest.raises(ImageError, match="empty"):
        decode_preview(b"")


def test_16_bit_png_is_scaled_to_8_bits():
    gray16 = np.zeros((100, 120), np.uint16)
    gray16[:, 40:80] = 128 * 257
    gray16[:, 80:] = 65535
    x = decode(cv2_bytes(gray16, ".png"))
    assert (x[:, :25, 0] == 0).all()
    assert (x[:, 30:50, 0] == 128).all()
    assert (x[:, 56:, 0] == 255).all()
    color16 = cv2.cvtColor(quadrants(), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    assert_quadrants(decode(cv2_bytes(color16, ".png"), RGB80), tolerance=0)


@pytest.mark.parametrize("width, height, size", [(320, 240, 80), (320, 240, 150), (1600, 1200, 80), (1600, 1200, 96)])
def test_exif_rotated_jpeg_is_shown_upright(width, height, size):
    # The camera stored the picture turned 90 degrees left and tagged it orientation 6 (rotate 90 clockwise).
    stored = np.ascontiguousarray(np.rot90(quadrants(width, height)))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = pillow_bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    assert_quadrants(decode(data, PipelineConfig(size, "rgb")), tolerance=40)
    gray = decode(data, PipelineConfig(size, "grayscale"))[:, :, 0]
    q = size // 4
    assert gray[3 * q, 3 * q] > 240 and gray[3 * q, q] < 60  # white bottom-right, blue bottom-left


# --- reduced-size JPEG decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width, height, size, expected",
    [
        (100, 100, 80, cv2.IMREAD_GRAYSCALE),
        (159, 400, 80, cv2.IMREAD_GRAYSCALE),
        (160, 160, 80, cv2.IMREAD_REDUCED_GRAYSCALE_2),
        (500, 375, 80, cv2.IMREAD_REDUCED_GRAYSCALE_4),
        (640, 640, 80, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        (4000, 3000, 80, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        (500, 375, 150, cv2.IMREAD_REDUCED_GRAYSCALE_2),
        (500, 375, 200, cv2.IMREAD_GRAYSCALE),
        (500, 375, 96, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    ],
)
def test_large_jpegs_decode_at_the_largest_reduction_that_stays_above_the_target(width, height, size, expected):
    from core.pipeline import ImageInfo

    assert _reduced_flag(ImageInfo("JPEG", width, height, False), PipelineConfig(size)) == expected


def test_reduced_decoding_applies_to_color_and_never_to_other_formats():
    from core.pipeline import ImageInfo

    assert _reduced_flag(ImageInfo("JPEG", 640, 480, False), PipelineConfig(80, "rgb")) == cv2.IMREAD_REDUCED_COLOR_4
    assert _reduced_flag(ImageInfo("PNG", 4000, 3000, False), PipelineConfig(80)) == cv2.IMREAD_GRAYSCALE
    assert _reduced_flag(ImageInfo("WEBP", 4000, 3000, False), PipelineConfig(80, "rgb")) == cv2.IMREAD_COLOR


@pytest.mark.parametrize("cfg", [PipelineConfig(80, "grayscale"), PipelineConfig(96, "rgb")])
def test_reduced_decoding_is_close_to_a_full_decode_and_inter_area_resize(test_zip, cfg):
    # Real, original-size competition photos (about 500x375), which take the reduced path.
    with zipfile.ZipFile(test_zip) as zf:
        photos = [zf.read(n) for n in sorted(zf.namelist()) if n.endswith(".jpg")][:40]
    diffs = []
    for data in photos:
        info = inspect(data)
        full_flag = cv2.IMREAD_GRAYSCALE if cfg.color_mode == "grayscale" else cv2.IMREAD_COLOR
        full = cv2.imdecode(np.frombuffer(data, np.uint8), full_flag)
        if cfg.color_mode == "rgb":
            full = cv2.cvtColor(full, cv2.COLOR_BGR2RGB)
        expected = cv2.resize(full, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA).reshape(cfg.input_shape)
        diffs.append(np.abs(decode(data, cfg).astype(int) - expected.astype(int)).mean())
        if min(info.width, info.height) >= 2 * cfg.size:
            assert _reduced_flag(info, cfg) != full_flag
    assert sum(_reduced_flag(inspect(d), cfg) != full_flag for d in photos) >= 30  # most photos take the fast path
    assert max(diffs) < 8, diffs  # grey levels out of 255, per photo
    assert np.mean(diffs) < 4, diffs


# --- files that must get a clear reason ----------------------------------------------------------------------


def test_zero_byte_file_is_rejected_as_empty():
    with pytest.raises(ImageError, match="empty"):
        preprocess(b"")


@pytest.mark.parametrize(
    "data",
    [b"hello, I am not an image", b"%PDF-1.4\n" + bytes(200), b"PK\x03\x04" + bytes(100), bytes(range(256)) * 4],
)
def test_non_image_is_rejected_as_not_an_image(data):
    with pytest.raises(ImageError, match="not an image"):
        preprocess(data)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("fraction", [0.2, 0.35, 0.5, 0.75, 0.9, 0.99])
def test_jpeg_cut_anywhere_after_its_header_is_rejected_as_truncated(progressive, fraction):
    img = cv2.imdecode(np.frombuffer(make_jpeg(320, 240, seed=5), np.uint8), cv2.IMREAD_COLOR)
    data = cv2_bytes(img, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    with pytest.raises(ImageError, match="truncated"):
        preprocess(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("cut", [1, 2, 3, 20, 100, -2, -1])
def test_jpeg_cut_at_any_byte_gets_a_reason_never_a_crash(jpeg, cut):
    with pytest.raises(ImageError):
        preprocess(jpeg[:cut])


def test_truncated_png_is_rejected_as_corrupt():
    data = cv2_bytes(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8), ".png")
    with pytest.raises(ImageError, match="corrupt PNG"):
        preprocess(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_damaged_bytes_give_a_reason_or_a_correct_shape_never_another_exception(fmt):
    rng = np.random.default_rng(1)
    pixels = cv2.imdecode(np.frombuffer(make_jpeg(160, 120, seed=2), np.uint8), cv2.IMREAD_COLOR)
    data = cv2_bytes(pixels, "." + fmt.replace("jpeg", "jpg"))
    for _ in range(150):
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
        try:
            x = preprocess(bytes(damaged), RGB80)
        except ImageError as err:
            assert str(err)
        else:
            assert x.shape == (80, 80, 3) and x.dtype == np.float32


# --- the pixel cap, applied from the header before any decoding ---------------------------------------------


def test_the_pixel_cap_is_read_when_used_not_when_imported(monkeypatch):
    photo = make_jpeg(160, 120)
    assert inspect(photo).width == 160
    monkeypatch.setattr(config, "MAX_PIXELS", 160 * 120 - 1)
    assert PipelineConfig().max_pixels == 160 * 120 - 1
    for refuse in (inspect, lambda data: preprocess(data, PipelineConfig()), decode_original, decode_preview):
        with pytest.raises(ImageError, match="pixels"):
            refuse(photo)


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (8000, 5001), (65_000, 65_000)])
def test_png_header_claiming_too_many_pixels_is_refused_before_decoding(width, height):
    # The file holds no pixel data at all, so any attempt to decode would fail differently.
    with pytest.raises(ImageError, match="too many pixels.*refused before decoding"):
        preprocess(png_header(width, height))


def test_an_image_just_under_the_cap_is_not_refused_for_its_size():
    with pytest.raises(ImageError) as caught:
        preprocess(png_header(6000, 6000))  # 36 MP: allowed, then fails only because it has no pixel data
    assert "too many pixels" not in str(caught.value)


def test_jpeg_header_claiming_too_many_pixels_is_refused():
    data = bytearray(make_jpeg(320, 240))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 9000, 9000)  # height, width: 81 MP
    with pytest.raises(ImageError, match="too many pixels"):
        preprocess(bytes(data))


def test_pixel_cap_is_a_setting(jpeg):
    with pytest.raises(ImageError, match="too many pixels"):
        preprocess(jpeg, PipelineConfig(max_pixels=320 * 240 - 1))
    assert preprocess(jpeg, PipelineConfig(max_pixels=320 * 240)).shape == (80, 80, 1)


def test_inspect_reads_size_and_format_from_the_header(jpeg):
    info = inspect(jpeg)
    assert (info.format, info.width, info.height, info.has_alpha) == ("JPEG", 320, 240, False)
    rgba = pillow_bytes(Image.new("RGBA", (30, 20)), "PNG")
    assert inspect(rgba).has_alpha


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grayscale", "cmyk", "exif", "embedded-thumbnail"])
def test_jpeg_size_is_read_from_the_frame_header_of_every_kind_of_jpeg(kind):
    pixels = quadrants(333, 222)
    if kind == "progressive":
        data = cv2_bytes(pixels, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    elif kind == "grayscale":
        data = cv2_bytes(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), ".jpg")
    elif kind == "cmyk":
        data = pillow_bytes(Image.fromarray(pixels).convert("CMYK"), "JPEG")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = pillow_bytes(Image.fromarray(pixels), "JPEG", exif=exif.tobytes())
    elif kind == "embedded-thumbnail":
        # An APP1 segment that carries a whole 64x48 JPEG, as camera EXIF thumbnails do: its frame header is not ours.
        thumb = cv2_bytes(quadrants(64, 48), ".jpg")
        app1 = b"\xff\xe1" + struct.pack(">H", len(thumb) + 8) + b"Exif\x00\x00" + thumb
        main = cv2_bytes(pixels, ".jpg")
        data = main[:2] + app1 + main[2:]
    else:
        data = cv2_bytes(pixels, ".jpg")
    info = inspect(data)
    assert (info.format, info.width, info.height, info.has_alpha) == ("JPEG", 333, 222, False)
    assert Image.open(io.BytesIO(data)).size == (333, 222)
    assert decode(data, RGB80).shape == (80, 80, 3)


# --- every hostile file in ../shared/data/bad-inputs -----------------------------------------------------------

# The outcome shared/data/README.md lists for each image file (the zips are datasets: see test_data.py).
BAD_INPUT_OUTCOMES = {
    "zero-byte.jpg": "empty",
    "text-named.jpg": "not an image",
    "truncated.jpg": "truncated",
    "rgba.png": None,
    "gray16.png": None,
    "bomb-20000x20000.png": "too many pixels.*refused before decoding",
}
BAD_INPUT_DATASETS = {"macos-made.zip", "zip-slip.zip", "class-folders.zip"}


def test_every_bad_input_has_a_listed_outcome(bad_inputs):
    assert {p.name for p in bad_inputs.iterdir()} == set(BAD_INPUT_OUTCOMES) | BAD_INPUT_DATASETS


@pytest.mark.parametrize("name", sorted(BAD_INPUT_OUTCOMES))
@pytest.mark.parametrize("cfg", [PipelineConfig(), PipelineConfig(96, "rgb")])
def test_bad_input_gets_the_outcome_its_readme_lists(bad_inputs, name, cfg):
    data = (bad_inputs / name).read_bytes()
    reason = BAD_INPUT_OUTCOMES[name]
    if reason is None:
        x = preprocess(data, cfg)
        assert x.shape == cfg.input_shape and x.dtype == np.float32
        assert 0.0 <= x.min() < x.max() <= 1.0  # a real picture, not a blank
    else:
        with pytest.raises(ImageError, match=reason):
            preprocess(data, cfg)


def test_gray16_bad_input_matches_its_own_pixels_scaled_to_8_bits(bad_inputs):
    data = (bad_inputs / "gray16.png").read_bytes()
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    expected = cv2.resize((raw / 257).astype(np.uint8), (80, 80), interpolation=cv2.INTER_AREA)
    assert np.abs(decode(data)[:, :, 0].astype(int) - expected).max() <= 1


# --- structure checked before any decoder: every length and size backed by bytes present ----------------------


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_with(chunks: list[bytes]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def huge_idat_png() -> bytes:
    """The issue's attack: 64x48 in IHDR, then an IDAT header claiming ~3.7 GB, in about 140 bytes."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0))
    body = zlib.compress(bytes(64 * 3 + 1) * 48)[:60]
    return png_with([ihdr]) + struct.pack(">I", 0xE0000000) + b"IDAT" + body + b"\x00" * 4


@pytest.fixture
def imdecode_calls(monkeypatch) -> list[int]:
    """Counts the calls that reach cv2.imdecode, to show a refused file never got that far."""
    calls: list[int] = []
    real = cv2.imdecode

    def counting(buf, flags):
        calls.append(flags)
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", counting)
    return calls


def test_the_huge_idat_png_is_refused_by_its_chunk_walk_before_opencv_sees_it(imdecode_calls):
    data = huge_idat_png()
    assert len(data) < 160
    with pytest.raises(ImageError, match=r"corrupt PNG: chunk IDAT at byte 33 claims 3,758,096,384 bytes, only \d+"):
        preprocess(data, RGB80)
    with pytest.raises(ImageError, match="claims 3,758,096,384 bytes"):
        decode_preview(data)
    assert imdecode_calls == []


def _jpeg_with_app1_claiming(length: int) -> bytes:
    data = make_jpeg(64, 48)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", length) + b"Exif\x00\x00" + data[2:40]


def _gif_with(screen: tuple[int, int] | None = None, frame: tuple[int, int, int, int] | None = None) -> bytes:
    data = bytearray(pillow_bytes(Image.fromarray(quadrants(64, 48)), "GIF"))
    if screen:
        data[6:10] = struct.pack("<HH", *screen)
    if frame:
        at = data.index(b"\x2c", 13 + (3 << ((data[10] & 7) + 1)))
        data[at + 1 : at + 9] = struct.pack("<HHHH", *frame)
    return bytes(data)


def _webp_with_riff_size(extra: int) -> bytes:
    data = bytearray(pillow_bytes(Image.fromarray(quadrants(64, 48)), "WEBP"))
    struct.pack_into("<I", data, 4, struct.unpack_from("<I", data, 4)[0] + extra)
    return bytes(data)


def _tiff_with(tag: int, value: int) -> bytes:
    # A little-endian TIFF with one of its first directory's entries given another value.
    data = bytearray(pillow_bytes(Image.fromarray(quadrants(64, 48)), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<I", data, entry + 8, value)
    return bytes(data)


def _bmp_with(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(cv2_bytes(quadrants(64, 48), ".bmp"))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (huge_idat_png(), "PNG: chunk IDAT at byte 33 claims"),
        (
            png_with([png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)), png_chunk(b"IEND", b"")]),
            "no IDAT",
        ),
        (png_with([png_chunk(b"tEXt", b"a\x00b")]), "first chunk is not a 13-byte IHDR"),
        (cv2_bytes(quadrants(64, 48), ".png")[:-12], "before its IEND"),
        (_jpeg_with_app1_claiming(60_000), "JPEG: segment at byte 2 claims 60,000 bytes"),
        (make_jpeg(64, 48)[:-2], "before its end-of-image marker"),
        (_gif_with(screen=(60_000, 60_000)), "too many pixels: 60000x60000 logical screen"),
        (_gif_with(frame=(10, 10, 64, 48)), "frame 1 \\(64x48 at 10,10\\) does not fit the 64x48 screen"),
        (_gif_with(frame=(0, 0, 65_535, 65_535)), "does not fit the 64x48 screen"),
        (_webp_with_riff_size(10_000), "WebP: its RIFF header claims"),
        (_tiff_with(273, 10**8), "TIFF: strip 1 claims .* at byte 100,000,000, outside the file"),
        (_tiff_with(279, 10**8), "TIFF: strip 1 claims 100,000,000 bytes"),
        (_bmp_with(10, "<I", 10**8), "BMP: its pixel data is said to start at byte 100,000,000"),
        (_bmp_with(22, "<i", 4800), "BMP: 64x4800 pixels need more bytes"),
    ],
    ids=[
        "png-huge-idat",
        "png-no-idat",
        "png-ihdr-not-first",
        "png-no-iend",
        "jpeg-segment-length",
        "jpeg-no-eoi",
        "gif-screen-over-cap",
        "gif-frame-off-screen",
        "gif-frame-huge",
        "webp-riff-size",
        "tiff-strip-offset",
        "tiff-strip-count",
        "bmp-pixel-offset",
        "bmp-height",
    ],
)
def test_a_length_or_size_the_bytes_cannot_back_is_refused_before_any_decoder(data, reason, imdecode_calls):
    with pytest.raises(ImageError, match=reason):
        decode(data, RGB80)
    assert imdecode_calls == []


def test_a_file_opencv_fails_on_is_never_rescued_by_pillow():
    # A valid PNG with an 8 MB private chunk: OpenCV refuses chunks that large, Pillow would decode it.
    small = cv2_bytes(quadrants(64, 48), ".png")
    data = small[:33] + png_chunk(b"zzXt", bytes(8 * 2**20)) + small[33:]
    assert Image.open(io.BytesIO(data)).convert("RGB").size == (64, 48)
    with pytest.raises(ImageError, match="corrupt PNG image: the decoder could not read its pixels"):
        decode(data, RGB80)


@pytest.mark.parametrize(
    "data, name",
    [
        (b"\x00\x00\x00\x1cftypavif" + bytes(40), "AVIF"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(40), "HEIC"),
        (b"II+\x00" + bytes(40), "BigTIFF"),
        (b"8BPS" + bytes(40), "Photoshop PSD"),
    ],
)
def test_a_known_format_we_do_not_read_is_named(data, name):
    with pytest.raises(ImageError, match=f"unsupported image format: {name} \\(we read JPEG, PNG, GIF, WebP"):
        decode(data)


# --- memory: budgeted from the checked header, admitted process-wide ---------------------------------------------


def test_the_decode_budget_is_a_setting_and_an_image_past_it_is_refused_by_reason(monkeypatch):
    assert config.MAX_DECODE_BYTES == 256 * 2**20 and config.DECODE_BUDGET_BYTES == 384 * 2**20
    data = cv2_bytes(np.zeros((1000, 1000, 3), np.uint8), ".png")
    monkeypatch.setattr(config, "MAX_DECODE_BYTES", 40 * 2**20)
    assert decode(data, RGB80).shape == (80, 80, 3)  # 1 MP of RGB: 6 MB, and its copy, and 16 MB of slack
    transparent = cv2_bytes(np.zeros((1000, 2000, 4), np.uint16), ".png")  # 16 MB, and its copy
    with pytest.raises(ImageError, match="too large to decode: this 2000x1000 16-bit PNG with transparency needs"):
        decode(transparent, RGB80)


def test_concurrent_decodes_never_hold_more_than_the_budget():
    from concurrent.futures import ThreadPoolExecutor

    from core.pipeline import DecodeBudget

    budget = DecodeBudget(100)
    held, most, lock = [0], [0], threading.Lock()

    def work(nbytes: int) -> None:
        with budget.hold(nbytes):
            with lock:
                held[0] += nbytes
                most[0] = max(most[0], held[0])
            time.sleep(0.001)  # hold it while others try: what is measured is overlap, not speed
            with lock:
                held[0] -= nbytes

    sizes = [int(s) for s in np.random.default_rng(0).integers(1, 101, 400)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, sizes))
    assert most[0] <= 100 and budget.peak <= 100 and budget.in_use == 0
    assert most[0] > 100 // 2  # several small holds did run side by side


def test_pipeline_decodes_in_threads_stay_within_the_process_budget():
    from concurrent.futures import ThreadPoolExecutor

    from core.pipeline import DECODE_BUDGET

    photos = [cv2_bytes(quadrants(1200 + i, 900), ".png") for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        shapes = {x.shape for x in pool.map(lambda d: decode(d, RGB80), photos)}
    assert shapes == {(80, 80, 3)}
    assert 0 < DECODE_BUDGET.peak <= DECODE_BUDGET.capacity and DECODE_BUDGET.in_use == 0


def test_16_bit_alpha_decodes_without_full_frame_float_copies():
    import tracemalloc

    rgba16 = np.zeros((1500, 2000, 4), np.uint16)
    rgba16[:, :1000] = (0, 0, 65535, 65535)  # opaque red (BGRA), then transparent
    data = cv2_bytes(rgba16, ".png")
    del rgba16
    tracemalloc.start()  # numpy arrays are traced, OpenCV's own buffers are not
    try:
        x = decode(data, RGB80)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = 1500 * 2000 * 4 * 2  # the uint16 BGRA picture OpenCV hands over: 24 MB
    assert peak < decoded + 12 * 2**20, peak / 2**20  # a float64 copy alone would be 96 MB
    assert tuple(x[40, 10]) == RED and tuple(x[40, 70]) == WHITE


@pytest.mark.parametrize("bits", [8, 16])
def test_alpha_composited_after_reduction_matches_compositing_first(bits):
    rng = np.random.default_rng(bits)
    top = 2**bits - 1
    bgra = rng.integers(0, top + 1, (300, 400, 4), dtype=np.uint16 if bits == 16 else np.uint8)
    data = cv2_bytes(bgra, ".png")
    alpha = bgra[:, :, 3:4].astype(np.float64) / top
    flat = (bgra[:, :, :3] * alpha + top * (1 - alpha)) * (255 / top)
    expected = cv2.cvtColor(
        cv2.resize(flat.astype(np.float32), (80, 80), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
    )
    assert np.abs(decode(data, RGB80).astype(float) - expected).max() <= 1.5


def test_a_big_jpeg_preview_is_decoded_reduced_not_at_full_size():
    import tracemalloc

    data = make_jpeg(4000, 3000, seed=4)
    tracemalloc.start()
    try:
        preview = decode_preview(data, max_side=640)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert preview.shape == (480, 640, 3)
    assert peak < 8 * 2**20  # a 1/4-size decode is 9 MB of RGB; the full photo would be 36 MB
    full = cv2.resize(decode_original(data), (640, 480), interpolation=cv2.INTER_AREA)
    assert np.abs(preview.astype(int) - full).mean() < 3


# --- animations, tiny images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_an_animation_decodes_its_first_frame_only(fmt):
    red, green, blue = (Image.new("RGB", (64, 48), color) for color in (RED, GREEN, BLUE))
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = pillow_bytes(red, fmt, save_all=True, append_images=[green, blue], duration=50, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert inspect(data).frames == 3
    assert {tuple(int(v) for v in px) for px in decode(data, RGB80).reshape(-1, 3)} == {RED}


@pytest.mark.parametrize("width, height", [(1, 1), (15, 15), (15, 400), (400, 3)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_an_image_below_the_minimum_size_gets_a_reason_not_a_label(fmt, width, height):
    data = pillow_bytes(Image.new("RGB", (width, height), (200, 120, 40)), fmt)
    with pytest.raises(ImageError, match=f"too small: {width}x{height}, the minimum is 16 px on the shorter side"):
        preprocess(data, RGB80)


def test_the_minimum_size_is_a_setting_and_16_px_is_enough(monkeypatch):
    data = pillow_bytes(Image.new("RGB", (16, 16), (200, 120, 40)), "PNG")
    assert config.MIN_IMAGE_SIDE == 16
    assert preprocess(data, RGB80).shape == (80, 80, 3)
    monkeypatch.setattr(config, "MIN_IMAGE_SIDE", 17)
    with pytest.raises(ImageError, match="too small: 16x16, the minimum is 17 px"):
        preprocess(data)
