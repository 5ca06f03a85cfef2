"""The dashboard's non-UI logic: background training and scans (core.jobs), the models to pick (core.registry),
typed dataset paths (core.datasets) and uploads (core.uploads)."""

from __future__ import annotations

import io
import shutil
import time
import zipfile

import pytest
from conftest import make_jpeg

from core import config, datasets, registry, uploads
from core.data import DatasetError, scan
from core.jobs import DatasetScans, TrainingBusy, TrainingManager
from core.runs import RunStore, promote_run


def _config(**overrides):
    from core.settings import TrainConfig

    return TrainConfig(**{"epochs": 1, "limit": 100, "batch_size": 16, **overrides})


def _watch(job, timeout: float = 300) -> list:
    """Snapshots taken every 20 ms until the run ends: what a polling page would have seen."""
    seen, deadline = [], time.time() + timeout
    while job.running and time.time() < deadline:
        seen.append(job.snapshot())
        time.sleep(0.02)
    assert job.wait(5), "the run did not end in time"
    return [*seen, job.snapshot()]


def _zip_of(photos: dict[str, bytes], path):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in photos.items():
            zf.writestr(name, data)
    return path


def test_a_run_reports_load_batch_and_epoch_progress_then_its_saved_result(small_zip, app_dirs):
    job = TrainingManager().start(small_zip, _config(epochs=2), runs_dir=app_dirs.runs)
    seen = _watch(job)
    final = seen[-1]

    assert final.status == "finished", final.error
    assert {"training"} <= {s.status for s in seen}
    steps = [row["step"] for row in final.batch_log]
    assert steps == sorted(steps) and len(steps) == 2 * final.batches  # every batch of both epochs, in order
    assert all(row["loss"] > 0 for row in final.batch_log)
    assert [row["epoch"] for row in final.history] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(final.history[0])
    assert (final.n_train, final.n_val) == (80, 20)
    assert final.fraction == 1.0 and final.eta_s is None
    running = [s for s in seen if s.status == "training" and s.steps_done]
    assert running and all(0 < s.fraction <= 1 and s.eta_s is not None for s in running)
    # The polled batch log only ever grows: each snapshot is a prefix of the final one.
    assert all(s.batch_log == final.batch_log[: len(s.batch_log)] for s in seen)
    assert final.result.run.id in [run.id for run in RunStore(app_dirs.runs).runs()]
    assert final.result.metrics["epochs_completed"] == 2


@pytest.mark.slow
def test_a_time_budgeted_run_reports_progress_and_eta_against_its_budget(small_zip, app_dirs):
    budget_s = 6.0
    job = TrainingManager().start(small_zip, _config(epochs=500, time_budget_min=budget_s / 60), runs_dir=app_dirs.runs)
    seen = _watch(job)
    final = seen[-1]
    assert final.status == "time-budget", final.error
    assert final.result.metrics["epochs_completed"] < 500
    running = [s for s in seen if s.status == "training" and s.steps_done]
    # 500 epochs at this pace would take minutes: the ETA and progress follow the 6-second budget instead.
    assert running and all(s.eta_s <= budget_s + 0.5 for s in running)
    assert max(s.fraction for s in running) > 0.5


@pytest.mark.slow
def test_one_run_at_a_time_and_stop_keeps_the_best_epoch_so_far(small_zip, app_dirs):
    manager = TrainingManager()
    job = manager.start(small_zip, _config(epochs=50, batch_size=8), runs_dir=app_dirs.runs)
    with pytest.raises(TrainingBusy, match="already in progress.*seed preset on small-train.zip"):
        manager.start(small_zip, _config(), runs_dir=app_dirs.runs)

    deadline = time.time() + 300
    while not job.snapshot().history and time.time() < deadline:  # let one epoch finish
        time.sleep(0.05)
    job.stop()
    assert job.snapshot().status == "stopping"
    final = _watch(job)[-1]

    assert final.status == "stopped", final.error
    assert 1 <= len(final.history) < 50
    run = final.result.run
    assert run.model_path.exists() and run.meta["status"] == "stopped"
    assert manager.current is job and not job.running
    # Once it has ended, the next run may start.
    assert manager.start(app_dirs.data / "missing.zip", _config(), runs_dir=app_dirs.runs).wait(60)


def test_stop_while_decoding_ends_the_run_before_anything_is_saved(small_zip, app_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "fresh-cache")  # no cached arrays: decoding really runs
    job = TrainingManager().start(small_zip, _config(limit=None), runs_dir=app_dirs.runs)
    job.stop()
    final = _watch(job)[-1]

    assert final.status == "stopped" and final.result is None
    assert RunStore(app_dirs.runs).runs() == []


def test_a_failed_run_reports_why_and_frees_the_manager(tmp_path, app_dirs, small_zip):
    cats_only = _zip_of({f"train/cat.{i}.jpg": make_jpeg(seed=i) for i in range(8)}, tmp_path / "cats.zip")
    manager = TrainingManager()
    final = _watch(manager.start(cats_only, _config(), runs_dir=app_dirs.runs))[-1]

    assert final.status == "failed"
    assert "both cats and dogs" in final.error
    assert not manager.current.running


def test_a_scan_runs_once_per_version_of_a_source(small_zip, tmp_path):
    scans = DatasetScans()
    first = scans.get(small_zip)
    assert first.wait(60)
    assert scans.get(small_zip) is first  # a page switch asks again and gets the same scan
    assert first.error is None and first.done == first.total == 300
    assert (first.manifest.label == 0).sum() == 150

    copy = shutil.copy(small_zip, tmp_path / "copy.zip")
    assert scans.get(copy) is not first
    scans.forget(small_zip)
    again = scans.get(small_zip)
    assert again is not first and again.wait(60) and len(again.manifest) == 300


def test_a_scan_of_a_missing_or_broken_source_says_why(tmp_path):
    scans = DatasetScans()
    missing = scans.get(tmp_path / "nothing.zip")
    assert missing.finished and "nothing.zip" in missing.error
    broken = tmp_path / "notes.zip"
    broken.write_text("not a zip at all")
    state = scans.get(broken)
    assert state.wait(30) and "not a readable zip" in state.error


def test_models_to_pick_and_the_default_for_everyone(saved_run, app_dirs):
    older = saved_run
    newer_path = app_dirs.runs / f"{older.id[:-5]}-zzzz"  # a later id sorts first, as a newer run would
    shutil.copytree(older.path, newer_path)

    choices = registry.choices()
    assert [c.key for c in choices] == [newer_path.name, older.id]
    assert registry.default_model().key == newer_path.name  # nothing chosen yet: the newest run
    chosen = registry.set_default_model(older.id, by="0123456789abcdef")
    assert registry.default_model() == chosen == registry.find(older.id)
    assert registry.default_model_record()["set_by"] == "0123456789abcdef"
    # The accuracy it shows is the app's on its held-out photos; training's one look is kept beside it.
    assert chosen.accuracy == older.meta["metrics"]["accuracy"] and chosen.score.n == older.meta["n_val"]
    assert chosen.measured_on == f"the {older.meta['n_val']} photos of small-train.zip held out from training"
    assert chosen.single_look.value == pytest.approx(older.meta["metrics"]["best_val_accuracy"], abs=1e-6)
    with pytest.raises(KeyError):
        registry.set_default_model("no-such-run")
    with pytest.raises(KeyError):
        registry.set_default_model("../../etc")
    assert registry.find("../" + older.id) is None

    # The default target is read when called: the redirected models folder, never the real shipped model.
    assert promote_run(older) == app_dirs.models / "default.keras"
    assert registry.choices()[0].key == registry.DEFAULT_KEY
    assert registry.choices()[0].name == "Shipped default"
    assert registry.default_model().key == older.id  # an explicit choice outlives a new default
    RunStore(app_dirs.runs).delete(older.id)
    assert registry.default_model().key == registry.DEFAULT_KEY  # the chosen run is gone: back to the default


def test_no_models_means_no_default_model(app_dirs):
    assert registry.choices() == [] and registry.default_model() is None


def test_a_dropped_zip_is_kept_under_uploads_and_a_bad_one_is_refused(small_zip, app_dirs):
    import hashlib

    with open(small_zip, "rb") as fh:
        kept = uploads.save_upload("My photos (2024).zip", fh, owner="alice")
    digest = hashlib.sha256(small_zip.read_bytes()).hexdigest()
    assert kept.path == app_dirs.data / "uploads" / digest / "My_photos_2024.zip"
    assert kept.name == "My photos (2024).zip"  # shown as dropped; stored under a safe name in its hash's folder
    assert kept.path.read_bytes() == small_zip.read_bytes()
    assert uploads.dataset_candidates("alice") == [kept.path]
    assert uploads.dataset_candidates("bob") == uploads.dataset_candidates() == []  # nobody else's

    with pytest.raises(DatasetError) as refused:
        uploads.save_upload("../../evil.zip", io.BytesIO(b"plain text"), owner="alice")
    assert str(refused.value) == "evil.zip: not a readable zip file"
    assert sorted(p.name for p in (app_dirs.data / "uploads").iterdir()) == [digest]


def test_default_dataset_comes_first_among_candidates(small_zip, app_dirs):
    (app_dirs.data / "train.zip").symlink_to(small_zip)
    assert uploads.dataset_candidates() == [app_dirs.data / "train.zip"]


def test_a_typed_dataset_path_is_validated(app_dirs, small_zip, monkeypatch):
    monkeypatch.setattr(config, "EXTRA_DATA_ROOTS", [small_zip.parent])
    assert datasets.check_dataset(str(small_zip)) == small_zip
    with pytest.raises(DatasetError, match="no such folder"):
        datasets.check_dataset(app_dirs.data / "nope")
    cats = app_dirs.data / "cats"
    (cats / "cat").mkdir(parents=True)
    (cats / "cat" / "1.jpg").write_bytes(make_jpeg())
    assert datasets.check_dataset(cats) == cats  # what is in it is scanned in the background, not here
    problem = datasets.missing_classes("cats", datasets.manifest_entries(scan(cats)))
    assert problem.startswith("cats: needs photos of both classes") and "1 usable cat and 0 usable dog" in problem
    (cats / "dog").mkdir()
    (cats / "dog" / "1.jpg").write_bytes(make_jpeg(seed=1))
    assert datasets.missing_classes("cats", datasets.manifest_entries(scan(cats))) is None
    with pytest.raises(DatasetError, match="not a single file"):
        datasets.check_dataset(cats / "dog" / "1.jpg")
