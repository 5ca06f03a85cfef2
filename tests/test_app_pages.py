"""Every dashboard page under Streamlit's AppTest: it renders with and without data, and its flows work."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_session import APP, open_app, texts

from core import config, registry
from core.data import Source
from core.metrics import recorded_accuracies
from core.runs import RunStore, promote_run
from ui.resources import dataset_scans
from ui.status import duration

PAGES = ["pages/dataset.py", "pages/train.py", "pages/predict.py", "pages/runs.py"]
HOSTILE = {"zero-byte.jpg": "empty file", "text-named.jpg": "not an image", "truncated.jpg": "truncated"}


def sidebar() -> str:
    """The sidebar's text as a fresh tab shows it (AppTest keeps no sidebar after switch_page)."""
    at = open_app()
    progress = "\n".join(p.text for p in at.get("progress"))
    return "\n".join([texts(at.sidebar.get("markdown")), texts(at.caption), progress])


def photo(name: str, source: Path) -> bytes:
    return Source(source).read(name)


@pytest.fixture
def dataset(small_zip, app_dirs) -> Path:
    """small_zip as the default dataset (data/train.zip), already scanned."""
    link = app_dirs.data / "train.zip"
    link.symlink_to(small_zip)
    assert dataset_scans().get(link).wait(60)
    return link


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_a_dataset_or_a_model(page, app_dirs):
    at = open_app(page)
    shown = texts(at.info)
    if page == "pages/dataset.py":
        assert "train.zip" in shown and str(app_dirs.data / "train.zip") in shown
    elif page == "pages/train.py":
        assert "Choose a dataset" in shown
        assert at.button(key="train_start").disabled
    elif page == "pages/predict.py":
        assert "No model yet" in shown
    else:
        assert "No saved runs" in shown
    status = sidebar()
    assert "None yet: see the Dataset page" in status and "None yet: train one" in status


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_a_dataset_and_a_model(page, dataset, saved_run):
    at = open_app(page)
    assert not at.info and not at.error
    status = sidebar()
    assert "150 cats · 150 dogs · 0 skipped" in status
    app, _ = recorded_accuracies(saved_run.meta)  # as the app predicts, measured when the run ended
    assert f"{app.headline} right on the 60 photos of small-train.zip held out from training" in status
    assert "No run in progress" in status


def test_dataset_summary_browse_filters_and_the_models_view(dataset):
    at = open_app()
    assert [m.value for m in at.metric] == ["150", "150", "0", "0"]
    assert len(at.get("vega_lite_chart")) == 2  # images per class, image sizes
    assert len(at.image) == 24 and "300 matching · page 1 of 13" in texts(at.caption)
    assert "All 300 readable photos are 200x200 px." in texts(at.caption)  # one dot in the chart, said in words

    at.selectbox(key="dataset_class").set_value("dog").run()
    assert "150 matching" in texts(at.caption)
    assert all("dog." in c for c in texts(at.caption).splitlines() if ".jpg" in c)
    at.text_input(key="dataset_search").set_value("dog.1001.").run()
    assert "1 matching" in texts(at.caption) and len(at.image) == 1
    at.toggle(key="dataset_model_view").set_value(True).run()
    assert len(at.image) == 2  # the photo and, beside it, the 80x80 grayscale input
    assert "80x80 grayscale" in at.toggle(key="dataset_model_view").label


def test_dataset_lists_skipped_files_with_their_reasons(bad_inputs, app_dirs, monkeypatch):
    monkeypatch.setattr(config, "EXTRA_DATA_ROOTS", [bad_inputs])  # as CVD_DATA_ROOTS would
    at = open_app()
    at.radio(key="dataset_choice").set_value("folder").run()
    at.text_input(key="dataset_folder").set_value(str(bad_inputs / "class-folders.zip")).run()
    assert dataset_scans().get(bad_inputs / "class-folders.zip").wait(60)
    at.run()
    assert not at.exception
    problems = at.dataframe[0].value
    assert len(problems) == 1 and problems.reason.iloc[0].startswith(("corrupt", "truncated", "not an image"))
    at.switch_page("pages/train.py").run()
    assert "Dataset: **class-folders.zip**" in texts(at.caption)  # the session's dataset follows the choice


def test_a_typed_folder_is_validated(app_dirs, jpeg):
    cats = app_dirs.data / "cats-only" / "cat"
    cats.mkdir(parents=True)
    (cats / "1.jpg").write_bytes(jpeg)
    at = open_app()
    at.radio(key="dataset_choice").set_value("folder").run()
    at.text_input(key="dataset_folder").set_value(str(app_dirs.data / "nowhere")).run()
    assert texts(at.error) == "data/nowhere: no such folder or zip"
    at.text_input(key="dataset_folder").set_value("cats-only").run()  # relative: read from the data folder
    assert dataset_scans().get(cats.parent).wait(60)
    at.run()
    assert "cats-only: needs photos of both classes" in texts(at.error)
    assert "it has 1 usable cat and 0 usable dog photos" in texts(at.error)


def test_a_dropped_zip_is_kept_and_becomes_the_dataset(small_zip, app_dirs):
    import hashlib

    at = open_app()
    at.file_uploader(key="dataset_upload").set_value(("notes.zip", b"just text", "application/zip")).run()
    assert texts(at.error) == "notes.zip: not a readable zip file"

    at.file_uploader(key="dataset_upload").set_value(("my-pets.zip", small_zip.read_bytes(), "application/zip"))
    at.run()
    kept = app_dirs.data / "uploads" / hashlib.sha256(small_zip.read_bytes()).hexdigest() / "my-pets.zip"
    assert kept.exists() and at.radio(key="dataset_choice").value == str(kept)
    assert dataset_scans().get(kept).wait(60)
    at.run()
    assert [m.value for m in at.metric][:2] == ["150", "150"]
    at.switch_page("pages/train.py").run()
    assert "Dataset: **my-pets.zip**" in texts(at.caption)


def test_choosing_a_preset_loads_its_settings(dataset):
    from core.settings import TrainConfig

    at = open_app("pages/train.py")
    assert at.slider(key="train_epochs").value == 10  # the seed tutorial's defaults
    assert at.select_slider(key="train_image_size").value == 80
    at.selectbox(key="train_preset").set_value("improved").run()
    improved = TrainConfig.for_preset("improved")
    assert at.slider(key="train_epochs").value == improved.epochs
    assert at.slider(key="train_batch_size").value == improved.batch_size
    assert at.select_slider(key="train_image_size").value == improved.image_size
    assert at.radio(key="train_color_mode").value == improved.color_mode
    assert at.toggle(key="train_augment").value is True
    assert at.number_input(key="train_time_budget_min").value == 0
    at.selectbox(key="train_preset").set_value("best").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="train_time_budget_min").value == TrainConfig.for_preset("best").time_budget_min
    assert at.session_state["train_net.widths"] == TrainConfig.for_preset("best").net.widths  # the whole tree
    best = TrainConfig.for_preset("best")
    assert f"for {best.epochs} epochs or {best.time_budget_min:g} minutes" in texts(at.caption)
    assert "10% for validation and 4% for calibration, in " in texts(at.caption)  # and the precision auto chose
    at.number_input(key="train_time_budget_min").set_value(0).run()  # 0 turns the budget off
    assert f"for {best.epochs} epochs in batches" in texts(at.caption)
    at.slider(key="train_epochs").set_value(1).run()
    assert "for 1 epoch in batches" in texts(at.caption)


@pytest.mark.slow
def test_train_with_the_sliders_see_it_finish_and_find_it_on_the_runs_page(dataset, app_dirs, training):
    at = open_app("pages/train.py")
    at.slider(key="train_epochs").set_value(1)
    at.slider(key="train_batch_size").set_value(16)
    at.slider(key="train_validation_split").set_value(0.25)
    at.button(key="train_start").click().run()
    job = training.current
    assert (job.config.preset, job.config.epochs, job.config.batch_size) == ("seed", 1, 16)
    assert job.config.validation_split == 0.25 and job.config.image_size == 80 and job.config.limit is None
    assert job.wait(300)

    at.run()
    state = job.snapshot()
    assert state.status == "finished", state.error
    assert "Run finished" in texts(at.success) and str(state.result.run.path) in texts(at.success)
    labels = [m.label for m in at.metric]
    assert labels == ["Accuracy on held-out photos", "Time", "Images per second", "Epochs"]
    app, single = recorded_accuracies(state.result.run.meta)
    assert app.n == single.n == state.n_val == 76  # 38 of each class's 150 held out
    assert f"Accuracy {app.headline} right on {app.on}." in texts(at.caption)
    shown_time = at.metric[1].value  # one time for the run, in the progress line and in the summary
    assert shown_time == duration(state.elapsed_s) and f"after {shown_time}" in at.get("progress")[0].text
    # epoch curves, per-batch loss and the confusion matrix of its held-out photos; the seed's rate is constant
    assert len(at.get("vega_lite_chart")) == 3 and "Learning rate: 0.001 throughout" in texts(at.caption)
    assert sum(map(sum, state.result.metrics["confusion"])) == 76

    at.switch_page("pages/runs.py").run()
    assert state.result.run.id in at.dataframe[0].value.run.tolist()
    at.switch_page("pages/train.py").run()
    assert at.slider(key="train_epochs").value == 1  # settings survive a page switch


@pytest.mark.slow
def test_a_second_start_from_another_tab_gets_a_clear_message_and_stop_ends_the_run(dataset, training):
    at, other_tab = open_app("pages/train.py"), open_app("pages/train.py")
    at.slider(key="train_epochs").set_value(50)
    at.number_input(key="train_limit").set_value(100)
    at.button(key="train_start").click().run()
    job = training.current
    assert job.running and not at.button(key="train_stop").disabled

    other_tab.button(key="train_start").click().run()
    assert "already in progress" in texts(other_tab.warning) and not other_tab.exception
    assert training.current is job

    at.button(key="train_stop").click().run()
    assert job.wait(300)
    at.run()
    assert job.snapshot().status == "stopped" and at.button(key="train_stop").disabled
    assert "stopped" in (texts(at.success) + texts(at.warning)).lower()  # saved if an epoch finished, else not


def test_predict_labels_a_real_photo(saved_run, small_zip):
    from core.predict import Predictor

    at = open_app("pages/predict.py")
    assert at.selectbox(key="predict_model").value == saved_run.id
    data = photo("train/dog.1001.jpg", small_zip)
    at.file_uploader(key="predict_files").set_value(("dog.jpg", data, "image/jpeg"))
    at.run()
    assert not at.exception and not at.error
    # The page's label is the model's own answer for this photo (a barely trained model may well say cat).
    expected = Predictor(saved_run.model_path).predict_bytes(data, "dog.jpg")
    assert f":material/pets: {expected.label}]" in texts(at.markdown)
    assert len(at.image) == 1 and "P(dog) = " in at.get("progress")[0].text
    assert at.dataframe[0].value.file.tolist() == ["dog.jpg"]


def test_hostile_files_get_their_own_errors_and_the_rest_are_still_predicted(saved_run, small_zip, bad_inputs):
    files = [("cat.jpg", photo("train/cat.1001.jpg", small_zip), "image/jpeg")]
    files += [(name, (bad_inputs / name).read_bytes(), "image/jpeg") for name in HOSTILE]
    files += [(name, (bad_inputs / name).read_bytes(), "image/png") for name in ("bomb-20000x20000.png", "rgba.png")]
    at = open_app("pages/predict.py")
    at.file_uploader(key="predict_files").set_value(files).run()

    assert not at.exception
    errors = texts(at.error)
    for name, reason in {**HOSTILE, "bomb-20000x20000.png": "too many pixels"}.items():
        assert f"**{name}**" in errors and reason in errors
    assert len(at.error) == 4 and len(at.image) == 2  # the photo and the transparent PNG
    table = at.dataframe[0].value
    assert table.file.tolist() == [f[0] for f in files]
    assert (table.label != "").sum() == 2 and (table.error != "").sum() == 4  # empty cells, never "None"
    assert at.download_button(key="predict_download")


def test_the_shipped_default_comes_first_and_a_pick_sets_this_sessions_model_only(saved_run):
    promote_run(saved_run, config.DEFAULT_MODEL)
    at = open_app("pages/predict.py")
    assert at.selectbox(key="predict_model").options[0].startswith("Shipped default")
    assert at.selectbox(key="predict_model").value == registry.DEFAULT_KEY
    assert "Shipped default" in sidebar()
    at.selectbox(key="predict_model").set_value(saved_run.id).run()
    assert registry.default_model().key == registry.DEFAULT_KEY  # the server's default is untouched
    assert "**Shipped default**" in sidebar()  # and a fresh tab (a new session) still gets it
    at.switch_page("pages/runs.py").run()  # while this session keeps its pick on every page
    assert f"This session predicts with **{saved_run.id}**" in texts(at.caption)
    at.switch_page("pages/predict.py").run()
    assert at.selectbox(key="predict_model").value == saved_run.id


def test_a_camera_photo_is_labeled(saved_run, small_zip):
    at = open_app("pages/predict.py")
    at.toggle(key="predict_use_camera").set_value(True).run()
    at.camera_input(key="predict_camera").set_value(("shot.jpg", photo("train/cat.1002.jpg", small_zip), "image/jpeg"))
    at.run()
    assert not at.exception and not at.error
    assert at.dataframe[0].value.file.tolist() == ["shot.jpg"]


def test_where_the_model_looked_overlays_a_heatmap_with_a_legend(saved_run, small_zip):
    at = open_app("pages/predict.py")
    at.file_uploader(key="predict_files").set_value(("dog.jpg", photo("train/dog.1002.jpg", small_zip), "image/jpeg"))
    at.toggle(key="predict_gradcam").set_value(True).run()
    assert not at.exception and not at.warning, texts(at.warning)
    assert "Grad-CAM" in texts(at.caption)
    assert len(at.image) == 2  # the legend strip and the overlaid photo


def test_a_zip_of_unlabeled_photos_gives_a_kaggle_submission(saved_run, test_zip):
    buffer = io.BytesIO()
    with zipfile.ZipFile(test_zip) as src, zipfile.ZipFile(buffer, "w") as dst:
        for name in sorted(n for n in src.namelist() if n.endswith(".jpg"))[:12]:
            dst.writestr(name, src.read(name))
        dst.writestr("test1/999999.jpg", b"")  # one hostile entry
    at = open_app("pages/predict.py")
    at.file_uploader(key="predict_zip").set_value(("test1.zip", buffer.getvalue(), "application/zip")).run()
    assert not at.exception
    assert "13 rows in submission.csv: 12 photos labeled; 1 could not be read" in texts(at.success)
    assert at.download_button(key="predict_submission_download")
    assert at.dataframe[0].value.error.tolist() == ["empty file (0 bytes)"]


def test_runs_page_evaluates_activates_and_deletes_a_run(saved_run, dataset, app_dirs):
    second = app_dirs.runs / f"{saved_run.id[:-5]}-zzzz"
    shutil.copytree(saved_run.path, second)  # sorts first, as a newer run would
    at = open_app("pages/runs.py")
    assert at.dataframe[0].value.run.tolist() == [second.name, saved_run.id]
    assert at.multiselect(key="runs_compare").value == [second.name, saved_run.id]
    assert len(at.get("vega_lite_chart")) == 1  # the overlaid curves

    at.selectbox(key="runs_selected").set_value(saved_run.id).run()
    assert at.selectbox(key="runs_eval_dataset").value == "held-out"  # its own held-out photos come first
    at.toggle(key="runs_evaluate").set_value(True).run()
    assert not at.exception and not at.info
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Accuracy", "Cats right", "Dogs right", "Calibration error"}
    app, _ = recorded_accuracies(saved_run.meta)  # the same number the table and the sidebar show
    assert metrics["Accuracy"] == f"{app.value:.1%}"
    assert f"Accuracy {app.headline} right on the 60 photos of train.zip held out from training" in texts(at.caption)
    assert len(at.get("vega_lite_chart")) == 3  # + the confusion matrix and the reliability diagram
    wrong = [c for c in texts(at.caption).splitlines() if ", P(dog) = " in c]
    assert len(wrong) == min(len(at.image), 24)

    at.button(key="runs_use").click().run()
    assert at.button(key="runs_use").disabled and registry.default_model().key == second.name  # this session only
    at.button(key="runs_make_default").click().run()
    assert "default model for everyone" in texts(at.warning) and registry.default_model().key == second.name
    at.button(key="runs_make_default_cancel").click().run()
    assert not at.warning and registry.default_model().key == second.name
    at.button(key="runs_make_default").click().run()
    at.button(key="runs_make_default_confirm").click().run()
    assert registry.default_model().key == saved_run.id and at.button(key="runs_make_default").disabled
    assert "Default model for everyone: **" + saved_run.id in texts(at.caption)

    at.button(key="runs_delete").click().run()
    assert f"Delete **{saved_run.id}**" in texts(at.warning)
    at.button(key="runs_delete_cancel").click().run()
    assert saved_run.path.exists() and not at.warning
    at.button(key="runs_delete").click().run()
    at.button(key="runs_delete_confirm").click().run()
    assert not saved_run.path.exists() and not at.exception
    assert [r.id for r in RunStore().runs()] == [second.name]
    assert at.dataframe[0].value.run.tolist() == [second.name]


def test_a_run_trained_elsewhere_says_where_to_find_its_dataset(saved_run, app_dirs):
    at = open_app("pages/runs.py")
    assert "trained on small-train.zip, which is not open here" in texts(at.caption)
    assert "No dataset is open here" in texts(at.info)


@pytest.mark.slow
def test_the_sidebar_shows_a_run_in_progress(dataset, training):
    from core.settings import TrainConfig

    job = training.start(dataset, TrainConfig(epochs=50, limit=100, batch_size=8), runs_dir=config.RUNS_DIR)
    deadline = time.time() + 120
    while not job.snapshot().batch_log and time.time() < deadline:
        time.sleep(0.05)
    status = sidebar()
    assert "Training: epoch " in status and "ETA" in status
    job.stop()
    assert job.wait(120)


@pytest.mark.slow
@pytest.mark.parametrize(("page", "element"), [("pages/dataset.py", "metric"), ("pages/train.py", "slider")])
def test_the_dataset_and_train_pages_render_without_loading_tensorflow(dataset, saved_run, page, element):
    # In a fresh interpreter: this test process has long imported TensorFlow for training. The Train page
    # lists the presets from core.settings, which does not import Keras; TensorFlow loads when a run starts.
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout=120).run()\n"
        f"at = at.switch_page({page!r}).run() if {page!r} != 'pages/dataset.py' else at\n"
        f"assert not at.exception and at.{element}, 'the page did not render'\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    # The server's background warm-up of the model (ui.resources.warm_up_model) loads TensorFlow on purpose,
    # after the first page; it is off here, where the question is what the pages themselves import.
    env = {**os.environ, "CVD_WARM_UP_MODEL": "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def test_script_runs_leave_the_keras_state_of_other_threads_alone(dataset):
    # Streamlit clears the Keras session after each run unless the app stops it: the layer-name counters a
    # training thread relies on would restart mid-build, and TensorFlow's kernel cache would be emptied.
    import keras

    before = keras.layers.Dense(1).name
    open_app("pages/train.py").run()
    after = keras.layers.Dense(1).name
    assert after not in ("dense", before), (before, after)


# --- honest numbers, every format, runs that saved no model ---------------------------------------------------------


@pytest.fixture
def shipped(app_dirs) -> Path:
    """The project's real shipped model (models/default.keras with its JSON and curves) as this test's default."""
    for name in ("default.keras", "default.json", "default-history.csv"):
        (app_dirs.models / name).symlink_to(config.ROOT / "models" / name)
    return app_dirs.models / "default.keras"


@pytest.fixture
def stopped_run(small_zip, app_dirs):
    """A real run stopped during its first batch: it saved its batches and settings, and no model."""
    import threading

    from core.settings import TrainConfig
    from core.train import train

    cancel = threading.Event()
    result = train(
        small_zip,
        TrainConfig(epochs=3, limit=100, batch_size=8),
        progress=lambda event: cancel.set() if event.kind == "batch" else None,
        cancel=cancel,
        runs_dir=app_dirs.runs,
    )
    assert not result.run.has_model
    return result.run


def keys(widgets) -> list:
    return [w.key for w in widgets]


@pytest.mark.slow
def test_runs_page_evaluates_the_shipped_model_on_a_small_labeled_zip(shipped, dataset):
    from core.metrics import expected_calibration_error, wilson_interval
    from core.predict import Predictor, evaluate

    at = open_app("pages/runs.py")
    table = at.dataframe[0].value
    shipped_meta = json.loads(config.DEFAULT_MODEL_META.read_text())
    done, bound = shipped_meta["metrics"]["epochs_completed"], shipped_meta["config"]["epochs"]
    assert table.run.tolist() == ["Shipped default"] and table.epochs[0] == f"{done} / {bound}"  # beside the runs
    assert at.selectbox(key="runs_selected").value == registry.DEFAULT_KEY
    # The session's dataset is not the one it trained on, so it is offered whole.
    assert at.selectbox(key="runs_eval_dataset").value == str(dataset)
    at.toggle(key="runs_evaluate").set_value(True).run()
    assert not at.exception and not at.info

    expected = evaluate(Predictor(shipped), dataset)  # the same 300 photos, predicted outside the page
    assert expected.n == 300 and expected.accuracy >= 0.9
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy"] == f"{expected.accuracy:.1%}"
    assert metrics["Cats right"] == f"{expected.confusion[0][0] / 150:.1%}"
    assert metrics["Dogs right"] == f"{expected.confusion[1][1] / 150:.1%}"
    ece = expected_calibration_error(expected.predictions.prob_dog, expected.predictions.true)
    assert metrics["Calibration error"] == f"{ece:.1%}"
    low, high = wilson_interval(expected.correct, 300)
    interval = f"(95% CI {low * 100:.1f}–{high * 100:.1f}%)"
    assert f"{interval} right on the 300 labeled photos of train.zip" in texts(at.caption)
    assert len(at.get("vega_lite_chart")) == 3  # its curves, the confusion matrix, the reliability diagram
    assert "called a dog" in texts(at.caption) and "sure it was right" in texts(at.caption)


def test_as_the_model_sees_it_follows_the_active_model_not_the_train_pages_settings(shipped, dataset):
    at = open_app("pages/train.py")
    assert at.select_slider(key="train_image_size").value == 80  # the Train page at the seed's 80x80 grayscale
    at.switch_page("pages/dataset.py").run()
    at.text_input(key="dataset_search").set_value("dog.1001.").run()
    at.toggle(key="dataset_model_view").set_value(True).run()
    assert "112x112 rgb" in at.toggle(key="dataset_model_view").label  # the shipped model's input
    assert not at.exception and len(at.image) == 2


def test_every_format_the_pipeline_decodes_is_accepted_and_a_zip_is_told_where_to_go(saved_run, bad_inputs, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = {}
    for name, mode in [("anim.gif", "P"), ("scan.tif", "RGB"), ("dot.png", "RGB")]:
        size = (1, 1) if name == "dot.png" else (64, 48)
        buffer = io.BytesIO()
        picture = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).convert(mode)
        picture.save(buffer, {"gif": "GIF", "tif": "TIFF", "png": "PNG"}[name.rsplit(".", 1)[1]])
        pictures[name] = buffer.getvalue()
    files = [(name, data, "image/*") for name, data in pictures.items()]
    files += [(name, (bad_inputs / name).read_bytes(), "image/png") for name in ("gray16.png", "rgba.png")]
    files += [("macos-made.zip", (bad_inputs / "macos-made.zip").read_bytes(), "application/zip")]
    at = open_app("pages/predict.py")
    uploader = at.file_uploader(key="predict_files")
    assert {f".{ext}" for ext in ("gif", "tif", "tiff", "png", "webp", "bmp", "zip")} <= set(uploader.allowed_type)
    uploader.set_value(files).run()

    assert not at.exception
    table = at.dataframe[0].value
    assert table.file.tolist() == [f[0] for f in files]
    assert ((table.label != "") ^ (table.error != "")).all()  # a label or a reason, each; empty cells, not None
    labeled = {row.file for row in table.itertuples() if row.label}
    assert {"anim.gif", "scan.tif", "gray16.png", "rgba.png"} <= labeled
    zip_error = [e.value for e in at.error if "macos-made.zip" in e.value]
    assert len(zip_error) == 1 and "A whole zip of photos" in zip_error[0] and "Dataset page" in zip_error[0]
    cards = len([m for m in at.markdown if ":material/pets:" in str(m.value)]) + len(at.error)
    assert cards == len(files)


def test_a_zip_that_cannot_be_read_or_has_no_kaggle_ids_says_so_and_offers_no_submission(saved_run, small_zip):
    at = open_app("pages/predict.py")
    at.file_uploader(key="predict_zip").set_value(("not-a-zip.zip", b"plain text", "application/zip")).run()
    assert texts(at.error).startswith("not-a-zip.zip: not a readable zip file") and "upload.zip" not in texts(at.error)

    buffer = io.BytesIO()
    with zipfile.ZipFile(small_zip) as src, zipfile.ZipFile(buffer, "w") as dst:
        for name in ("train/cat.1001.jpg", "train/dog.1001.jpg"):
            dst.writestr(name, src.read(name))
    at.file_uploader(key="predict_zip").set_value(("pets.zip", buffer.getvalue(), "application/zip")).run()
    assert not at.exception and not at.success
    assert "2 photos labeled in pets.zip, but none is named like Kaggle's test photos" in texts(at.info)
    assert "predict_submission_download" not in keys(at.download_button)
    assert "predict_zip_download" in keys(at.download_button)
    assert at.dataframe[0].value.file.tolist() == ["train/cat.1001.jpg", "train/dog.1001.jpg"]


@pytest.mark.slow
def test_a_run_stopped_before_its_first_epoch_keeps_its_batches_and_is_never_offered(stopped_run, saved_run, dataset):
    at = open_app("pages/runs.py")
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[stopped_run.id, "epochs"] == "0 / 3" and pd.isna(table.loc[stopped_run.id, "accuracy"])
    assert at.multiselect(key="runs_compare").value == [saved_run.id]  # only runs with curves are pre-selected
    at.multiselect(key="runs_compare").set_value([stopped_run.id, saved_run.id]).run()
    assert f"Nothing to draw for {stopped_run.id}: stopped before its first epoch ended" in texts(at.caption)

    at.selectbox(key="runs_selected").set_value(stopped_run.id).run()
    assert "stopped before its first epoch ended: it saved no model" in texts(at.warning)
    logged = len(stopped_run.batches)
    assert logged >= 1 and f"Training loss of the {logged} batch" in texts(at.markdown)
    assert "0 of 3 epochs" in texts(at.caption)
    assert "runs_evaluate" not in keys(at.toggle) and "runs_download" not in keys(at.download_button)

    at.switch_page("pages/predict.py").run()
    assert not any(stopped_run.id in option for option in at.selectbox(key="predict_model").options)


def test_the_train_page_estimates_a_run_from_this_machines_pace(saved_run, dataset):
    at = open_app("pages/train.py")
    pace = saved_run.meta["metrics"]["train_images_per_s"]
    shown = texts(at.caption)
    assert f"10 epochs of 240 photos at {pace:,.0f} images/s, the pace of run {saved_run.id} here" in shown
    at.selectbox(key="train_preset").set_value("improved").run()
    assert "No run like this has been timed on this machine yet" in texts(at.caption)


def test_the_server_warms_its_default_model_after_the_first_page(saved_run, monkeypatch):
    from ui import resources

    monkeypatch.setattr(config, "WARM_UP_MODEL", True)
    monkeypatch.setattr(resources, "_warm_up_thread", None)
    assert not resources.model_loaded(saved_run.model_path)
    open_app()  # the Dataset page, with no dataset: nothing on it needs the model
    assert resources.wait_for_warm_up(120)
    assert resources.model_loaded(saved_run.model_path)
