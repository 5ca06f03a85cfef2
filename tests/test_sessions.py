"""One dashboard, many people: what one session does never becomes another's, runs are owned, the server is safe.

Two AppTest instances in one process are two sessions of one server (they share module globals and
st.cache_resource, each has its own st.session_state), so most tests here open two and check one against the other.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
from app_session import open_app, texts
from conftest import make_jpeg
from streamlit.testing.v1 import AppTest

from core import config, datasets, registry, uploads
from core.data import DatasetError, Source
from core.jobs import DatasetScans, TrainingManager, owner_label
from core.runs import RunStore, promote_run
from ui.resources import dataset_scans


def owner_of(at: AppTest) -> str:
    return at.session_state["session_owner"]


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def drop(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="dataset_choice").set_value("upload").run()
    return at.file_uploader(key="dataset_upload").set_value((name, data, "application/zip")).run()


@pytest.fixture
def dataset(small_zip, app_dirs) -> Path:
    """small_zip as the server's default dataset (data/train.zip), already scanned."""
    link = app_dirs.data / "train.zip"
    link.symlink_to(small_zip)
    assert dataset_scans().get(link).wait(60)
    return link


# ---- Datasets and uploads ----------------------------------------------------------------------------------------


def test_one_sessions_upload_never_becomes_another_sessions_dataset(dataset, bad_inputs):
    alice, bob = open_app(), open_app()
    drop(alice, "class-folders.zip", (bad_inputs / "class-folders.zip").read_bytes())
    upload = uploads.uploads(owner_of(alice))[0]
    assert alice.radio(key="dataset_choice").value == str(upload.path)
    assert "class-folders.zip (your upload)" in alice.radio(key="dataset_choice").options  # options as shown
    assert "**class-folders.zip**" in texts(alice.expander[0].markdown)  # listed under "Your uploads"

    bob.run()
    assert bob.radio(key="dataset_choice").value == str(dataset)
    assert bob.radio(key="dataset_choice").options == ["train.zip (default)", "Drop a zip", "A folder on this machine"]
    assert not bob.expander  # no "Your uploads"
    bob.switch_page("pages/train.py").run()
    assert "Dataset: **train.zip**" in texts(bob.caption)
    carol = open_app("pages/train.py")  # a new tab, or a reload elsewhere: the server's default, not the upload
    assert "Dataset: **train.zip**" in texts(carol.caption)
    alice.switch_page("pages/train.py").run()
    assert "Dataset: **class-folders.zip**" in texts(alice.caption)


def test_the_same_zip_dropped_twice_is_one_file_and_same_names_never_collide(app_dirs, bad_inputs):
    pets, other = (bad_inputs / "class-folders.zip").read_bytes(), (bad_inputs / "macos-made.zip").read_bytes()
    a = uploads.save_upload("pets.zip", io.BytesIO(pets), owner="alice")
    b = uploads.save_upload("mine.zip", io.BytesIO(pets), owner="bob")
    assert a.path == b.path and a.digest == hashlib.sha256(pets).hexdigest()  # the same bytes: one file
    assert [u.name for u in uploads.uploads("alice")] == ["pets.zip"]  # each keeps the name it dropped
    assert [u.name for u in uploads.uploads("bob")] == ["mine.zip"]
    c = uploads.save_upload("pets.zip", io.BytesIO(other), owner="alice")  # same name, other bytes
    assert c.path != a.path and c.path.read_bytes() == other and a.path.read_bytes() == pets
    assert [u.name for u in uploads.uploads("alice")] == ["pets.zip", "pets.zip"]

    uploads.remove_upload(a, "alice")
    assert a.path.exists() and [u.path for u in uploads.uploads("alice")] == [c.path]  # bob still keeps it
    uploads.remove_upload(b, "bob")
    assert not a.path.parent.exists() and uploads.uploads("bob") == []


def test_a_session_removes_its_upload_from_the_dataset_page(dataset, bad_inputs):
    alice = open_app()
    drop(alice, "class-folders.zip", (bad_inputs / "class-folders.zip").read_bytes())
    upload = uploads.uploads(owner_of(alice))[0]
    alice.button(key=f"dataset_remove_{upload.digest[:16]}").click().run()
    assert not upload.path.exists() and uploads.uploads(owner_of(alice)) == []
    assert not alice.warning  # asked for: no "is no longer there" notice
    alice.switch_page("pages/train.py").run()
    assert "Dataset: **train.zip**" in texts(alice.caption)


def test_uploads_nobody_used_for_the_ttl_are_swept(app_dirs, bad_inputs):
    data = (bad_inputs / "class-folders.zip").read_bytes()
    kept = uploads.save_upload("a.zip", io.BytesIO(data), owner="alice")
    also = uploads.save_upload("b.zip", io.BytesIO((bad_inputs / "macos-made.zip").read_bytes()), owner="bob")
    legacy = app_dirs.data / "uploads" / "old-name.zip"  # how uploads were kept before: by name, at the top
    legacy.write_bytes(data)
    hour = 3600
    later = time.time() + 10 * hour
    os.utime(legacy, (later - 20 * hour, later - 20 * hour))
    uploads.touch_upload(kept, "alice", now=later - hour)  # alice used hers an hour ago; bob not since dropping

    assert uploads.sweep_uploads(24, now=later) == []  # nothing is 24 hours unused yet
    removed = uploads.sweep_uploads(8, now=later)
    assert set(removed) == {also.path.parent, legacy} and not also.path.exists() and not legacy.exists()
    assert kept.path.exists() and [u.name for u in uploads.uploads("alice")] == ["a.zip"]
    assert uploads.sweep_uploads(0.5, now=later, keep=[kept.path]) == []  # a run is reading it: kept
    assert kept.path.exists() and uploads.uploads("alice") == []  # but alice's stale use is forgotten
    assert uploads.sweep_uploads(0.5, now=later) == [kept.path.parent] and not kept.path.exists()


def test_upload_errors_name_the_users_file_and_say_the_real_reason(app_dirs, bad_inputs):
    at = open_app()
    drop(at, "not-a-zip.zip", b"plain text, not a zip")
    assert texts(at.error) == "not-a-zip.zip: not a readable zip file"

    drop(at, "zip-slip.zip", (bad_inputs / "zip-slip.zip").read_bytes())
    error = texts(at.error)
    assert error.startswith("zip-slip.zip: needs photos of both classes")
    assert "../../escaped.cat.1.jpg" in error and "/abs/dog.1.jpg" in error and "unsafe path" in error

    zeros = b"\0" * (4 * 2**20)  # 4 MB of zeros each, deflated to a few KB: far over the 200:1 ratio
    drop(at, "bomb.zip", zip_bytes({"train/cat.1.jpg": zeros, "train/dog.1.jpg": zeros}))
    error = texts(at.error)
    assert error.startswith("bomb.zip: ") and "zip bomb" in error and "train/cat.1.jpg" in error

    for message in (error, texts(at.error)):
        assert "incoming" not in message and str(app_dirs.data) not in message  # never a temp file or a path
    assert [p.name for p in (app_dirs.data / "uploads").iterdir()] == []  # nothing refused was kept


# ---- Models -----------------------------------------------------------------------------------------------------


def test_one_sessions_model_pick_never_changes_another_sessions(saved_run, small_zip):
    promote_run(saved_run, config.DEFAULT_MODEL)
    alice, bob = open_app("pages/predict.py"), open_app("pages/predict.py")
    alice.selectbox(key="predict_model").set_value(saved_run.id).run()
    assert alice.selectbox(key="predict_model").value == saved_run.id

    bob.run()
    assert bob.selectbox(key="predict_model").value == registry.DEFAULT_KEY
    assert registry.default_model().key == registry.DEFAULT_KEY
    photo = Source(small_zip).read("train/dog.1001.jpg")
    bob.file_uploader(key="predict_files").set_value(("dog.jpg", photo, "image/jpeg")).run()
    assert not bob.exception and bob.dataframe[0].value.file.tolist() == ["dog.jpg"]
    alice.switch_page("pages/runs.py").run()
    assert f"This session predicts with **{saved_run.id}**" in texts(alice.caption)
    bob.switch_page("pages/runs.py").run()
    assert "This session predicts with **Shipped default**" in texts(bob.caption)


def test_the_default_for_everyone_changes_only_through_its_confirmation(saved_run):
    promote_run(saved_run, config.DEFAULT_MODEL)
    alice, bob = open_app("pages/runs.py"), open_app("pages/predict.py")
    alice.selectbox(key="runs_selected").select(saved_run.id).run()  # the shipped default is listed first
    alice.button(key="runs_make_default").click().run()
    assert "default model for everyone" in texts(alice.warning) and "Every session" in texts(alice.warning)
    assert registry.default_model().key == registry.DEFAULT_KEY  # asking is not doing
    alice.button(key="runs_make_default_confirm").click().run()
    assert registry.default_model().key == saved_run.id
    assert f"made so by {owner_label(owner_of(alice))}" in texts(alice.caption)
    bob.run()  # a session that never picked its own follows the new default
    assert bob.selectbox(key="predict_model").value == saved_run.id


# ---- Runs -------------------------------------------------------------------------------------------------------


def start_long_run(at: AppTest, training: TrainingManager):
    """Start a run that lasts far longer than the test (50 epochs of a 100-photo slice, batches of 8)."""
    at.slider(key="train_epochs").set_value(50)
    at.slider(key="train_batch_size").set_value(8)
    at.number_input(key="train_limit").set_value(100)
    at.button(key="train_start").click().run()
    job = training.current
    assert job.running and job.owner == owner_of(at)
    return job


def test_a_non_owner_sees_the_run_read_only_and_stops_it_only_after_confirming(dataset, training):
    alice = open_app("pages/train.py")
    job = start_long_run(alice, training)
    assert alice.button(key="train_stop").label == "Stop" and not alice.info

    bob = open_app("pages/train.py")
    alice_is = owner_label(owner_of(alice))
    assert f"Started by another session ({alice_is})" in texts(bob.info)
    assert "seed preset on train.zip" in texts(bob.info)
    # The run's own settings, from the job; bob's controls keep his own (the seed tutorial's 10 epochs).
    settings = texts(bob.markdown)
    assert "- epochs: **50**" in settings and "- batch size: **8**" in settings and "- photos: **100**" in settings
    assert bob.slider(key="train_epochs").value == 10

    stop = bob.button(key="train_stop")
    assert stop.label == "Stop their run…"
    stop.click().run()
    assert job.running and job.snapshot().status != "stopping"  # one click never stops someone else's run
    assert f"This run belongs to another session, **{alice_is}**" in texts(bob.warning)
    bob.button(key="train_stop_cancel").click().run()
    assert not bob.warning and job.snapshot().status != "stopping"

    bob.button(key="train_stop").click().run()
    bob.button(key="train_stop_confirm").click().run()
    assert job.wait(300) and job.snapshot().status == "stopped"
    assert job.snapshot().stopped_by == owner_of(bob)
    alice.run()
    assert f"Stopped by {owner_label(owner_of(bob))}" in texts(alice.caption)


def test_a_confirmation_never_stops_a_run_started_after_it(dataset, training):
    alice, bob = open_app("pages/train.py"), open_app("pages/train.py")
    first = start_long_run(alice, training)
    bob.run()
    bob.button(key="train_stop").click().run()  # bob is asked about alice's first run ...
    first.stop()
    assert first.wait(300)
    second = start_long_run(alice, training)  # ... which ends; alice starts another before bob answers
    bob.button(key="train_stop_confirm").click().run()
    assert second.running and second.snapshot().status != "stopping"


def test_a_reload_of_the_owners_browser_shows_its_runs_own_settings(dataset, training):
    alice = open_app("pages/train.py")
    alice.selectbox(key="train_preset").set_value("improved").run()
    alice.slider(key="train_epochs").set_value(40)
    job = start_long_run(alice, training)
    # A reload is a new session of the same browser: the same owner id (from the browser's cookie), empty state.
    reloaded = open_app("pages/train.py", owner=owner_of(alice))
    assert reloaded.button(key="train_stop").label == "Stop" and not reloaded.info
    assert reloaded.selectbox(key="train_preset").value == "improved"
    assert reloaded.slider(key="train_epochs").value == 50 == job.config.epochs
    assert reloaded.number_input(key="train_limit").value == 100
    assert reloaded.select_slider(key="train_image_size").value == job.config.image_size
    settings = texts(reloaded.markdown)
    assert "**Settings of this run**" in settings and "- preset: **improved**" in settings
    assert "- epochs: **50**" in settings and "- augmentation: **on**" in settings
    assert "Started by you at" in texts(reloaded.caption)
    reloaded.button(key="train_stop").click().run()
    assert job.wait(300) and job.snapshot().stopped_by == owner_of(alice)


# ---- Paths ------------------------------------------------------------------------------------------------------


def test_paths_outside_the_allowed_roots_get_one_identical_refusal(app_dirs, small_zip, tmp_path):
    both = tmp_path / "elsewhere"  # a real dataset, with a photo of each class, outside the roots
    for label in ("cat", "dog"):
        (both / label).mkdir(parents=True)
        (both / label / "1.jpg").write_bytes(make_jpeg())
    (both / "credentials.txt").write_text("secret")
    (app_dirs.data / "link-out").symlink_to(both)  # inside data/, resolving outside it
    (app_dirs.data / "uploads").mkdir()
    typed = [
        str(both),  # exists, outside
        str(both / "credentials.txt"),
        str(small_zip),
        "/usr",
        "/etc/passwd",
        str(tmp_path / "missing"),  # does not exist, outside
        "/no/such/place.zip",
        "~",
        "link-out",  # a symlink under data/ to outside
        "../elsewhere",  # escapes data/ by ..
        str(app_dirs.data),  # holds the uploads of every session
        str(app_dirs.data / "uploads"),
    ]
    refusals = set()
    for path in typed:
        with pytest.raises(DatasetError) as refused:
            datasets.check_dataset(path)
        refusals.add(str(refused.value))
    assert refusals == {datasets.path_refusal()}

    at = open_app()
    at.radio(key="dataset_choice").set_value("folder").run()
    shown = set()
    for path in typed:
        at.text_input(key="dataset_folder").set_value(path).run()
        assert not at.exception and not at.dataframe and not at.metric  # nothing about the path is listed
        shown.add(texts(at.error))
    assert shown == {datasets.path_refusal()} and "\n" not in datasets.path_refusal()


def test_a_folder_under_an_extra_root_is_scanned_in_the_background(app_dirs, tmp_path, monkeypatch):
    extra = tmp_path / "lab-share"
    for label in ("cat", "dog"):
        (extra / "pets" / label).mkdir(parents=True)
        for i in range(3):
            (extra / "pets" / label / f"{i}.jpg").write_bytes(make_jpeg(seed=i))
    monkeypatch.setattr(config, "EXTRA_DATA_ROOTS", [extra])  # as CVD_DATA_ROOTS=... would
    at = open_app()
    at.radio(key="dataset_choice").set_value("folder").run()
    at.text_input(key="dataset_folder").set_value(str(extra / "pets")).run()
    assert dataset_scans().get(extra / "pets").wait(60)
    at.run()
    assert not at.error and [m.value for m in at.metric][:2] == ["3", "3"]


def test_a_scan_can_be_cancelled_and_started_again(train_zip, app_dirs, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_DATASET", train_zip)  # as CVD_DEFAULT_DATASET would: 20,000 photos
    dataset_scans().forget(train_zip)
    try:
        at = open_app()
        cancel = at.button(key="dataset_scan_cancel")  # the scan runs in the background; the page did not wait
        cancel.click().run()
        assert not at.exception and "The scan of train.zip was cancelled." in texts(at.info)
        assert dataset_scans().get(train_zip).cancelled  # the sidebar's polling does not restart it
        at.button(key="dataset_scan_again").click().run()
        again = dataset_scans().get(train_zip)
        assert not again.cancelled and at.button(key="dataset_scan_cancel")
    finally:
        dataset_scans().cancel(train_zip)
        dataset_scans().forget(train_zip)


def test_a_cancelled_scan_stops_early_and_keeps_no_manifest(train_zip):
    scans = DatasetScans()
    state = scans.get(train_zip)
    scans.cancel(train_zip)
    assert state.finished and state.cancelled and state.error == "train.zip: scan cancelled"
    for thread in [t for t in threading.enumerate() if t.name == "dataset-scan"]:
        thread.join(120)
    assert state.manifest is None and state.done < 20_000
    assert scans.get(train_zip) is state  # stays cancelled until forgotten
    scans.forget(train_zip)
    assert scans.get(train_zip) is not state
    scans.cancel(train_zip)


# ---- Odd state --------------------------------------------------------------------------------------------------


def test_a_symlinked_or_half_written_run_folder_renders_as_a_message(saved_run, app_dirs, tmp_path):
    outside = tmp_path / "outside-run"
    shutil.copytree(saved_run.path, outside)
    (app_dirs.runs / "20990101-000000-seed-link").symlink_to(outside)
    (app_dirs.runs / "20990101-000000-seed-half").mkdir()  # a run that crashed before writing run.json
    damaged = app_dirs.runs / "20990101-000000-seed-dmgd"
    shutil.copytree(saved_run.path, damaged)
    (damaged / "run.json").write_text('{"config": {"pres')  # cut off mid-write

    at = open_app("pages/runs.py")
    assert not at.exception
    warning = texts(at.warning)
    assert "`20990101-000000-seed-link`: a symbolic link" in warning
    assert "`20990101-000000-seed-half`: no run.json" in warning and str(outside) not in warning
    assert at.dataframe[0].value.run.tolist() == [damaged.name, saved_run.id]
    at.selectbox(key="runs_selected").set_value(damaged.name).run()
    assert not at.exception and f"{damaged.name}: its run.json cannot be read" in texts(at.warning)


def test_a_run_deleted_by_another_session_gives_a_message(saved_run, app_dirs):
    alice, bob = open_app("pages/runs.py"), open_app("pages/runs.py")
    alice.selectbox(key="runs_selected").set_value(saved_run.id).run()
    bob.button(key="runs_delete").click().run()
    bob.button(key="runs_delete_confirm").click().run()
    alice.run()
    assert not alice.exception and "No saved runs yet" in texts(alice.info)


def test_a_deleted_dataset_and_a_missing_or_damaged_model_give_messages(dataset, saved_run, bad_inputs, small_zip):
    alice = open_app()
    drop(alice, "class-folders.zip", (bad_inputs / "class-folders.zip").read_bytes())
    upload = uploads.uploads(owner_of(alice))[0]
    shutil.rmtree(upload.path.parent)  # removed behind the session's back (the sweep, or by hand)
    alice.run()
    assert not alice.exception and "class-folders.zip is no longer there" in texts(alice.warning)
    alice.switch_page("pages/train.py").run()
    assert not alice.exception and "Dataset: **train.zip**" in texts(alice.caption)

    promote_run(saved_run, config.DEFAULT_MODEL)
    alice.switch_page("pages/predict.py").run()
    alice.selectbox(key="predict_model").set_value(saved_run.id).run()
    RunStore().delete(saved_run.id)
    alice.run()
    assert not alice.exception and f"The model you picked, {saved_run.id}, is no longer" in texts(alice.warning)
    assert alice.selectbox(key="predict_model").value == registry.DEFAULT_KEY

    config.DEFAULT_MODEL.write_bytes(b"PK\x03\x04 half a model file")  # a damaged shipped model
    alice.run()
    photo = Source(small_zip).read("train/cat.1001.jpg")
    alice.file_uploader(key="predict_files").set_value(("cat.jpg", photo, "image/jpeg")).run()
    assert not alice.exception
    assert "The shipped default model could not be loaded: its file is damaged" in texts(alice.error)
