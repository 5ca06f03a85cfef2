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
