"""The run store: what counts as a run, which runs offer a model, and ids that must never reach the file system."""

from __future__ import annotations

import json

import pytest

from core.runs import RunStore


def _run_folder(root, name: str, with_model: bool = True):
    path = root / name
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"id": name, "status": "finished"}))
    if with_model:
        (path / "model.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: a stand-in file, never loaded
    return path


def test_runs_without_a_model_are_listed_but_only_runs_with_one_are_offered(tmp_path):
    _run_folder(tmp_path, "20260101-000000-seed-aaaa")
    _run_folder(tmp_path, "20260102-000000-seed-bbbb", with_model=False)
    store = RunStore(tmp_path)
    assert [r.id for r in store.runs()] == ["20260102-000000-seed-bbbb", "20260101-000000-seed-aaaa"]
    assert [r.id for r in store.with_models()] == ["20260101-000000-seed-aaaa"]


def test_a_symlinked_run_folder_is_neither_listed_nor_opened(tmp_path):
    elsewhere = _run_folder(tmp_path / "elsewhere", "20260101-000000-seed-aaaa")
    root = tmp_path / "runs"
    root.mkdir()
    (root / "20260101-000000-seed-link").symlink_to(elsewhere, target_is_directory=True)
    store = RunStore(root)
    assert store.runs() == []
    with pytest.raises(KeyError):
        store.get("20260101-000000-seed-link")


@pytest.mark.parametrize("bad_id", ["..", "../runs", "/etc", "a/b", "", ".hidden", "x" * 200, "nul\0byte"])
def test_run_ids_that_are_not_plain_names_are_refused(tmp_path, bad_id):
    _run_folder(tmp_path, "20260101-000000-seed-aaaa")
    with pytest.raises(KeyError):
        RunStore(tmp_path).get(bad_id)


def test_a_folder_without_run_json_is_not_a_run_and_delete_removes_a_real_one(tmp_path):
    (tmp_path / "20260101-000000-seed-half").mkdir()  # half-written: no run.json yet
    real = _run_folder(tmp_path, "20260102-000000-seed-real")
    store = RunStore(tmp_path)
    assert [r.id for r in store.runs()] == [real.name]
    store.delete(real.name)
    assert not real.exists() and store.runs() == []


def _timed_run(root, name: str, pace: float, batch_size: int = 32, augment: bool = False) -> None:
    from dataclasses import asdict

    from core.settings import TrainConfig

    path = root / name
    path.mkdir(parents=True)
    cfg = asdict(TrainConfig(batch_size=batch_size, augment=augment))
    meta = {"id": name, "config": cfg, "metrics": {"train_images_per_s": pace, "epochs_completed": 2}}
    (path / "run.json").write_text(json.dumps(meta))


def test_a_run_is_estimated_at_the_pace_of_the_newest_run_like_it_on_this_machine(tmp_path):
    from dataclasses import replace

    from core.estimate import estimate_training
    from core.settings import TrainConfig

    _timed_run(tmp_path, "20260101-000000-seed-aaaa", pace=100)
    _timed_run(tmp_path, "20260102-000000-seed-bbbb", pace=200)  # newer, same settings: its pace counts
    _timed_run(tmp_path, "20260103-000000-seed-cccc", pace=50, augment=True)  # newest, but augmented: not alike
    runs = RunStore(tmp_path).runs()
    # 10 epochs of 1,000 photos less the 20% held out, at 200 images/s.
    estimate = estimate_training(TrainConfig(epochs=10), 1000, runs)
    assert (estimate.seconds, estimate.train_photos, estimate.based_on) == (40.0, 800, "20260102-000000-seed-bbbb")
    assert not estimate.budget_bound
    budgeted = estimate_training(replace(TrainConfig(epochs=10), time_budget_min=0.5), 1000, runs)
    assert budgeted.seconds == 30 and budgeted.budget_bound  # the time budget ends it first
    assert estimate_training(TrainConfig(epochs=10, limit=500), 1000, runs).train_photos == 400
    other_batch = estimate_training(TrainConfig(batch_size=8), 1000, runs)  # no run at batch 8: the nearest kind
    assert other_batch.based_on == "20260102-000000-seed-bbbb"
    assert estimate_training(TrainConfig.for_preset("best"), 1000, runs) is None  # never timed here


def test_the_runs_table_names_each_runs_optimiser(tmp_path):
    from dataclasses import asdict

    from core.settings import TrainConfig

    for name, optimizer in (("20260101-000000-best-aaaa", "adamw"), ("20260102-000000-best-bbbb", "sgd")):
        cfg = TrainConfig.for_preset("best", **{"optimizer.name": optimizer})
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"id": name, "config": asdict(cfg)}))
    settings = RunStore(tmp_path).table().set_index("run").settings
    assert settings["20260101-000000-best-aaaa"].endswith("lr 0.002 · adamw · augmented")
    assert settings["20260102-000000-best-bbbb"].endswith("lr 0.002 · sgd · augmented")
