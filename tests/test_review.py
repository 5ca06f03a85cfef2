"""Closing the loop on the dashboard: the finder as a job, its review gallery, confusion cells, and my photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import config
from core.corrections import corrections_path, load_corrections
from core.data import Source
from core.jobs import FinderBusy, FinderJobs, dataset_scans
from core.label_issues import SAVED_COLUMNS, FinderConfig, issues_paths, load_issues
from ui.review import action_key

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
# Two folds of two epochs at 32 px: a real search of 300 photos in seconds, not a good one.
QUICK = FinderConfig(image_size=32, train_scales=(1.0,), epochs=2, batch_size=16)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def open_app(page: str = "pages/dataset.py") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    if page != "pages/dataset.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


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
    assert "1 photos · page 1 of 1" in texts(at.caption)


def test_the_review_filters_by_kind(dataset, searched):
    _, fingerprint, _ = searched
    suspects = load_issues(fingerprint).suspects
    at = open_app()
    for kind in ("other-class", "neither"):
        at.selectbox(key="dataset_issues_kind").set_value(kind).run()
        count = int((suspects.kind == kind).sum())
        shown = texts(at.caption)
        assert (f"{count:,} photos · page 1" in shown) if count else ("No photos here." in shown)
        assert all(f"· {kind} ·" in line for line in shown.splitlines() if line.startswith("**") and ".jpg" in line)
