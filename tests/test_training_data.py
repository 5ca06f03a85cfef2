"""The data side of training: corrections applied, my photos appended, and forced photos never in validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.corrections import (
    Corrections,
    CorrectionsError,
    MyPhotos,
    corrections_from_review,
    prepare_training_data,
    split_for_training,
)
from core.data import Source, load_dataset
from core.pipeline import PipelineConfig
from core.train import split_indices

PIPELINE = PipelineConfig(32, "rgb")


@pytest.fixture(scope="module")
def base(small_zip):
    """The 300 real photos of small_zip, decoded at 32 px."""
    return load_dataset(small_zip, PIPELINE, cache_dir=False)


@pytest.fixture
def my_photos(tmp_path, train_zip, base):
    """Four real photos of train.zip that small_zip does not hold, labelled by a user, read as a dataset."""
    source = Source(train_zip)
    names = [n for n in (it.name for it in source.listing) if n not in set(base.names)]
    store = MyPhotos(tmp_path / "my-photos")
    for name in [n for n in names if "/cat." in n][:2] + [n for n in names if "/dog." in n][:2]:
        store.add(source.read(name), "cat" if "/cat." in name else "dog", name)
    return load_dataset(store.folder(), PIPELINE, cache_dir=False)


def corrections_of(base, relabel: int = 3, exclude: int = 2) -> tuple[Corrections, list[str], list[str]]:
    """Corrections relabelling some cats as dogs, excluding some dogs, and one 'label is right'."""
    cats, dogs = base.names[base.y == 0], base.names[base.y == 1]
    corrections = Corrections(base.fingerprint, base.source)
    for name in cats[:relabel]:
        corrections.set(name, "dog", "cat")
    for name in dogs[:exclude]:
        corrections.set(name, "exclude", "dog")
    corrections.set(cats[-1], "keep", "cat")
    return corrections, list(cats[:relabel]), list(dogs[:exclude])


def test_relabelled_photos_train_with_their_new_label_and_excluded_ones_not_at_all(base, my_photos):
    corrections, relabelled, excluded = corrections_of(base)
    data, forced, record = prepare_training_data(base, corrections, [my_photos])
    by_name = dict(zip(data.names, data.y, strict=True))
    assert all(by_name[name] == 1 for name in relabelled)  # cats, now dogs
    assert not set(excluded) & set(data.names)
    assert len(data) == len(base) - len(excluded) + len(my_photos)
    # Every other photo keeps its label and its pixels.
    index = {name: i for i, name in enumerate(data.names)}
    for i, name in enumerate(base.names):
        if name in index and name not in relabelled:
            assert data.y[index[name]] == base.y[i]
            assert np.array_equal(data.x[index[name]], base.x[i])
    extra = [i for i, name in enumerate(data.names) if name.startswith(f"{my_photos.fingerprint[:8]}:")]
    assert len(extra) == len(my_photos) and sorted(data.y[extra].tolist()) == [0, 0, 1, 1]
    assert set(np.flatnonzero(forced)) == {index[n] for n in relabelled} | set(extra)
    assert data.fingerprint == base.fingerprint  # the run's held-out photos are still found in its dataset
    assert record["corrections"]["applied_relabelled"] == 3 and record["corrections"]["applied_excluded"] == 2
    assert record["corrections"]["reviewed"] == 1
    assert record["extras"][0]["photos"] == 4 and record["extras"][0]["cats"] == 2
    assert record["forced_train"] == 3 + 4 and record["n_images"] == len(data)


def test_forced_photos_never_validate_and_validation_is_the_uncorrected_runs_less_them(base, my_photos):
    corrections, relabelled, excluded = corrections_of(base, relabel=40, exclude=30)
    data, forced, _ = prepare_training_data(base, corrections, [my_photos])
    train_idx, val_idx = split_for_training(base, data, forced, 0.2, seed=3)
    assert not forced[val_idx].any()
    assert sorted([*train_idx, *val_idx]) == list(range(len(data)))
    _, plain_val = split_indices(base.y, 0.2, 3)
    expected = set(base.names[plain_val]) - set(relabelled) - set(excluded)
    assert set(data.names[val_idx]) == expected
    assert set(relabelled) & set(base.names[plain_val])  # the test would show a leak: some were in validation


def test_without_corrections_the_split_is_training_s_own(base):
    data, forced, record = prepare_training_data(base)
    assert not forced.any() and "corrections" not in record and record["extras"] == []
    train_idx, val_idx = split_for_training(base, data, forced, 0.2, seed=0)
    plain_train, plain_val = split_indices(base.y, 0.2, 0)
    assert np.array_equal(train_idx, plain_train) and np.array_equal(val_idx, plain_val)


def test_the_record_s_fingerprint_follows_the_corrections_and_extras(base, my_photos):
    corrections, relabelled, _ = corrections_of(base)
    first = prepare_training_data(base, corrections)[2]["fingerprint"]
    assert prepare_training_data(base, corrections_of(base)[0])[2]["fingerprint"] == first  # same input, same print
    corrections.set(relabelled[0], "exclude", "cat")
    assert prepare_training_data(base, corrections)[2]["fingerprint"] != first
    second = prepare_training_data(base, corrections)[2]["fingerprint"]
    assert prepare_training_data(base, corrections, [my_photos])[2]["fingerprint"] not in (first, second)
    assert prepare_training_data(base)[2]["fingerprint"] != first


def test_another_dataset_s_corrections_or_photos_of_another_size_are_refused(base, my_photos, tmp_path):
    with pytest.raises(CorrectionsError, match="another dataset"):
        prepare_training_data(base, Corrections("0" * 32))
    bigger = load_dataset(tmp_path / "my-photos", PipelineConfig(48, "rgb"), cache_dir=False)
    with pytest.raises(ValueError, match="loaded at"):
        prepare_training_data(base, None, [bigger])


def test_a_review_becomes_a_corrections_file_with_the_given_labels(base):
    cat, dog = base.names[base.y == 0][0], base.names[base.y == 1][0]
    found = corrections_from_review({cat: "dog", dog: "exclude"}, base.fingerprint, base.source)
    assert found.action(cat) == "dog" and found.photos[cat].given == "cat" and found.photos[dog].given == "dog"
    with pytest.raises(CorrectionsError, match="unknown action"):
        corrections_from_review({cat: "wolf"}, base.fingerprint)


def test_the_cli_records_a_review_as_the_datasets_corrections(base, small_zip, tmp_path, capsys):
    from core.cli import main
    from core.corrections import corrections_path, load_corrections

    cat, dog = base.names[base.y == 0][0], base.names[base.y == 1][0]
    review = tmp_path / "review.json"
    review.write_text(json.dumps({cat: "dog", dog: "exclude", base.names[1]: "keep", "train/cat.1.jpg": "exclude"}))
    assert main(["corrections", str(review), str(small_zip), "--dir", str(tmp_path / "corr")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("4 verdicts of review.json recorded for small-train.zip: now 1 relabelled, 2 excluded")
    assert out[0].endswith("; 1 of them name no photo in it (applied to nothing)")
    assert out[1] == str(corrections_path(base.fingerprint, tmp_path / "corr"))
    saved = load_corrections(base.fingerprint, tmp_path / "corr")
    assert saved.action(cat) == "dog" and saved.photos[cat].given == "cat" and saved.action(dog) == "exclude"
    data, forced, _ = prepare_training_data(base, saved)  # what training gets from it
    assert dog not in set(data.names) and data.y[list(data.names).index(cat)] == 1

    review.write_text(json.dumps({cat: "wolf"}))
    assert main(["corrections", str(review), str(small_zip), "--dir", str(tmp_path / "corr")]) == 2
    assert f"{str(cat)!r}: unknown action 'wolf'" in capsys.readouterr().err  # which photo, and what was wrong
