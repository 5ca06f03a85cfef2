"""The Runs page offers every run in every export format, built only when asked, and what it downloads runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from app_session import open_app
from streamlit.testing.v1 import AppTest

from core.data import Source, iter_inputs
from core.export import FORMATS, export_bundle, export_path, verify_export
from core.fastpath import current_export, open_predictor

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def open_runs() -> AppTest:
    return open_app("pages/runs.py", timeout=600)


def downloads(at: AppTest) -> list[str]:
    return [button.key for button in at.download_button if button.key.startswith("runs_export_")]


def builds(at: AppTest) -> list[str]:
    return [button.key for button in at.button if button.key.startswith("runs_export_")]


def test_each_export_is_built_on_demand_and_then_offered_for_download(saved_run):
    at = open_runs()
    assert at.selectbox(key="runs_selected").value == saved_run.id
    # Its ONNX export is there already (the fast path's): offered at once. The others are built by nobody yet.
    assert downloads(at) == ["runs_export_onnx_download"]
    assert builds(at) == ["runs_export_saved_model", "runs_export_litert"]
    assert not export_path(saved_run.model_path, "litert").exists()
    assert not export_path(saved_run.model_path, "saved_model").exists()

    at.button(key="runs_export_litert").click().run()
    assert not at.exception and not at.error
    assert downloads(at) == ["runs_export_onnx_download", "runs_export_litert_download"]
    assert builds(at) == ["runs_export_saved_model"]
    litert = current_export(saved_run.model_path, "litert")
    assert litert is not None and verify_export(litert, saved_run.model_path)["format"] == "litert"

    at.button(key="runs_export_saved_model").click().run()
    assert downloads(at) == [f"runs_export_{fmt}_download" for fmt in FORMATS] and builds(at) == []
    assert not at.error
    with zipfile.ZipFile(io.BytesIO(export_bundle(current_export(saved_run.model_path, "saved_model")))) as bundle:
        names = set(bundle.namelist())
    assert {"model_saved_model/saved_model.pb", "model_saved_model.json", "predict_saved_model.py"} <= names


def test_a_damaged_export_is_not_offered_until_it_is_built_again(saved_run):
    onnx = export_path(saved_run.model_path, "onnx")
    onnx.write_bytes(onnx.read_bytes()[:1000])
    at = open_runs()
    assert downloads(at) == [] and builds(at) == [f"runs_export_{fmt}" for fmt in FORMATS]  # never handed out
    at.button(key="runs_export_onnx").click().run()
    assert downloads(at) == ["runs_export_onnx_download"] and verify_export(onnx, saved_run.model_path)


@pytest.mark.browser
def test_the_downloaded_onnx_zip_loads_in_onnx_runtime_and_its_script_predicts_what_the_app_predicts(
    saved_run, app_dirs, small_zip, tmp_path
):
    import onnxruntime as ort
    from harness import IDLE, launch_chromium, running_server, screenshot
    from playwright.sync_api import sync_playwright

    env = {
        "CVD_DATA_DIR": str(app_dirs.data),
        "CVD_RUNS_DIR": str(app_dirs.runs),
        "CVD_MODELS_DIR": str(app_dirs.models),
    }
    with running_server(env, tmp_path / "server.log") as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
        page.set_default_timeout(300_000)
        page.goto(f"{url}/runs")
        page.wait_for_selector(IDLE)
        button = page.get_by_test_id("stDownloadButton").filter(has_text="Download ONNX (.zip)")
        with page.expect_download() as info:
            button.click()
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        screenshot(page, ARTIFACTS / "runs-exports.png")
        browser.close()
    assert saved.name == f"{saved_run.id.lower()}-onnx.zip"

    kit = tmp_path / "kit"
    with zipfile.ZipFile(saved) as bundle:
        bundle.extractall(kit)
    session = ort.InferenceSession(str(kit / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", ["batch", 80, 80, 1])
    assert verify_export(kit / "model.onnx")["source"]["file"] == "model.keras"

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("train/cat.1001.jpg", "train/dog.1001.jpg", "train/dog.1002.jpg"):
        (photos / Path(name).name).write_bytes(Source(small_zip).read(name))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, kit / "predict_onnx.py", photos], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in proc.stdout.splitlines()[1:]]
    app = open_predictor(saved_run.model_path)
    for (file, label, prob, _), expected in zip(rows, app.predict_many(iter_inputs(r[0] for r in rows)), strict=True):
        assert expected.file == file and label == expected.label and abs(float(prob) - expected.prob_dog) <= 1e-4
    assert len(rows) == 3
