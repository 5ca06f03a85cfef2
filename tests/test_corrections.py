"""Corrections files and the "my photos" store: round trips, atomic writes, refusals, and reading as a dataset."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_jpeg

from core import config
from core.corrections import (
    Corrections,
    CorrectionsError,
    MyPhotos,
    corrections_path,
    load_corrections,
    read_corrections,
    record,
    save_corrections,
)
from core.data import Source, label_from_name, load_dataset
from core.pipeline import ImageError


@pytest.fixture
def dataset(small_zip):
    """The 300-photo real dataset, its fingerprint, names and labels."""
    loaded = load_dataset(small_zip, cache_dir=False)
    return loaded.fingerprint, loaded.names, loaded.y


def test_corrections_round_trip_and_apply(dataset, tmp_path):
    fingerprint, names, labels = dataset
    cat, dog, other = names[labels == 0][0], names[labels == 1][0], names[labels == 0][1]
    corrections = Corrections(fingerprint, "small-train.zip")
    corrections.set(cat, "dog", given="cat")  # relabel a cat as a dog
    corrections.set(dog, "exclude", given="dog")  # neither
    corrections.set(other, "keep", given="cat")  # its label is right
    corrections.set("train/cat.99999.jpg", "exclude")  # a photo the dataset does not have: ignored
    path = save_corrections(corrections, tmp_path)
    assert path == tmp_path / f"{fingerprint}.json" == corrections_path(fingerprint, tmp_path)

    reloaded = load_corrections(fingerprint, tmp_path)
    assert reloaded.photos.keys() == corrections.photos.keys()
    assert reloaded.action(cat) == "dog" and reloaded.photos[cat].given == "cat"
    kept_names, kept_labels, excluded = reloaded.apply(names, labels, fingerprint)
    by_name = dict(zip(kept_names, kept_labels, strict=True))
    assert by_name[cat] == 1  # trains as a dog now
    assert dog not in by_name and excluded == [dog]
    assert by_name[other] == 0
    assert len(kept_names) == len(names) - 1
    unchanged = [n for n in names if n not in (cat, dog)]
    assert all(by_name[n] == labels[list(names).index(n)] for n in unchanged)
    assert reloaded.relabelled([cat, dog, other]).tolist() == [True, False, False]


def test_the_file_is_readable_json_written_atomically(dataset, tmp_path):
    fingerprint, names, _ = dataset
    corrections = Corrections(fingerprint, "small-train.zip")
    corrections.set(names[0], "exclude")
    path = save_corrections(corrections, tmp_path)
    data = json.loads(path.read_text())
    assert data["dataset"] == {"fingerprint": fingerprint, "source": "small-train.zip"}
    assert data["photos"][names[0]]["action"] == "exclude"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left beside it


def test_a_save_that_fails_halfway_leaves_the_old_file_whole(dataset, tmp_path, monkeypatch):
    fingerprint, names, _ = dataset
    corrections = Corrections(fingerprint)
    corrections.set(names[0], "exclude")
    path = save_corrections(corrections, tmp_path)
    before = path.read_bytes()

    def disk_full(self, data):  # the disk fills up after half the bytes
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    corrections.set(names[1], "dog")
    with pytest.raises(OSError):
        save_corrections(corrections, tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the half-written temp file is gone


def test_corrections_for_another_dataset_are_not_applied(dataset, tmp_path, train_zip):
    fingerprint, names, labels = dataset
    corrections = Corrections(fingerprint)
    corrections.set(names[0], "exclude")
    other = Source(train_zip).fingerprint()
    with pytest.raises(CorrectionsError, match="made for another dataset"):
        corrections.apply(names, labels, other)
    # A file copied onto another dataset's name is refused, not applied.
    path = save_corrections(corrections, tmp_path)
    path.rename(corrections_path(other, tmp_path))
    with pytest.raises(CorrectionsError, match="another dataset"):
        load_corrections(other, tmp_path)


def test_a_dataset_without_corrections_has_none(dataset, tmp_path):
    fingerprint, names, labels = dataset
    empty = load_corrections(fingerprint, tmp_path)
    assert empty.photos == {}
    kept_names, kept_labels, excluded = empty.apply(names, labels, fingerprint)
    assert kept_names.tolist() == list(names) and kept_labels.tolist() == labels.tolist() and excluded == []
    assert not any(tmp_path.iterdir())  # loading writes nothing


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something else"}', "not a corrections file"),
        ("[1, 2]", "not a corrections file"),
        (
            '{"format": "cats-vs-dogs-studio corrections", "version": 1, "dataset": {"fingerprint": "abcdef12"},'
            ' "photos": {"a.jpg": {"action": "burn"}}}',
            "unknown action",
        ),
        (
            '{"format": "cats-vs-dogs-studio corrections", "version": 1, "dataset": {}, "photos": {}}',
            "malformed",
        ),
    ],
)
def test_a_broken_file_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "mine.json"
    path.write_text(content)
    with pytest.raises(CorrectionsError, match=message) as err:
        read_corrections(path)
    assert str(err.value).startswith("mine.json: ")
    assert "Traceback" not in str(err.value) and "{'" not in str(err.value)


def test_actions_and_fingerprints_are_checked(tmp_path):
    corrections = Corrections("abcdef12")
    with pytest.raises(CorrectionsError, match="unknown action"):
        corrections.set("train/cat.1.jpg", "delete")
    with pytest.raises(CorrectionsError, match="fingerprint"):
        corrections_path("../../etc/passwd", tmp_path)
    with pytest.raises(CorrectionsError, match="fingerprint"):
        Corrections("not hex!")


def test_digest_follows_what_training_uses(dataset):
    fingerprint, names, _ = dataset
    a, b = Corrections(fingerprint), Corrections(fingerprint)
    a.set(names[0], "dog")
    a.set(names[1], "exclude")
    b.set(names[1], "exclude")
    b.set(names[0], "dog")
    b.set(names[2], "keep")  # reviewed as right: trains as before
    assert a.digest() == b.digest()
    b.set(names[2], "exclude")
    assert a.digest() != b.digest()
    assert b.summary() == {
        "dataset_fingerprint": fingerprint,
        "fingerprint": b.digest(),
        "relabelled": 1,
        "excluded": 2,
        "reviewed": 0,
    }


def test_concurrent_clicks_are_all_kept(dataset, tmp_path):
    fingerprint, names, _ = dataset
    chosen = list(names[:40])
    threads = [threading.Thread(target=record, args=(fingerprint, {n: "exclude"}, tmp_path)) for n in chosen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(load_corrections(fingerprint, tmp_path).photos) == sorted(chosen)
    record(fingerprint, {chosen[0]: None}, tmp_path)  # None removes
    assert chosen[0] not in load_corrections(fingerprint, tmp_path).photos


def test_default_folder_is_under_the_data_dir(tmp_path):
    # In a fresh process: this one's tests point both folders at a temp folder (tests/conftest.py).
    code = "from core import config; print(config.CORRECTIONS_DIR); print(config.MY_PHOTOS_DIR)"
    env = {**os.environ, "CVD_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / "corrections"), str(tmp_path / "my-photos")]
    assert config.CORRECTIONS_DIR != config.DATA_DIR / "corrections"  # never the project's own folder in a test


# "My photos".


def test_my_photos_add_list_and_prune(tmp_path):
    store = MyPhotos(tmp_path / "my-photos")
    a, b, c = make_jpeg(seed=1), make_jpeg(seed=2), make_jpeg(seed=3)
    first = store.add(a, "dog", name="uploads/IMG_1.jpg")
    assert first.sha256 == hashlib.sha256(a).hexdigest()
    assert first.path == tmp_path / "my-photos" / "dog" / f"{first.sha256}.jpg"
    assert first.path.read_bytes() == a and first.name == "IMG_1.jpg"
    store.add(b, 0)
    store.add(c, "cat")
    assert store.counts() == {"cat": 2, "dog": 1}
    assert {p.sha256 for p in store.list()} == {hashlib.sha256(x).hexdigest() for x in (a, b, c)}

    moved = store.add(a, "cat")  # the same photo, corrected again: one copy, under its new label
    assert moved.path.parent.name == "cat" and not first.path.exists()
    assert store.counts() == {"cat": 3, "dog": 0}

    assert store.prune([first.sha256, "0" * 64, "../../x"]) == 1
    assert store.get(first.sha256) is None and store.counts() == {"cat": 2, "dog": 0}
    assert MyPhotos(tmp_path / "my-photos").counts() == {"cat": 2, "dog": 0}  # it is on disk, not in memory
    assert store.clear() == 2 and store.list() == []


def test_my_photos_refuse_what_training_would_refuse(tmp_path, bad_inputs):
    store = MyPhotos(tmp_path)
    for name in ("zero-byte.jpg", "text-named.jpg", "truncated.jpg", "bomb-20000x20000.png"):
        with pytest.raises(ImageError):
            store.add((bad_inputs / name).read_bytes(), "cat")
    with pytest.raises(ValueError, match="cat or dog"):
        store.add(make_jpeg(), "horse")
    assert store.list() == []
    png = store.add((bad_inputs / "rgba.png").read_bytes(), "dog")
    assert png.path.suffix == ".png"


def test_my_photos_read_as_a_dataset(tmp_path, small_zip):
    store = MyPhotos(tmp_path / "my-photos")
    with zipfile.ZipFile(small_zip) as z:
        photos = [n for n in z.namelist() if n.endswith(".jpg")]
        cats = [z.read(n) for n in photos if "/cat." in n][:3]
        dogs = [z.read(n) for n in photos if "/dog." in n][:2]
    for data in cats:
        store.add(data, "cat")
    for data in dogs:
        store.add(data, "dog")
    source = Source(store.folder())
    assert len(source.listing) == 5  # the index file is not listed
    assert sorted(label_from_name(item.name) for item in source.listing) == [0, 0, 0, 1, 1]
    loaded = load_dataset(store.folder(), cache_dir=False)
    assert len(loaded) == 5 and loaded.skipped.empty
    assert sorted(loaded.y.tolist()) == [0, 0, 0, 1, 1]
    assert np.isin([f"cat/{hashlib.sha256(d).hexdigest()}.jpg" for d in cats], loaded.names).all()
