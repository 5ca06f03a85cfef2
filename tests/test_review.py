"""Closing the loop on the dashboard: the finder as a job, its review gallery, confusion cells, and my photos."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from app_session import open_app, texts

from core import config
from core.corrections import MyPhotos, corrections_path, load_corrections
from core.data import Source
from core.jobs import FinderBusy, FinderJobs
from core.label_issues import SAVED_COLUMNS, FinderConfig, issues_paths, load_issues
from ui.resources import dataset_scans, finder_jobs
from ui.review import action_key
from ui.status import plural

# Two folds of two epochs at 32 px: a real search of 300 photos in seconds, not a good one.
QUICK = FinderConfig(image_size=32, train_scales=(1.0,), epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def searched(small_zip, tmp_path_factory):
    """One real search of small_zip run as the dashboard runs it (a FinderJobs job), saved to a temp folder."""
    root = tmp_path_factory.mktemp("searched")
    fingerprint = Source(small_zip).fingerprint()
    jobs = FinderJobs()
    job = jobs.start(small_zip, fingerprint, QUICK, owner="tester", root=root)
    with pytest.raises(FinderBusy, match="already being searched .* by you"):
        jobs.start(small_zip, fingerprint, QUICK, owner="tester", root=root)
    assert job.wait(600)
    return root, fingerprint, job.snapshot()


@pytest.fixture
def dataset(small_zip, app_dirs, searched) -> Path:
    """small_zip as the default dataset, scanned, with the saved search in this test's corrections folder."""
    root, fingerprint, _ = searched
    link = app_dirs.data / "train.zip"
    link.symlink_to(small_zip)
    assert dataset_scans().get(link).wait(60)
    config.CORRECTIONS_DIR.mkdir(parents=True)
    for path in issues_paths(fingerprint, root):
        shutil.copy(path, config.CORRECTIONS_DIR / path.name)
    return link


def test_a_search_runs_as_a_job_and_is_saved_beside_the_corrections(searched):
    root, fingerprint, state = searched
    assert state.status == "finished", state.error
    assert state.owner == "tester" and state.fraction == 1.0 and "among 300 photos" in state.summary
    saved = load_issues(fingerprint, root)
    assert saved is not None and list(saved.suspects) == SAVED_COLUMNS and len(saved.suspects) > 0
    assert saved.suspects.score.is_monotonic_decreasing
    assert saved.meta["photos"] == 300 and saved.meta["fingerprint"] == fingerprint
    assert (
        saved.meta["counts"]
        == saved.suspects.kind.value_counts().reindex(["other-class", "neither"], fill_value=0).to_dict()
    )
    assert all(p.parent == root for p in issues_paths(fingerprint, root))  # beside corrections_path(fingerprint)
    assert corrections_path(fingerprint, root).parent == root
    assert load_issues("0" * 32, root) is None  # another dataset has no search


def test_the_review_gallery_writes_the_corrections_file_and_undo_works(dataset, searched):
    _, fingerprint, _ = searched
    saved = load_issues(fingerprint)
    at = open_app()
    assert "Last search" in texts(at.caption) and "on the 300 photos of small-train.zip" in texts(at.caption)
    first = saved.suspects.iloc[0]
    other = "dog" if first.given_label == "cat" else "cat"
    at.button(key=action_key("dataset_issues", first.file, other)).click().run()
    assert not at.exception
    corrections = load_corrections(fingerprint)
    assert corrections.action(first.file) == other and corrections.photos[first.file].given == first.given_label
    saved_file = json.loads(corrections_path(fingerprint).read_text())
    assert saved_file["photos"][first.file]["action"] == other  # readable JSON, one entry per photo
    assert f"relabelled as a {other}" in texts(at.caption)

    second = saved.suspects.iloc[1]
    at.button(key=action_key("dataset_issues", second.file, "exclude")).click().run()
    assert load_corrections(fingerprint).action(second.file) == "exclude"
    at.button(key=action_key("dataset_issues", first.file, "undo")).click().run()
    assert load_corrections(fingerprint).action(first.file) is None
    assert load_corrections(fingerprint).action(second.file) == "exclude"
    # The undone photo offers its actions again; the reviewed one shows only with the "reviewed" filter.
    assert at.button(key=action_key("dataset_issues", first.file, "keep"))
    at.selectbox(key="dataset_issues_status").set_value("reviewed").run()
    assert "1 photo · page 1 of 1" in texts(at.caption)
    assert (
        f"Reviewed so far: 0 relabelled, 1 excluded, 0 right, saved for training in `{corrections_path(fingerprint)}`"
        in texts(at.caption)
    )


def test_the_review_filters_by_kind(dataset, searched):
    _, fingerprint, _ = searched
    suspects = load_issues(fingerprint).suspects
    at = open_app()
    for kind in ("other-class", "neither"):
        at.selectbox(key="dataset_issues_kind").set_value(kind).run()
        count = int((suspects.kind == kind).sum())
        shown = texts(at.caption)
        assert (f"{plural(count, 'photo')} · page 1" in shown) if count else ("No photos here." in shown)
        assert all(f"· {kind} ·" in line for line in shown.splitlines() if line.startswith("**") and ".jpg" in line)


@pytest.fixture
def opened(small_zip, app_dirs) -> Path:
    """small_zip as the default dataset (data/train.zip), scanned, without a search."""
    link = app_dirs.data / "train.zip"
    link.symlink_to(small_zip)
    assert dataset_scans().get(link).wait(60)
    return link


def in_reading_order(captions: list[str], columns: int = 4) -> list[str]:
    """A grid's captions row by row: the element tree lists them column by column."""
    sizes = [len(range(c, len(captions), columns)) for c in range(columns)]
    it = iter(captions)
    by_column = [[next(it) for _ in range(size)] for size in sizes]
    return [by_column[i % columns][i // columns] for i in range(len(captions))]


def test_a_confusion_cell_opens_its_photos_with_the_same_actions(saved_run, opened):
    from core.predict import Predictor, evaluate

    names = saved_run.meta["validation_names"]
    expected = evaluate(Predictor(saved_run.model_path), opened, names).predictions
    at = open_app("pages/runs.py")
    at.selectbox(key="runs_selected").set_value(saved_run.id).run()
    at.toggle(key="runs_evaluate").set_value(True).run()
    for cell, (true, said) in {"cat-dog": (0, 1), "dog-dog": (1, 1)}.items():
        at.button_group(key="runs_cell").set_value(cell).run()
        assert not at.exception
        chosen = expected[(expected.true == true) & ((expected.prob_dog >= 0.5).astype(int) == said)]
        chosen = chosen.assign(confidence=(chosen.prob_dog - 0.5).abs()).sort_values("confidence", ascending=False)
        shown = in_reading_order(
            [c.split(": P(dog) = ")[0] for c in texts(at.caption).splitlines() if ": P(dog) = " in c]
        )
        if chosen.empty:
            assert "No photos here." in texts(at.caption)
            continue
        assert f"{plural(len(chosen), 'photo')} · page 1" in texts(at.caption)
        # That cell's photos, the most confident first (two predictions of one photo may differ in the last digits).
        by_name = dict(zip(chosen.file.map(lambda f: Path(f).name), chosen.confidence, strict=True))
        assert len(shown) == min(len(chosen), 12) and set(shown) <= set(by_name)
        assert min(by_name[n] for n in shown) >= max(chosen.confidence.iloc[len(shown) :], default=0) - 1e-4
        seen = [by_name[n] for n in shown]
        assert all(a >= b - 1e-4 for a, b in itertools.pairwise(seen))
    first = chosen.file.iloc[0]
    at.button(key=action_key("runs_cell", first, "exclude")).click().run()
    corrections = load_corrections(Source(opened).fingerprint())
    assert corrections.action(first) == "exclude" and corrections.photos[first].given == "dog"
    assert "excluded (neither)" in texts(at.caption)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_wrong_correct_it_puts_the_photo_in_my_photos_once_and_never_a_hostile_file(saved_run, small_zip, bad_inputs):
    photo = Source(small_zip).read("train/cat.1001.jpg")
    files = [
        ("mine.jpg", photo, "image/jpeg"),
        ("text-named.jpg", (bad_inputs / "text-named.jpg").read_bytes(), "image/jpeg"),
    ]
    at = open_app("pages/predict.py")
    at.file_uploader(key="predict_files").set_value(files).run()
    offered = [b.key for b in at.button if b.key and b.key.startswith("predict_correct_")]
    assert offered == [f"predict_correct_{sha(photo)[:16]}"]  # the photo, not the file that is no image
    button = at.button(key=offered[0])
    said = button.label.removeprefix("Wrong? Correct it: a ")
    assert said in ("cat", "dog") and f":material/pets: {said}]" not in texts(at.markdown)  # the other label
    button.click().run()
    stored = MyPhotos().list()
    assert [(p.sha256, p.label, p.name) for p in stored] == [(sha(photo), said, "mine.jpg")]
    assert stored[0].path.read_bytes() == photo
    assert f"In my photos as a {said}" in texts(at.caption)

    # The same photo under another name is found again by its content: offered Undo, not stored twice.
    at.file_uploader(key="predict_files").set_value([("again.jpg", photo, "image/jpeg")]).run()
    assert f"In my photos as a {said}" in texts(at.caption) and len(MyPhotos().list()) == 1
    at.button(key=f"predict_uncorrect_{sha(photo)[:16]}").click().run()
    assert MyPhotos().list() == [] and at.button(key=f"predict_correct_{sha(photo)[:16]}")


def test_my_photos_are_browsed_and_pruned_on_the_dataset_page(opened, small_zip):
    source = Source(small_zip)
    store = MyPhotos()
    added = [
        store.add(source.read(name), label, name)
        for name, label in [("train/cat.1001.jpg", "dog"), ("train/dog.1001.jpg", "dog")]
    ]
    at = open_app()
    assert "0 cats and 2 dogs labelled on the Predict page" in texts(at.caption)
    at.button(key=f"dataset_my_remove_{added[0].sha256[:16]}").click().run()
    assert [p.sha256 for p in MyPhotos().list()] == [added[1].sha256]
    at.button(key="dataset_my_clear").click().run()
    assert "Remove all 1 photo" in texts(at.warning)
    at.button(key="dataset_my_clear_confirm").click().run()
    assert MyPhotos().list() == [] and "No photos yet" in texts(at.caption)


def test_the_finder_runs_in_the_background_and_only_its_session_cancels_it_with_one_click(opened):
    fingerprint = Source(opened).fingerprint()
    at = open_app()
    assert at.button(key="dataset_issues_start").label == "Find label issues"
    assert at.number_input(key="dataset_issues_budget").value == 1.0  # 25 min for 20,000 photos, scaled to 300
    at.number_input(key="dataset_issues_budget").set_value(0.5).run()
    at.button(key="dataset_issues_start").click().run()
    job = finder_jobs().get(fingerprint)
    try:
        assert job is not None and job.snapshot().owner is not None
        assert at.button(key="dataset_issues_cancel") and at.get("progress")
        other = open_app()  # another browser: sees the search, cancels it only through a confirmation
        assert "Started by session" in texts(other.caption)
        other.button(key="dataset_issues_cancel_other").click().run()
        assert "What it has found so far is lost" in texts(other.warning)
        assert other.button(key="dataset_issues_cancel_other_confirm").label == "Yes, cancel it"
        at.button(key="dataset_issues_cancel").click().run()
        assert job.wait(300)
    finally:
        job.cancel()
        job.wait(300)
    at.run()
    assert job.snapshot().status == "cancelled"
    assert "The last search was cancelled by you" in texts(at.info)
    assert load_issues(fingerprint) is None  # nothing of a cancelled search is kept


def test_a_search_that_cannot_run_says_why_in_words(small_zip, tmp_path):
    import zipfile

    tiny = tmp_path / "tiny.zip"
    source = Source(small_zip)
    names = [item.name for item in source.listing]
    with zipfile.ZipFile(tiny, "w") as out:
        for name in [n for n in names if "/cat." in n][:6] + [n for n in names if "/dog." in n][:6]:
            out.writestr(name, source.read(name))
    job = FinderJobs().start(tiny, Source(tiny).fingerprint(), QUICK, owner="tester", root=tmp_path)
    assert job.wait(300)
    state = job.snapshot()
    assert state.status == "failed" and state.error.startswith("finding label issues with 2 folds needs at least 10")
    assert "Error" not in state.error and load_issues(Source(tiny).fingerprint(), tmp_path) is None


def test_the_train_page_trains_with_the_corrections_and_my_photos_it_offers(small_zip, app_dirs):
    """The Train page offers what was corrected, and Start's config carries it (core.train applies it)."""
    from core.corrections import record

    link = app_dirs.data / "train.zip"
    link.symlink_to(small_zip)
    fingerprint = Source(small_zip).fingerprint()
    with zipfile.ZipFile(small_zip) as z:
        photos = [n for n in z.namelist() if n.endswith(".jpg")]
        MyPhotos().add(z.read(photos[0]), "dog", "mine.jpg")
    record(fingerprint, {photos[1]: "exclude", photos[2]: "keep"}, source="train.zip")
    at = open_app("pages/train.py")
    offered = at.toggle(key="train_use_corrections")
    assert "0 photos relabelled, 1 excluded" in offered.label and offered.value is True
    assert "(0 cats, 1 dog)" in at.toggle(key="train_use_my_photos").label
    at.toggle(key="train_use_my_photos").set_value(True).run()
    caption = texts(at.caption)
    assert "with its corrections plus my photos" in caption
    at.toggle(key="train_use_corrections").set_value(False).run()
    assert "all photos plus my photos" in texts(at.caption)


@pytest.mark.slow  # trains a second run
def test_a_run_trained_with_corrections_is_shown_beside_the_one_without_on_the_same_photos(saved_run, opened):
    from core.corrections import record
    from core.predict import Predictor, evaluate
    from core.settings import TrainConfig
    from core.train import train

    held, fingerprint = saved_run.meta["validation_names"], Source(opened).fingerprint()
    trained = [it.name for it in Source(opened).listing if it.name not in set(held) and "/cat." in it.name]
    record(fingerprint, {held[0]: "exclude", trained[0]: "dog"}, source="train.zip")
    path = corrections_path(fingerprint)
    fixed = train(opened, TrainConfig(epochs=1, corrections=str(path)), runs_dir=config.RUNS_DIR).run
    assert fixed.meta["validation_names"] == held[1:]  # its split is the uncorrected run's, less the excluded photo

    at = open_app("pages/runs.py")
    at.selectbox(key="runs_selected").set_value(fixed.id).run()
    assert at.selectbox(key="runs_beside").value == saved_run.id  # the run without corrections, by default
    assert f"They both held out the same {len(held) - 1} photos of train.zip." in texts(at.caption)
    at.toggle(key="runs_side_by_side").set_value(True).run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert table.model.tolist() == [fixed.id, saved_run.id] and table.photos.tolist() == [len(held) - 1] * 2
    assert table["trained with"].tolist() == ["corrections (1 relabelled, 1 excluded)", "its dataset as given"]
    right = [
        evaluate(Predictor(run.model_path), opened, held[1:])
        .predictions.set_index("file")
        .pipe(lambda f: (f.prob_dog >= 0.5).astype(int) == f.true)
        for run in (fixed, saved_run)
    ]
    both, only_fixed = int((right[0] & right[1]).sum()), int((right[0] & ~right[1]).sum())
    said = f"On the same {len(held) - 1} photos: both right on {both}, only {fixed.id} on {only_fixed}, "
    assert said in texts(at.caption)
