"""The label-issue finder: planted label flips rank first, no model scores its own photos, cancel leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from core import config
from core.label_issues import (
    CSV_COLUMNS,
    EXCLUDE,
    KINDS,
    Cancelled,
    FinderConfig,
    _edge_strengths,
    _outliers,
    contact_sheet,
    find_label_issues,
)
from core.pipeline import PipelineConfig, decode

# A run small enough for a test: 32 px, one size, a fixed number of epochs (the same work on any machine).
SMALL = FinderConfig(image_size=32, train_scales=(1.0,), epochs=6, batch_size=16)
FLIPS = 10
CARDS = ("Adopted", "No photo", "Yahoo!", "camera shy")


def text_card(text: str, seed: int) -> bytes:
    """Real JPEG bytes of what train.zip has a few dozen of: a white card with a word on it, no animal."""
    img = np.full((200, 200, 3), 255, np.uint8)
    colour = (200, 30, 30) if seed % 2 else (0, 0, 0)
    cv2.putText(img, text, (10, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.2, colour, 3)
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def planted(train_zip, tmp_path_factory):
    """A 304-photo zip of real train.zip photos with 10 labels flipped and 4 text cards, and what was planted.

    The photos are the 150 darkest cats and the 150 brightest dogs among the first 1,200 of each: a net trained
    for seconds on 150 of each separates those as well as the default 25-minute run separates any cats from dogs
    (~90%), so what is under test is the finder, not how fast a net learns cats from dogs. Five cats are written
    under dog names and five dogs under cat names (dog.flipped.N.jpg, cat.flipped.N.jpg).
    """
    out = tmp_path_factory.mktemp("planted") / "planted.zip"
    with zipfile.ZipFile(train_zip) as src:
        names = src.namelist()

        def brightness(name: str) -> float:
            return float(decode(src.read(name), PipelineConfig(32, "grayscale")).mean())

        cats = sorted(sorted(n for n in names if "/cat." in n)[:1200], key=brightness)[:150]
        dogs = sorted(sorted(n for n in names if "/dog." in n)[:1200], key=brightness)[-150:]
        rng = np.random.default_rng(1)
        flip = set(rng.choice(cats, FLIPS // 2, replace=False)) | set(rng.choice(dogs, FLIPS // 2, replace=False))
        flipped, cards = [], []
        with zipfile.ZipFile(out, "w") as dst:
            for name in cats + dogs:
                written = name
                if name in flip:  # under the other class's name
                    cat = "/cat." in name
                    written = name.replace("/cat.", "/dog.flipped.") if cat else name.replace("/dog.", "/cat.flipped.")
                    flipped.append(written)
                dst.writestr(written, src.read(name))
            for i, text in enumerate(CARDS):
                card = f"train/{('dog', 'cat')[i % 2]}.card.{i}.jpg"
                dst.writestr(card, text_card(text, i))
                cards.append(card)
    return out, flipped, cards


@pytest.fixture(scope="module")
def found(planted, tmp_path_factory):
    """One finder run on the planted zip, its progress events and its scratch folder."""
    path, _, _ = planted
    scratch = tmp_path_factory.mktemp("scratch")
    events = []
    result = find_label_issues(path, SMALL, progress=events.append, cache_dir=False, scratch_dir=scratch)
    return result, events, scratch


@pytest.mark.slow
def test_flipped_labels_rank_at_the_top_and_suggest_their_true_class(planted, found):
    _, flipped, _ = planted
    result, _, _ = found
    suspects = result.suspects()
    # The label doubts come first among the other-class suspects; the atypical photos (the test's brightest dogs are
    # often on white, which the edge view finds unusual) rank beside them as neither, so all flips are near the top.
    top = suspects[suspects.kind == "other-class"].head(2 * FLIPS)
    caught = top[top.file.isin(flipped)]
    assert len(caught) >= 0.8 * FLIPS, f"only {len(caught)} of {FLIPS} flipped labels in the top {2 * FLIPS}"
    rank = {name: i for i, name in enumerate(result.photos.file)}
    assert all(rank[name] < 0.15 * len(result.photos) for name in flipped), {n: rank[n] for n in flipped}
    other = caught[caught.kind == "other-class"]
    assert len(other) >= FLIPS // 2
    # A flipped cat is written under a dog's name: its given label is dog, and the finder suggests cat.
    assert (other.given_label != other.suggested).all()
    assert set(other.suggested) <= {"cat", "dog"}
    assert result.accuracy > 0.85  # on these 304 photos, out of fold


@pytest.mark.slow
def test_text_cards_rank_high_and_outliers_are_neither(planted, found):
    _, _, cards = planted
    result, _, _ = found
    photos = result.photos
    rank = {name: i for i, name in enumerate(photos.file)}
    assert all(rank[card] < 0.15 * len(photos) for card in cards), {c: rank[c] for c in cards}
    neither = photos[photos.suspect & (photos.kind == "neither")]
    assert neither.file.isin(cards).any(), photos[photos.file.isin(cards)].to_string()
    # The documented rule: a neither is an outlier (of the net's features or of its edges) whose label cleanlab did
    # not doubt more than it is atypical; every other suspect is a cleanlab label issue, suggesting the other class.
    outlier = photos.outlier | photos.edge_outlier
    assert outlier[neither.index].all() and (neither.suggested == EXCLUDE).all()
    assert (photos.suspect == (photos.label_issue | outlier)).all()
    assert photos[outlier & ~photos.label_issue].kind.eq("neither").all()
    # Text cards are flat areas and hard edges: the edge view, which no model shapes, marks every one of them.
    assert photos[photos.file.isin(cards)].edge_outlier.all(), photos[photos.file.isin(cards)].to_string()
    other = photos[photos.suspect & (photos.kind == "other-class")]
    assert other.label_issue.all() and (other.suggested != other.given_label).all()


def test_the_edge_view_finds_train_zips_known_bad_photos_without_a_model(train_zip):
    """The 54 bad photos of docs/known-bad-photos.json among 2,000 others of train.zip: most text cards, logos and
    drawings have edges no photograph has, so they are the edge view's most atypical photos (no training at all)."""
    known = json.loads((Path(__file__).parents[1] / "docs" / "known-bad-photos.json").read_text(encoding="utf-8"))
    with zipfile.ZipFile(train_zip) as src:
        others = sorted(n for n in src.namelist() if n.endswith(".jpg") and n not in known)
        names = [*np.random.default_rng(0).choice(others, 2000, replace=False), *known]
        photos = np.stack([decode(src.read(name), PipelineConfig(64, "rgb")) for name in names])
    scores, outlier = _outliers(_edge_strengths(photos), fence=3.0)
    bad = np.isin(names, list(known))
    order = np.argsort(scores)  # most atypical first
    assert bad[order[:20]].sum() >= 12, "fewer than 12 known bad photos among the 20 most atypical"
    top = len(names) // 50  # 2%, where the known bad are 2.6% of these photos
    assert bad[order[:top]].sum() >= 20, f"only {bad[order[:top]].sum()} of {bad.sum()} in the top {top}"
    assert (outlier & bad).sum() >= 20 and (outlier & ~bad).sum() <= 3 * (outlier & bad).sum()


@pytest.mark.slow
def test_no_photo_is_scored_by_a_model_that_trained_on_it(found):
    result, _, _ = found
    photos = result.photos
    assert len(result.trained_on) == SMALL.folds
    assert photos.fold.between(0, SMALL.folds - 1).all()  # every photo scored, by exactly one model
    everyone = set(photos.file)
    for fold, trained in enumerate(result.trained_on):
        scored = set(photos.file[photos.fold == fold])
        assert scored, f"model {fold} scored nothing"
        assert scored.isdisjoint(trained), f"model {fold} scored photos it trained on"
        assert set(trained) | scored == everyone  # it trained on all the other folds' photos
    assert sum(len(t) for t in result.trained_on) == (SMALL.folds - 1) * len(photos)


@pytest.mark.slow
def test_csv_lists_suspects_most_suspect_first(found, tmp_path):
    result, _, _ = found
    path = result.to_csv(tmp_path / "suspects.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == CSV_COLUMNS
    assert len(table) == result.photos.suspect.sum() > 0
    assert table.score.is_monotonic_decreasing
    assert table.score.between(0, 1).all()
    assert set(table.kind) <= set(KINDS)
    assert (table.suggested[table.kind == "neither"] == EXCLUDE).all()
    other = table[table.kind == "other-class"]
    assert (other.suggested != other.given_label).all()
    assert result.counts() == table.kind.value_counts().reindex(KINDS, fill_value=0).to_dict()
    assert not list(tmp_path.glob(".*"))  # the atomic write's temp file is gone


@pytest.mark.slow
def test_progress_covers_every_phase_and_no_run_folder_is_left(found):
    result, events, scratch = found
    phases = [(e.phase, e.fold) for e in events]
    for phase in [("load", 0), ("train", 1), ("score", 1), ("train", 2), ("score", 2), ("rank", 0)]:
        assert phase in phases
    assert all(0 <= e.done <= e.total for e in events)
    assert events[-1].phase == "rank" and events[-1].done == events[-1].total
    assert [e.elapsed_s for e in events] == sorted(e.elapsed_s for e in events)
    assert not any(scratch.iterdir()), "the fold models' runs folder was not removed"
    assert not config.RUNS_DIR.exists() or not any(config.RUNS_DIR.iterdir())
    assert result.skipped.empty


@pytest.mark.slow
def test_contact_sheet_shows_the_top_suspects(planted, found):
    path, _, _ = planted
    result, _, _ = found
    sheet = contact_sheet(path, result.suspects(), count=10, columns=5, tile=64)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3
    assert sheet.shape[1] == 5 * (64 + 4) and sheet.shape[0] == 2 * (64 + 44 + 4)
    assert sheet.std() > 20  # photos and captions, not a blank page


def test_cancel_stops_the_finder_and_leaves_nothing(planted, tmp_path):
    path, _, _ = planted
    cancel = threading.Event()

    def progress(event) -> None:
        if event.phase == "train":
            cancel.set()  # as a Cancel button would, mid-training

    with pytest.raises(Cancelled):
        find_label_issues(
            path,
            FinderConfig(image_size=32, train_scales=(1.0,), epochs=500),
            progress=progress,
            cancel=cancel,
            cache_dir=False,
            scratch_dir=tmp_path,
        )
    assert not any(tmp_path.iterdir())
    assert not config.RUNS_DIR.exists() or not any(config.RUNS_DIR.iterdir())


def test_too_few_photos_is_a_clear_error(small_zip, tmp_path):
    with pytest.raises(ValueError, match="needs at least 10 photos of each class"):
        find_label_issues(small_zip, FinderConfig(limit=12), cache_dir=False, scratch_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 2 folds"):
        find_label_issues(small_zip, FinderConfig(folds=1, limit=40), cache_dir=False, scratch_dir=tmp_path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "CVD_DATA_DIR": str(cwd / "data"), "CVD_RUNS_DIR": str(cwd / "runs")}
    return subprocess.run(
        [sys.executable, "-m", "core", "label-issues", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_refuses_bad_arguments_in_one_line(small_zip, tmp_path):
    done = _cli(str(small_zip), "--folds", "1", "--csv", "out.csv", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: the finder needs at least 2 folds, not 1"
    assert "Traceback" not in done.stderr and not (tmp_path / "out.csv").exists()
    done = _cli(str(small_zip), "--time-budget", "0", "--csv", "out.csv", cwd=tmp_path)
    assert done.returncode == 2 and "more than 0 minutes" in done.stderr


@pytest.mark.slow
def test_cli_writes_the_csv_and_a_summary(small_zip, tmp_path):
    done = _cli(str(small_zip), "--time-budget", "0.5", "--csv", "suspects.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(tmp_path / "suspects.csv")
    assert list(table.columns) == CSV_COLUMNS
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{(table.kind == 'other-class').sum()} other-class and ")
    assert f"{(table.kind == 'neither').sum()} neither suspects among 300 photos of small-train.zip" in summary
    assert "load" in done.stderr and "score 2/2" in done.stderr  # progress went to stderr
    assert not (tmp_path / "runs").exists()
