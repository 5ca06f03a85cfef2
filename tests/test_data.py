"""Dataset ingest: folders and zips read in place, a manifest, hostile zips refused, and a cached parallel load."""

from __future__ import annotations

import io
import os
import shutil
import struct
import threading
import tracemalloc
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_jpeg

from core import config
from core.data import (
    MANIFEST_COLUMNS,
    OK,
    DatasetError,
    Input,
    Source,
    dataset_version,
    iter_inputs,
    label_from_name,
    load_dataset,
    scan,
    summarize,
)
from core.pipeline import ImageError, PipelineConfig, decode


def image(ext: str = ".jpg", seed: int = 0, width: int = 120, height: int = 90) -> bytes:
    """Real image bytes in the format the extension names, drawn by make_jpeg's scene."""
    pixels = cv2.imdecode(np.frombuffer(make_jpeg(width, height, seed), np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".jpg" if ext.lower() in (".jpg", ".jpeg") else ext.lower(), pixels)
    assert ok
    return buf.tobytes()


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name) if name.endswith("/") else name, data)
    return path


def labels_of(manifest: pd.DataFrame) -> dict[str, int | None]:
    return {row.name: (None if pd.isna(row.label) else int(row.label)) for row in manifest.itertuples()}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --- labels and layouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, label",
    [
        ("train/cat.123.jpg", 0),
        ("train/dog.9.jpg", 1),
        ("Dog.11001.JPG", 1),
        ("CAT.5.jpeg", 0),
        ("cats_001.png", 0),
        ("dog_2.webp", 1),
        ("PetImages/Cat/1.jpg", 0),
        ("PetImages/Dog/1.jpg", 1),
        ("cats_and_dogs_filtered/train/cats/cat.1.jpg", 0),
        ("cats_and_dogs_filtered/validation/dogs/dog.2000.jpg", 1),
        ("data/Cats/x.jpg", 0),
        ("test1/123.jpg", None),
        ("12345.jpg", None),
        ("catalog.jpg", None),
        ("dogma/hotdog.jpg", None),
    ],
)
def test_label_comes_from_the_kaggle_file_name_or_a_class_folder(name, label):
    assert label_from_name(name) == label


LAYOUTS = {
    "kaggle-names": {
        "train/cat.1.jpg": 0,
        "train/DOG.2.JPG": 1,
        "train/Cat.3.jpeg": 0,
        "train/dog.4.png": 1,
        "train/CAT.5.BMP": 0,
        "train/dog.6.webp": 1,
    },
    "cats-dogs-folders": {"cats/001.jpg": 0, "cats/002.png": 0, "dogs/001.jpg": 1, "dogs/img.webp": 1},
    "Cat-Dog-folders": {"Cat/a.jpg": 0, "Cat/b.bmp": 0, "Dog/a.jpg": 1},
    "PetImages": {
        "PetImages/Cat/0.jpg": 0,
        "PetImages/Cat/1.jpg": 0,
        "PetImages/Dog/0.jpg": 1,
        "PetImages/Dog/7.jpg": 1,
    },
    "cats_and_dogs_filtered": {
        "cats_and_dogs_filtered/train/cats/cat.1.jpg": 0,
        "cats_and_dogs_filtered/train/dogs/dog.1.jpg": 1,
        "cats_and_dogs_filtered/validation/cats/cat.2000.jpg": 0,
        "cats_and_dogs_filtered/validation/dogs/dog.2000.jpg": 1,
    },
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_every_supported_layout_is_read_in_place_with_labels(tmp_path, layout, as_zip):
    expected = LAYOUTS[layout]
    files = {name: image(Path(name).suffix, seed=i) for i, name in enumerate(expected)}
    source = write_zip(tmp_path / "data.zip", files) if as_zip else write_folder(tmp_path / "data", files)

    manifest = scan(source)
    assert labels_of(manifest) == expected
    assert (manifest.status == OK).all()

    dataset = load_dataset(source, cache_dir=False)
    assert dict(zip(dataset.names, dataset.y.tolist(), strict=True)) == expected
    assert dataset.x.shape == (len(expected), 80, 80, 1)
    if as_zip:
        assert files_under(tmp_path) == {"data.zip"}  # read in place: nothing extracted


def test_a_single_image_file_is_a_source_too(tmp_path):
    path = tmp_path / "dog.7.jpg"
    path.write_bytes(image())
    assert labels_of(scan(path)) == {"dog.7.jpg": 1}


def test_manifest_has_one_row_per_file_with_size_bytes_and_status(tmp_path):
    files = {"cat.1.jpg": image(width=120, height=90), "dog.2.png": image(".png", width=64, height=48)}
    files["dog.3.jpg"] = b"not really a jpeg"
    source = write_folder(tmp_path / "photos", files)
    manifest = scan(source).set_index("name")

    assert list(scan(source).columns) == MANIFEST_COLUMNS
    assert (manifest.source == "photos").all()
    assert manifest.loc["cat.1.jpg", ["width", "height"]].tolist() == [120, 90]
    assert manifest.loc["dog.2.png", ["width", "height"]].tolist() == [64, 48]
    assert manifest.loc["dog.2.png", "bytes"] == len(files["dog.2.png"])
    assert manifest.loc["dog.3.jpg", "status"].startswith("not an image")
    assert pd.isna(manifest.loc["dog.3.jpg", "width"])
    for column in ("label", "width", "height"):
        assert str(manifest[column].dtype) == "Int64"


def test_summary_counts_classes_unlabeled_and_skipped(tmp_path):
    files = {"cat.1.jpg": image(), "cat.2.jpg": image(seed=1), "dog.1.jpg": image(seed=2), "42.jpg": image(seed=3)}
    files["cat.3.jpg"] = b""
    counts = summarize(scan(write_folder(tmp_path / "d", files)))
    assert counts == {"cats": 2, "dogs": 1, "unlabeled": 1, "skipped": 1, "total": 5}


# --- junk, unlabeled and unsafe entries ----------------------------------------------------------------------

JUNK = {
    "__MACOSX/train/._cat.1.jpg": b"\x00\x05\x16\x07AppleDouble",
    "train/.DS_Store": b"\x00\x00\x00\x01Bud1",
    "train/._dog.2.jpg": b"\x00\x05\x16\x07",
    "train/.hidden/cat.9.jpg": image(seed=9),
    "train/Thumbs.db": b"\xd0\xcf\x11\xe0",
    "train/desktop.ini": b"[.ShellClassInfo]",
}


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_os_junk_and_directory_entries_are_ignored(tmp_path, as_zip):
    real = {"train/cat.1.jpg": image(), "train/dog.2.jpg": image(seed=1)}
    files = {**real, **JUNK}
    if as_zip:
        source = write_zip(tmp_path / "mac.zip", {"train/": b"", "__MACOSX/": b"", **files})
    else:
        source = write_folder(tmp_path / "mac", files)
    manifest = scan(source)
    assert sorted(manifest.name) == sorted(real)
    assert (manifest.status == OK).all()


def test_unlabeled_files_are_reported_and_not_used_for_training(tmp_path):
    files = {"cat.1.jpg": image(), "dog.2.jpg": image(seed=1), "12345.jpg": image(seed=2), "holiday.png": image(".png")}
    source = write_folder(tmp_path / "mixed", files)

    manifest = scan(source).set_index("name")
    assert pd.isna(manifest.loc["12345.jpg", "label"]) and manifest.loc["12345.jpg", "status"] == OK
    assert summarize(manifest.reset_index())["unlabeled"] == 2

    dataset = load_dataset(source, cache_dir=False)
    assert sorted(dataset.names) == ["cat.1.jpg", "dog.2.jpg"]
    reasons = dict(zip(dataset.skipped.name, dataset.skipped.status, strict=True))
    assert reasons["12345.jpg"].startswith("unlabeled")
    assert reasons["holiday.png"].startswith("unlabeled")


UNSAFE_NAMES = [
    "../../escaped.cat.1.jpg",
    "/abs/dog.1.jpg",
    "..\\windows.cat.2.jpg",
    "C:/drive.dog.3.jpg",
    "train/../../up.cat.4.jpg",
]


def test_zip_slip_entries_are_refused_and_nothing_is_written_anywhere(tmp_path, monkeypatch):
    files = {"train/cat.5.jpg": image(), **{name: image(seed=i) for i, name in enumerate(UNSAFE_NAMES)}}
    zpath = write_zip(tmp_path / "slip.zip", files)
    workdir = tmp_path / "a" / "b" / "c"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)

    manifest = scan(zpath).set_index("name")
    for name in UNSAFE_NAMES:
        assert manifest.loc[name, "status"] == "refused: unsafe path in zip (absolute or '..')"
    assert manifest.loc["train/cat.5.jpg", "status"] == OK
    dataset = load_dataset(zpath, cache_dir=tmp_path / "cache")
    assert dataset.names.tolist() == ["train/cat.5.jpg"]
    assert set(UNSAFE_NAMES) <= set(dataset.skipped.name)
    refused = [found.name for found in iter_inputs([zpath]) if found.refusal and found.reader is None]
    assert len(refused) == len(UNSAFE_NAMES)

    assert files_under(tmp_path) == {"slip.zip"} | {f"cache/{p.name}" for p in (tmp_path / "cache").iterdir()}
    assert not Path("/abs/dog.1.jpg").exists()


# --- zip bombs and broken zips -------------------------------------------------------------------------------


def test_an_entry_with_a_bomb_like_compression_ratio_is_refused_unread(tmp_path):
    zpath = write_zip(
        tmp_path / "ratio.zip", {"dog.1.jpg": bytes(50 * 2**20), "cat.1.jpg": image()}, zipfile.ZIP_DEFLATED
    )
    assert zpath.stat().st_size < 2**20
    tracemalloc.start()
    try:
        manifest = scan(zpath).set_index("name")
        dataset = load_dataset(zpath, cache_dir=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert manifest.loc["dog.1.jpg", "status"] == "refused: suspicious compression ratio (zip bomb)"
    assert dataset.names.tolist() == ["cat.1.jpg"]
    assert peak < 8 * 2**20  # the 50 MB entry was never inflated


def test_an_entry_over_the_per_file_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 100_000)
    big = image(width=900, height=700, seed=4) + bytes(100_000)  # a real JPEG with trailing padding
    zpath = write_zip(tmp_path / "big.zip", {"cat.1.jpg": big, "dog.1.jpg": image()})
    folder = write_folder(tmp_path / "big", {"cat.1.jpg": big, "dog.1.jpg": image()})
    for source in (zpath, folder):
        manifest = scan(source).set_index("name")
        assert "per-file cap" in manifest.loc["cat.1.jpg", "status"]
        assert manifest.loc["dog.1.jpg", "status"] == OK


def test_a_zip_over_the_total_size_cap_is_refused_as_a_zip_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "MAX_ZIP_TOTAL_BYTES", 200_000)
    rng = np.random.default_rng(0)
    files = {f"cat.{i}.jpg": rng.integers(0, 256, 90_000, dtype=np.uint8).tobytes() for i in range(3)}
    zpath = write_zip(tmp_path / "total.zip", files)
    for load in (scan, load_dataset, Source):
        with pytest.raises(DatasetError, match="zip bomb"):
            load(zpath)
    assert files_under(tmp_path) == {"total.zip"}


def test_an_entry_that_lies_about_its_size_cannot_expand_past_the_cap(tmp_path, monkeypatch):
    # Declares 1,000 bytes but inflates to 40 MB: zipfile stops at the declared size, and the read is capped.
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 2**20)
    zpath = write_zip(tmp_path / "liar.zip", {"dog.1.jpg": bytes(40 * 2**20)}, zipfile.ZIP_DEFLATED)
    raw = bytearray(zpath.read_bytes())
    struct.pack_into("<I", raw, raw.index(b"PK\x03\x04") + 22, 1000)  # local header: uncompressed size
    struct.pack_into("<I", raw, raw.index(b"PK\x01\x02") + 24, 1000)  # central directory: uncompressed size
    zpath.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        status = scan(zpath).status.iloc[0]
        dataset = load_dataset(zpath, cache_dir=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status.startswith("unreadable zip entry")
    assert len(dataset) == 0 and dataset.skipped.status.iloc[0].startswith("unreadable zip entry")
    assert peak < 8 * 2**20


def test_an_encrypted_entry_is_reported_not_raised(tmp_path):
    zpath = write_zip(tmp_path / "locked.zip", {"dog.1.jpg": image(), "cat.1.jpg": image(seed=1)})
    raw = bytearray(zpath.read_bytes())
    # Mark the first entry encrypted, as a password-protected zip does (general-purpose flag bit 0).
    raw[raw.index(b"PK\x03\x04") + 6] |= 0x1
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1
    zpath.write_bytes(bytes(raw))
    manifest = scan(zpath).set_index("name")
    assert manifest.loc["dog.1.jpg", "status"].startswith("unreadable zip entry")
    assert "encrypted" in manifest.loc["dog.1.jpg", "status"]
    assert load_dataset(zpath, cache_dir=False).names.tolist() == ["cat.1.jpg"]


@pytest.mark.parametrize(
    "content",
    [b"this is not a zip", b"", b"PK\x03\x04 but then nothing"],
    ids=["text", "empty", "fake-magic"],
)
def test_a_file_that_is_not_a_zip_gets_a_clear_error(tmp_path, content):
    path = tmp_path / "dataset.zip"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="dataset.zip: not a readable zip file"):
        scan(path)
    with pytest.raises(DatasetError, match="not a readable zip file"):
        load_dataset(path)


def test_a_zip_cut_in_half_gets_a_clear_error(tmp_path, small_zip):
    half = tmp_path / "half.zip"
    half.write_bytes(small_zip.read_bytes()[: small_zip.stat().st_size // 2])
    with pytest.raises(DatasetError, match="not a readable zip file"):
        scan(half)


def test_a_missing_source_gets_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        scan(tmp_path / "nowhere.zip")


# --- the zips in ../shared/data/bad-inputs ---------------------------------------------------------------------


def test_macos_made_zip_uses_its_three_labeled_photos_ignores_junk_and_reports_the_unlabeled(bad_inputs):
    zpath = bad_inputs / "macos-made.zip"
    manifest = scan(zpath)
    assert labels_of(manifest) == {
        "train/cat.11001.jpg": 0,
        "train/Dog.11001.JPG": 1,
        "train/nested/cat.11002.jpeg": 0,
        "train/12345.jpg": None,
    }
    assert (manifest.status == OK).all()
    assert summarize(manifest) == {"cats": 2, "dogs": 1, "unlabeled": 1, "skipped": 0, "total": 4}

    dataset = load_dataset(zpath, cache_dir=False)
    assert dict(zip(dataset.names, dataset.y.tolist(), strict=True)) == {
        "train/cat.11001.jpg": 0,
        "train/Dog.11001.JPG": 1,
        "train/nested/cat.11002.jpeg": 0,
    }
    assert dataset.skipped.values.tolist() == [["train/12345.jpg", "unlabeled: not used for training"]]


def test_class_folders_zip_labels_from_folders_and_reports_the_corrupt_file(bad_inputs):
    zpath = bad_inputs / "class-folders.zip"
    manifest = scan(zpath).set_index("name")
    assert manifest.loc["PetImages/Dog/666.jpg", "status"].startswith("not an image")
    ok = manifest[manifest.status == OK]
    assert ok.label.to_dict() == {
        "PetImages/Cat/1.jpg": 0,
        "PetImages/Cat/2.jpg": 0,
        "PetImages/Dog/1.jpg": 1,
        "PetImages/Dog/2.jpg": 1,
    }
    dataset = load_dataset(zpath, cache_dir=False)
    assert sorted(dataset.y.tolist()) == [0, 0, 1, 1]
    assert dataset.skipped.name.tolist() == ["PetImages/Dog/666.jpg"]


def test_zip_slip_zip_refuses_its_escaping_entries_and_writes_nothing(bad_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    zpath = bad_inputs / "zip-slip.zip"
    manifest = scan(zpath).set_index("name")
    assert manifest.loc["../../escaped.cat.1.jpg", "status"].startswith("refused: unsafe path")
    assert manifest.loc["/abs/dog.1.jpg", "status"].startswith("refused: unsafe path")
    assert manifest.loc["train/cat.11001.jpg", "status"] == OK
    dataset = load_dataset(zpath, cache_dir=tmp_path / "cache")
    assert dataset.names.tolist() == ["train/cat.11001.jpg"]
    assert {p.name for p in tmp_path.rglob("*") if not p.is_dir()} <= {p.name for p in (tmp_path / "cache").iterdir()}
    assert not (tmp_path.parent.parent / "escaped.cat.1.jpg").exists()
    assert not Path("/abs").exists()


# --- the parallel, cached load ----------------------------------------------------------------------------------


def test_load_decodes_in_parallel_threads(small_zip, tmp_path):
    threads: set[int] = set()
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        threads.add(threading.get_ident())
        calls.append((done, total))

    dataset = load_dataset(small_zip, progress=progress, cache_dir=tmp_path)
    assert len(dataset) == 300
    assert len(threads) > 1
    assert max(done for done, _ in calls) == 300 and {total for _, total in calls} == {300}


def test_load_returns_seed_shaped_uint8_arrays_with_labels(small_zip, tmp_path):
    dataset = load_dataset(small_zip, cache_dir=tmp_path)
    assert dataset.x.shape == (300, 80, 80, 1) and dataset.x.dtype == np.uint8
    assert dataset.y.dtype == np.uint8 and dataset.y.sum() == 150
    assert [label_from_name(n) for n in dataset.names] == dataset.y.tolist()
    with zipfile.ZipFile(small_zip) as zf:
        np.testing.assert_array_equal(dataset.x[7], decode(zf.read(str(dataset.names[7]))))


def test_cache_is_npz_without_pickle_and_a_reload_comes_from_it(small_zip, tmp_path):
    # How much faster a reload is, is measured by benchmarks/pipeline.py on the full datasets.
    first = load_dataset(small_zip, cache_dir=tmp_path)
    assert not first.from_cache
    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as z:
        assert set(z.files) == {"x", "y", "names", "skipped_names", "skipped_reasons"}
        assert all(z[k].dtype != object for k in z.files)

    again = load_dataset(small_zip, cache_dir=tmp_path)
    assert again.from_cache
    np.testing.assert_array_equal(again.x, first.x)
    np.testing.assert_array_equal(again.y, first.y)
    assert again.names.tolist() == first.names.tolist()
    assert again.fingerprint == first.fingerprint


def test_cache_goes_to_the_configured_cache_folder_by_default(small_zip, tmp_path, monkeypatch):
    from core import config

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "data" / "cache")  # looked up at call time
    dataset = load_dataset(small_zip, limit=20)
    (cached,) = (tmp_path / "data" / "cache").iterdir()
    assert cached.suffix == ".npz" and cached.name.startswith(dataset.fingerprint)


def test_cache_key_changes_with_pipeline_settings(small_zip, tmp_path):
    load_dataset(small_zip, cache_dir=tmp_path)
    other = load_dataset(small_zip, PipelineConfig(64, "rgb"), cache_dir=tmp_path)
    assert not other.from_cache and other.x.shape == (300, 64, 64, 3)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert load_dataset(small_zip, PipelineConfig(64, "rgb"), cache_dir=tmp_path).from_cache


def test_cache_key_changes_with_dataset_content(tmp_path):
    files = {"cat.1.jpg": image(), "dog.1.jpg": image(seed=1)}
    zpath = write_zip(tmp_path / "d.zip", files)
    first = load_dataset(zpath, cache_dir=tmp_path / "cache")
    write_zip(zpath, {**files, "dog.1.jpg": image(seed=2)})  # same names and roughly the same size
    changed = load_dataset(zpath, cache_dir=tmp_path / "cache")
    assert changed.fingerprint != first.fingerprint and not changed.from_cache
    assert not np.array_equal(changed.x[1], first.x[1])

    folder = write_folder(tmp_path / "f", files)
    before = load_dataset(folder, cache_dir=tmp_path / "cache")
    changed_file = folder / "dog.1.jpg"
    old_mtime = changed_file.stat().st_mtime_ns
    changed_file.write_bytes(image(seed=3))
    os.utime(changed_file, ns=(old_mtime, old_mtime + 10**9))  # a later write, whatever the clock's resolution
    after = load_dataset(folder, cache_dir=tmp_path / "cache")
    assert after.fingerprint != before.fingerprint and not after.from_cache


def test_cache_is_keyed_by_content_not_by_path(small_zip, tmp_path):
    load_dataset(small_zip, limit=30, cache_dir=tmp_path / "cache")
    copy = shutil.copy(small_zip, tmp_path / "renamed.zip")
    assert load_dataset(copy, limit=30, cache_dir=tmp_path / "cache").from_cache


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-arrays", "npy-not-npz"])
def test_a_corrupted_cache_file_is_rebuilt(small_zip, tmp_path, damage):
    first = load_dataset(small_zip, limit=40, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.npz")
    if damage == "garbage":
        cached.write_bytes(b"\x93NUMPY garbage" * 100)
    elif damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:1000])
    elif damage == "wrong-arrays":
        np.savez(cached.with_suffix(""), x=np.zeros(3))  # a valid npz without the arrays we need
    else:
        with open(cached, "wb") as fh:
            np.save(fh, np.zeros(3))  # a valid .npy array, not an archive
    rebuilt = load_dataset(small_zip, limit=40, cache_dir=tmp_path)
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.x, first.x)
    assert load_dataset(small_zip, limit=40, cache_dir=tmp_path).from_cache
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temp files left behind


def test_cache_can_be_turned_off(small_zip, tmp_path, monkeypatch):
    from core import config

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    load_dataset(small_zip, limit=10, cache_dir=False)
    assert not (tmp_path / "cache").exists()


def test_limit_takes_a_balanced_slice_that_is_the_same_for_the_same_seed(small_zip, tmp_path):
    a = load_dataset(small_zip, limit=41, seed=1, cache_dir=tmp_path)
    b = load_dataset(small_zip, limit=41, seed=1, cache_dir=False)
    c = load_dataset(small_zip, limit=41, seed=2, cache_dir=False)
    assert len(a) == 41 and sorted(np.bincount(a.y).tolist()) == [20, 21]
    assert a.names.tolist() == b.names.tolist()
    assert a.names.tolist() != c.names.tolist()


def test_concurrent_loads_of_one_dataset_agree_and_leave_one_valid_cache(small_zip, tmp_path):
    results: list = [None] * 3

    def load(i: int) -> None:
        results[i] = load_dataset(small_zip, limit=60, cache_dir=tmp_path)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results[1:]:
        np.testing.assert_array_equal(r.x, results[0].x)
    assert len(os.listdir(tmp_path)) == 1
    assert load_dataset(small_zip, limit=60, cache_dir=tmp_path).from_cache


# --- sources for prediction -----------------------------------------------------------------------------------


def test_iter_inputs_walks_files_folders_and_zips_with_refusals(tmp_path):
    single = tmp_path / "one.jpg"
    single.write_bytes(image())
    folder = write_folder(tmp_path / "folder", {"a.png": image(".png"), "notes.txt": b"hi", ".DS_Store": b"x"})
    zpath = write_zip(tmp_path / "z.zip", {"test1/1.jpg": image(), "../evil.jpg": image()})
    rows = list(iter_inputs([single, folder, zpath, tmp_path / "missing.jpg"]))
    shown = [found.name for found in rows]
    assert shown == [
        str(single),
        f"{folder}/a.png",
        f"{folder}/notes.txt",
        f"{zpath}/test1/1.jpg",
        f"{zpath}/../evil.jpg",
        str(tmp_path / "missing.jpg"),
    ]
    readable = {found.name: found for found in rows if found.refusal is None}
    assert readable[str(single)].read() == single.read_bytes()
    assert readable[f"{zpath}/test1/1.jpg"].read() == image()
    refusals = {found.name: found.refusal for found in rows if found.refusal}
    assert refusals[f"{folder}/notes.txt"] == "skipped: not an image file type"
    assert refusals[f"{zpath}/../evil.jpg"].startswith("refused: unsafe path")
    assert "no such file or folder" in refusals[str(tmp_path / "missing.jpg")]


# --- entries read by position, never looked up by name ------------------------------------------------------------


def write_zip_entries(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """A zip whose entries may repeat a name, as zipfile (with a warning) and hand-made zips allow."""
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning: that is the point here
        for name, data in entries:
            zf.writestr(name, data)
    return path


def test_a_duplicated_name_never_shadows_the_first_entry_and_counts_once(tmp_path):
    cat, dog = image(seed=1), image(seed=2)
    zpath = write_zip_entries(
        tmp_path / "dupes.zip",
        [
            ("cat.1.jpg", cat),
            ("cat.1.jpg", b"not an image"),
            ("dog.1.jpg", dog),
            ("dog.1.jpg", dog),
            ("dog.2.jpg", dog),
        ],
    )
    manifest = scan(zpath)
    assert manifest.name.tolist() == ["cat.1.jpg", "cat.1.jpg", "dog.1.jpg", "dog.1.jpg", "dog.2.jpg"]
    assert manifest.status.tolist() == [
        OK,
        "refused: duplicate name in zip (entry 2 of 2 named cat.1.jpg)",
        OK,
        "refused: duplicate name in zip (entry 2 of 2 named dog.1.jpg)",
        OK,
    ]
    assert summarize(manifest) == {"cats": 1, "dogs": 2, "unlabeled": 0, "skipped": 2, "total": 5}

    dataset = load_dataset(zpath, cache_dir=False)
    assert dataset.names.tolist() == ["cat.1.jpg", "dog.1.jpg", "dog.2.jpg"]
    np.testing.assert_array_equal(dataset.x[0], decode(cat))  # the first entry's pixels, not the second's
    assert dataset.skipped.status.str.startswith("refused: duplicate name").sum() == 2

    rows = list(iter_inputs([zpath]))
    assert [found.refusal for found in rows].count(None) == 3
    assert rows[0].read() == cat


def test_paths_that_extract_to_one_file_are_duplicates_too(tmp_path):
    zpath = write_zip_entries(tmp_path / "paths.zip", [("train/cat.1.jpg", image()), ("train//./cat.1.jpg", image())])
    assert scan(zpath).status.tolist() == [OK, "refused: duplicate name in zip (entry 2 of 2 named train//./cat.1.jpg)"]


def test_read_by_name_reads_the_entry_that_counts_and_refuses_what_is_not_listed(tmp_path):
    cat = image(seed=1)
    zpath = write_zip_entries(tmp_path / "dupes.zip", [("cat.1.jpg", cat), ("cat.1.jpg", b"junk"), ("../x.jpg", cat)])
    source = Source(zpath)
    assert source.read("cat.1.jpg") == cat
    assert [source.read_item(item) for item in source.listing[:2]] == [cat, b"junk"]
    with pytest.raises(ImageError, match="refused: unsafe path"):
        source.read("../x.jpg")
    with pytest.raises(ImageError, match="not in dupes.zip: dog.9.jpg"):
        source.read("dog.9.jpg")
    folder = write_folder(tmp_path / "photos", {"cat.1.jpg": cat})
    with pytest.raises(ImageError, match="not in photos: ../dupes.zip"):
        Source(folder).read("../dupes.zip")


def test_a_zip_replaced_after_listing_is_never_read_as_the_old_one(tmp_path):
    zpath = write_zip(tmp_path / "data.zip", {"cat.1.jpg": image(seed=1), "dog.1.jpg": image(seed=2)})
    source = Source(zpath)
    write_zip(tmp_path / "data.zip", {"dog.1.jpg": image(seed=3), "cat.1.jpg": image(seed=4)})
    with pytest.raises(ImageError, match="unreadable zip entry: the zip changed since it was listed"):
        source.read_item(source.listing[0])


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("deflate", "unreadable zip entry: its compressed data is corrupt"),
        ("crc", "unreadable zip entry: its data fails its CRC-32 check"),
        ("method", "unreadable zip entry: its compression method (99) is not supported"),
        ("header", "unreadable zip entry: its header is damaged"),
    ],
)
def test_a_damaged_entry_gets_a_plain_reason_and_the_others_still_load(tmp_path, damage, reason):
    zpath = write_zip(tmp_path / "d.zip", {"dog.1.jpg": image(width=300, height=200), "cat.1.jpg": image(seed=1)}, 8)
    raw = bytearray(zpath.read_bytes())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    data_at = local + 30 + struct.unpack_from("<H", raw, local + 26)[0]
    if damage == "deflate":
        raw[data_at : data_at + 8] = b"\xff" * 8  # an invalid deflate block type
    elif damage == "crc":
        struct.pack_into("<I", raw, central + 16, 12345)
    elif damage == "method":
        struct.pack_into("<H", raw, local + 8, 99)
        struct.pack_into("<H", raw, central + 10, 99)
    else:
        raw[local : local + 4] = b"XXXX"
    zpath.write_bytes(bytes(raw))
    manifest = scan(zpath).set_index("name")
    assert manifest.loc["dog.1.jpg", "status"] == reason
    assert manifest.loc["cat.1.jpg", "status"] == OK
    assert load_dataset(zpath, cache_dir=False).names.tolist() == ["cat.1.jpg"]


def test_no_reason_shows_a_python_repr(tmp_path, bad_inputs):
    import re

    files = {f"cat.{i}.jpg": data for i, data in enumerate([b"", b"GIF89a" + bytes(20), b"\x89PNG\r\n\x1a\n", b"BM"])}
    folder = write_folder(tmp_path / "bad", files)
    reasons = [*scan(folder).status, *scan(bad_inputs / "class-folders.zip").status]
    reasons += [found.refusal for found in iter_inputs([bad_inputs / "zip-slip.zip", tmp_path / "nope.zip"])]
    for reason in filter(None, reasons):
        assert not re.search(r"<\w[^>]* at 0x|object at|b'|\\x[0-9a-f]{2}|Traceback|Error\(", reason), reason


# --- zips held in memory (uploads) ------------------------------------------------------------------------------


class Uploaded(io.BytesIO):
    """An upload as Streamlit hands it over: a BytesIO over the bytes, with the name it was dropped as."""

    def __init__(self, name: str, data: bytes):
        super().__init__(data)
        self.name = name


def hostile_zips(tmp_path: Path, bad_inputs: Path) -> list[Path]:
    """Real zips that trip every per-entry guard: unsafe paths, duplicates, a bomb-like ratio, the per-file cap,
    damaged and encrypted entries, junk, class folders."""
    ratio = write_zip(tmp_path / "ratio.zip", {"dog.1.jpg": bytes(3 * 2**20), "cat.1.jpg": image()}, 8)
    dupes = write_zip_entries(
        tmp_path / "dupes.zip", [("cat.1.jpg", image()), ("cat.1.jpg", b"x"), ("a//cat.1.jpg", b"")]
    )
    big = write_zip(tmp_path / "big.zip", {"cat.1.jpg": image() + bytes(5 * 2**20), "notes.txt": b"hi"})
    damaged = write_zip(tmp_path / "damaged.zip", {"dog.1.jpg": image(width=300, height=200), "cat.1.jpg": image()}, 8)
    raw = bytearray(damaged.read_bytes())
    local = raw.index(b"PK\x03\x04")
    data_at = local + 30 + struct.unpack_from("<H", raw, local + 26)[0]
    raw[data_at : data_at + 8] = b"\xff" * 8
    raw[raw.index(b"PK\x03\x04", data_at) + 6] |= 0x1  # the second entry marked encrypted
    raw[raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4) + 8] |= 0x1
    damaged.write_bytes(bytes(raw))
    shipped = [bad_inputs / name for name in ("zip-slip.zip", "class-folders.zip", "macos-made.zip")]
    return [ratio, dupes, big, damaged, *shipped]


def test_a_zip_read_from_memory_gets_exactly_the_guards_and_reasons_of_the_same_zip_on_disk(
    tmp_path, bad_inputs, monkeypatch
):
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 4 * 2**20)
    reasons = []
    for zpath in hostile_zips(tmp_path, bad_inputs):
        on_disk, in_memory = Source(zpath), Source.from_bytes(zpath.name, zpath.read_bytes())
        assert in_memory.listing == on_disk.listing, zpath.name
        for disk_input, memory_input in zip(on_disk.inputs(), in_memory.inputs(), strict=True):
            assert (memory_input.name, memory_input.refusal) == (disk_input.name, disk_input.refusal)
            outcomes = []
            for found in (disk_input, memory_input):
                try:
                    outcomes.append(found.read())
                except ImageError as err:  # refused when listed, or a damaged or encrypted entry: its reason
                    outcomes.append(str(err))
            assert outcomes[0] == outcomes[1], (zpath.name, disk_input.name)
            reasons += [outcomes[0]] if isinstance(outcomes[0], str) else []
    guards = ["unsafe path", "duplicate name", "compression ratio", "per-file cap", "not an image file type"]
    guards += ["compressed data is corrupt", "encrypted"]
    assert [guard for guard in guards if not any(guard in reason for reason in reasons)] == []


def test_a_zip_bomb_or_a_broken_zip_in_memory_is_refused_with_the_reason_one_on_disk_gets(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "MAX_ZIP_TOTAL_BYTES", 200_000)
    rng = np.random.default_rng(0)
    bomb = write_zip(tmp_path / "total.zip", {f"cat.{i}.jpg": rng.bytes(90_000) for i in range(3)})
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"plain text, not a zip")
    for zpath in (bomb, broken):
        with pytest.raises(DatasetError) as on_disk:
            Source(zpath)
        with pytest.raises(DatasetError) as in_memory:
            Source.from_bytes(zpath.name, zpath.read_bytes())
        assert str(in_memory.value) == str(on_disk.value)
    (refused,) = iter_inputs([Uploaded("total.zip", bomb.read_bytes())])
    assert refused.reader is None and "refused as a zip bomb" in refused.refusal
    assert files_under(tmp_path) == {"total.zip", "broken.zip"}  # nothing written


def test_reading_every_entry_of_a_zip_in_memory_never_copies_the_zip(tmp_path):
    files = {f"cat.{i}.jpg": image(seed=i, width=200, height=150) for i in range(40)}
    data = write_zip(tmp_path / "photos.zip", files).read_bytes()
    upload = Uploaded("photos.zip", data)
    tracemalloc.start()
    try:
        same = [found.read() == files[found.name] for found in iter_inputs([upload])]  # each read, then let go
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert same == [True] * len(files)
    assert peak < len(data) // 2  # every entry read from the one upload buffer: no copy of it, per entry or at all


def test_iter_inputs_takes_uploads_photos_and_zips_as_one_kind_of_input(tmp_path):
    photo = image(seed=5)
    zdata = write_zip(tmp_path / "z.zip", {"test1/1.jpg": image(), "../evil.jpg": image()}).read_bytes()
    rows = list(iter_inputs([Uploaded("me.jpg", photo), Uploaded("z.zip", zdata), tmp_path / "z.zip"]))
    assert all(isinstance(found, Input) for found in rows)
    assert [found.name for found in rows] == [
        "me.jpg",
        "test1/1.jpg",
        "../evil.jpg",
        f"{tmp_path / 'z.zip'}/test1/1.jpg",
        f"{tmp_path / 'z.zip'}/../evil.jpg",
    ]
    assert rows[0].read() == photo and rows[1].read() == image() == rows[3].read()
    assert rows[2].refusal == rows[4].refusal == "refused: unsafe path in zip (absolute or '..')"
    with pytest.raises(ImageError, match="unsafe path"):
        rows[2].read()
    (refused,) = iter_inputs([Uploaded("z.zip", zdata)], zip_refusal="a zip: not here")
    assert (refused.name, refused.reader, refused.refusal) == ("z.zip", None, "a zip: not here")


# --- one version of a dataset -------------------------------------------------------------------------------------


def stored_png(seed: int) -> bytes:
    """A real PNG whose size depends only on its dimensions (no compression), so two seeds give equal sizes."""
    pixels = cv2.imdecode(np.frombuffer(make_jpeg(64, 48, seed), np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert ok
    return buf.tobytes()


def test_a_zip_rewritten_in_place_is_a_new_version_for_the_listing_the_npz_cache_and_the_scans(tmp_path):
    from core.jobs import DatasetScans

    zpath = tmp_path / "data.zip"
    write_zip(zpath, {"cat.1.png": stored_png(1), "dog.1.png": stored_png(2)})
    stat = zpath.stat()
    scans = DatasetScans()
    versions = [dataset_version(zpath)]
    listings = [Source(zpath).listing]
    loads = [load_dataset(zpath, cache_dir=tmp_path / "cache")]
    manifests = [scans.get(zpath)]
    assert manifests[0].wait(60)  # the scan reads the zip in a thread: done before the zip is rewritten
    # Rewritten in place twice: once to another size with the old mtime, once to the same size with a later one.
    rewrites = [
        ({"cat.1.png": stored_png(1), "dog.1.png": stored_png(2), "dog.2.png": stored_png(3)}, stat.st_mtime_ns),
        (
            {"cat.1.png": stored_png(4), "dog.1.png": stored_png(5), "dog.2.png": stored_png(6)},
            stat.st_mtime_ns + 10**9,
        ),
    ]
    for files, mtime_ns in rewrites:
        write_zip(zpath, files)
        os.utime(zpath, ns=(mtime_ns, mtime_ns))
        versions.append(dataset_version(zpath))
        listings.append(Source(zpath).listing)
        loads.append(load_dataset(zpath, cache_dir=tmp_path / "cache"))
        manifests.append(scans.get(zpath))
        assert manifests[-1].wait(60)
    assert zpath.stat().st_size == tmp_path.joinpath("data.zip").stat().st_size
    assert len(set(versions)) == 3
    assert [len(listing) for listing in listings] == [2, 3, 3] and listings[1] != listings[2]
    assert [loaded.from_cache for loaded in loads] == [False, False, False]
    assert len({loaded.fingerprint for loaded in loads}) == 3
    assert not np.array_equal(loads[1].x, loads[2].x)
    assert len({id(state) for state in manifests}) == 3
    for state, listing in zip(manifests, listings, strict=True):
        assert state.error is None
        assert state.manifest.name.tolist() == [item.name for item in listing]
    assert load_dataset(zpath, cache_dir=tmp_path / "cache").from_cache  # the same version again: a cache hit
    assert scans.get(zpath) is manifests[-1] and dataset_version(zpath) == versions[-1]


def test_a_folder_is_a_new_version_when_a_file_deep_inside_it_is_rewritten(tmp_path):
    folder = write_folder(tmp_path / "photos", {"cats/cat.1.jpg": image(), "dogs/deep/dog.1.jpg": image(seed=1)})
    before = dataset_version(folder)
    deep = folder / "dogs" / "deep" / "dog.1.jpg"
    mtime = deep.stat().st_mtime_ns
    deep.write_bytes(image(seed=2))
    os.utime(deep, ns=(mtime + 10**9, mtime + 10**9))
    assert dataset_version(folder) != before
    assert dataset_version(folder) == dataset_version(folder)
