"""The hostile files issue #11 measured, decided in real processes whose peak memory is measured.

Each file is built here with real bytes (tests/fuzzing.py). The bounds are generous on purpose: memory is
deterministic enough to assert on, and these catch a decoder that allocates what a header claims, not a slow one.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fuzzing import big_png, gif_with_screen, huge_idat_png, measure_decode

from core import config

MB = 10**6
DECODE_LIMIT = 300 * MB  # the budget above a process's baseline, for any one file
PREDICT_LIMIT = 1500 * MB  # a whole `python -m core predict`, TensorFlow included


def peak_bytes(result: dict) -> int:
    return result["peak_bytes"]


@pytest.fixture
def written(tmp_path):
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


def test_the_huge_idat_png_is_refused_by_reason_and_never_allocated(written):
    path = written("huge-idat.png", huge_idat_png())
    for call in ("rgb", "preview"):
        result = measure_decode(path, call, str(config.ROOT))
        assert result["outcome"].startswith("truncated or corrupt PNG: chunk IDAT at byte 33 claims 3,758,096,384")
        assert peak_bytes(result) < 20 * MB  # OpenCV allocated 3.7 GB for it before the chunk walk


def test_a_16_bit_rgba_png_just_under_the_pixel_cap_is_decided_within_the_budget(written):
    at_cap = measure_decode(written("rgba16-cap.png", big_png(6320, 6320, 6, 16)), "rgb", str(config.ROOT))
    assert at_cap["outcome"].startswith("too large to decode: this 6320x6320 16-bit PNG with transparency needs")
    assert peak_bytes(at_cap) < 20 * MB  # refused from its header: 1.8-2.6 GB before
    for call in ("rgb", "preview", "original"):  # 14.7 MP still fits the budget, and decodes within it
        result = measure_decode(written("rgba16.png", big_png(3840, 3840, 6, 16)), call, str(config.ROOT))
        assert result["outcome"] == "decoded", result
        assert peak_bytes(result) < DECODE_LIMIT, result


def test_a_gif_whose_logical_screen_was_edited_up_to_the_cap_is_decided_within_the_budget(written):
    path = written("screen.gif", gif_with_screen(6320, 6320))
    gray, rgb = (measure_decode(path, call, str(config.ROOT)) for call in ("gray", "rgb"))
    assert gray["outcome"] == "decoded" and gray["shape"] == [80, 80, 1]
    assert rgb["outcome"].startswith("too large to decode: this 6320x6320 GIF needs")
    assert max(peak_bytes(gray), peak_bytes(rgb)) < DECODE_LIMIT
    over = measure_decode(written("over.gif", gif_with_screen(65_535, 65_535)), "gray", str(config.ROOT))
    assert over["outcome"].startswith("too many pixels: 65535x65535 logical screen")


# The CLI runs as its small measuring wrapper's only child, so RUSAGE_CHILDREN is the CLI's own peak (a child's
# ru_maxrss starts from its parent's high-water mark, so the wrapper, not pytest, must be that parent).
_PEAK_OF_CHILD = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak": peak}))
"""


def test_predict_on_a_zip_of_hostile_files_stays_under_1_5_gb(tmp_path):
    entries = {f"huge-idat-{i}.png": huge_idat_png() for i in range(4)}
    entries |= {f"rgb-39.9MP-{i}.png": big_png(6320, 6320) for i in range(3)}
    entries |= {"rgba16-39.9MP.png": big_png(6320, 6320, 6, 16), "rgba16-14.7MP.png": big_png(3840, 3840, 6, 16)}
    entries |= {"gif-screen.gif": gif_with_screen(6320, 6320)}
    zpath = tmp_path / "hostile.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    command = [sys.executable, "-m", "core", "predict", str(zpath), "--model", str(config.DEFAULT_MODEL)]
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, *command], cwd=config.ROOT, capture_output=True, text=True, timeout=600
    )
    result = json.loads(proc.stdout)
    assert result["returncode"] == 0, result["stderr"]
    rows = {Path(row["file"]).name: row for row in csv.DictReader(io.StringIO(result["stdout"]))}
    assert set(rows) == set(entries)
    assert all(rows[f"huge-idat-{i}.png"]["error"].startswith("truncated or corrupt PNG") for i in range(4))
    assert rows["rgba16-39.9MP.png"]["error"].startswith("too large to decode")
    assert all(rows[f"rgb-39.9MP-{i}.png"]["label"] in ("cat", "dog") for i in range(3))
    assert rows["rgba16-14.7MP.png"]["label"] in ("cat", "dog")
    assert result["peak"] < PREDICT_LIMIT, result["peak"] / MB
