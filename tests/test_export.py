"""Exports (ONNX, SavedModel, LiteRT) predict what the app predicts on real test1 photos, and are never trusted blindly.

The shipped model is exported once per session into a temp folder; every export is loaded in its own runtime
and compared with `core.predict.Predictor`, and the standalone example scripts run as users run them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import config
from core.config import UNSURE_MARGIN
from core.export import (
    ENGINES,
    ExportError,
    ensure_export,
    export_model,
    export_path,
    file_sha256,
    load_export,
    sidecar_path,
    verify_export,
)
from core.pipeline import ImageError, PipelineConfig, decode, to_model_input
from core.predict import Predictor

SHIPPED = config.DEFAULT_MODEL
SIZE = json.loads(config.DEFAULT_MODEL_META.read_text())["pipeline"]["size"]  # the shipped model's input side
EXAMPLES = config.ROOT / "examples"
TOLERANCE = 1e-4  # |delta P(dog)| an export may differ from the app by (float32 engines reach ~1e-6)
CASES = [(fmt, engine) for fmt, engines in ENGINES.items() for engine in engines]
SCRIPT = {"onnx": "predict_onnx.py", "saved_model": "predict_saved_model.py", "litert": "predict_litert.py"}


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The shipped model exported once in every format, into a temp folder."""
    out = tmp_path_factory.mktemp("exports")
    return {fmt: export_model(SHIPPED, fmt, out) for fmt in ENGINES}


@pytest.fixture(scope="session")
def test1(test_zip) -> tuple[list[str], np.ndarray]:
    """The first 300 photos of test1.zip (original size) decoded to the shipped model's uint8 input."""
    cfg = PipelineConfig(size=SIZE, color_mode="rgb")
    names, pixels = [], []
    with zipfile.ZipFile(test_zip) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".jpg"))[:300]:
            try:
                pixels.append(decode(z.read(name), cfg))
                names.append(name)
            except ImageError:
                continue
    return names, np.stack(pixels)


@pytest.fixture(scope="session")
def predictors() -> dict[str, Predictor]:
    """The app's own predictor on the shipped model, with one look ("off") and with its default flip TTA."""
    return {tta: Predictor(SHIPPED, tta=tta) for tta in ("off", "unsure")}


@pytest.fixture(scope="session")
def app_says(test1, predictors) -> dict[str, np.ndarray]:
    """P(dog) of the test1 photos as the app predicts them, per TTA mode."""
    x = to_model_input(test1[1])
    return {tta: predictor.probabilities(x) for tta, predictor in predictors.items()}


@pytest.fixture(scope="session")
def photo_folder(test_zip, tmp_path_factory) -> Path:
    """A folder a user might point a script at: 12 real test1 photos and a text file named like a photo."""
    folder = tmp_path_factory.mktemp("photos")
    with zipfile.ZipFile(test_zip) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".jpg"))[300:312]:
            (folder / Path(name).name).write_bytes(z.read(name))
    (folder / "notes.jpg").write_text("not a photo")
    return folder


def run(*args, cwd: Path = config.ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


def rows(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "file,label,prob_dog,error"
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert [r["file"] for r in got] == [r["file"] for r in expected]
    for mine, app in zip(got, expected, strict=True):
        assert bool(mine["error"]) == bool(app["error"]), (mine, app)
        if not app["error"]:
            assert mine["label"] == app["label"], (mine, app)
            assert abs(float(mine["prob_dog"]) - float(app["prob_dog"])) <= TOLERANCE, (mine, app)


# --- parity ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "engine"), CASES)
def test_each_export_predicts_what_the_app_predicts_on_real_photos(exports, test1, app_says, fmt, engine):
    model = load_export(exports[fmt], SHIPPED, engine=engine)
    got = model.predict(test1[1])
    expected = app_says["off"]
    assert len(got) == len(expected) == 300
    assert 0.2 < (expected >= 0.5).mean() < 0.8  # both classes are there, so labels can disagree
    assert ((got >= 0.5) == (expected >= 0.5)).all()
    assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_an_exports_flip_tta_is_the_apps(exports, test1, app_says):
    model = load_export(exports["onnx"], SHIPPED)
    unsure = np.abs(app_says["off"] - 0.5) < UNSURE_MARGIN
    assert 5 <= unsure.sum() < 150  # some photos do get their mirrored second look
    got = model.probabilities(test1[1])  # the sidecar's default: "unsure", as the app predicts
    assert ((got >= 0.5) == (app_says["unsure"] >= 0.5)).all()
    assert float(np.abs(got - app_says["unsure"]).max()) <= TOLERANCE
    assert np.array_equal(model.probabilities(test1[1], tta="off")[~unsure], got[~unsure])


def test_the_tta_rule_mirrors_only_unsure_photos_and_averages_the_two_looks():
    from core import tta

    # A "model" that reads how much brighter the left half is: its mirror image gets the opposite answer.
    def left_heavy(pixels: np.ndarray) -> np.ndarray:
        left, right = pixels[:, :, :2].mean(axis=(1, 2, 3)), pixels[:, :, 2:].mean(axis=(1, 2, 3))
        return (left / (left + right)).astype(np.float32)

    pixels = np.ones((4, 2, 4, 1), np.float32)
    pixels[:, :, :2] = np.array([19.0, 1.5, 1.0, 0.1]).reshape(4, 1, 1, 1)  # P = 0.95, 0.6, 0.5, ~0.09
    first = left_heavy(pixels)
    unsure = tta.flip_tta(left_heavy, pixels, mode="unsure", margin=0.4)
    assert unsure[0] == first[0] and unsure[3] == first[3]  # confident: one look
    assert unsure[1] == pytest.approx(0.5) and unsure[2] == pytest.approx(0.5)  # mean of p and 1 - p
    assert tta.flip_tta(left_heavy, pixels, mode="all", margin=0.4) == pytest.approx([0.5] * 4)
    assert np.array_equal(tta.flip_tta(left_heavy, pixels, mode="off", margin=0.4), first)
    assert Path(tta._rule.__file__) == EXAMPLES / "cvd_tta.py"  # the examples' function, not a copy
    with pytest.raises(ValueError, match="tta must be one of"):
        tta.flip_tta(left_heavy, pixels, mode="sometimes")


# --- the sidecar ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(ENGINES))
def test_an_exports_sidecar_says_how_to_use_it_and_what_it_came_from(exports, fmt):
    meta = verify_export(exports[fmt], SHIPPED)
    shipped_meta = json.loads(config.DEFAULT_MODEL_META.read_text())
    assert sidecar_path(exports[fmt]).is_file() and meta["format"] == fmt
    assert meta["input"] == {
        "name": "image",
        "shape": [None, SIZE, SIZE, 3],
        "dtype": "uint8",
        "layout": "NHWC",
        "color": "RGB",
    }
    assert meta["output"]["name"] == "prob_dog"
    assert meta["preprocessing"]["resize"] == {
        "size": [SIZE, SIZE],
        "method": "cv2.INTER_AREA",
        "keep_aspect_ratio": False,
        "crop": None,
    }
    assert "IMREAD_REDUCED" in meta["preprocessing"]["decode"] and "255" in meta["preprocessing"]["scaling"]
    assert meta["labels"]["class_names"] == ["cat", "dog"] and meta["labels"]["threshold"] == 0.5
    assert meta["tta"]["default"] == "unsure" and meta["tta"]["margin"] == UNSURE_MARGIN
    assert meta["accuracy"]["value"] == shipped_meta["metrics"]["accuracy"]
    assert f"{shipped_meta['metrics']['accuracy_n']:,} photos of train.zip" in meta["accuracy"]["measured_on"]
    # Calibrated at the end of training on photos held out of it: training's one look was on the same photos.
    single = meta["accuracy"]["single_look"]
    assert (
        single["value"] == shipped_meta["metrics"]["best_val_accuracy"]
        and "before the calibration" in single["measured_on"]
    )
    assert meta["accuracy"]["calibration"]["method"] == shipped_meta["calibration"]["method"] == "platt"
    assert meta["accuracy"]["calibration"]["calibration_error"] == shipped_meta["metrics"]["calibration_error"]
    assert meta["source"]["sha256"] == file_sha256(SHIPPED) == shipped_meta["model_sha256"]
    assert meta["source"]["preset"] == "best"
    assert {"keras", "tensorflow", "numpy", "opencv"} <= set(meta["versions"])
    assert meta["parity_check"]["max_abs_diff_prob_dog"] <= TOLERANCE
    if fmt == "onnx":
        assert meta["versions"]["onnx_opset"] == 17


def test_the_onnx_graph_takes_uint8_pixels_and_names_its_axes(exports):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", ["batch", SIZE, SIZE, 3])
    assert (out.name, out.shape) == ("prob_dog", ["batch", 1])


# --- the example scripts --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cli_rows(photo_folder) -> list[dict]:
    """What `python -m core predict FOLDER` prints for the photo folder, with the shipped model and default TTA."""
    return rows(run("-m", "core", "predict", photo_folder, "--model", SHIPPED))


@pytest.mark.parametrize(("fmt", "engine"), CASES)
def test_each_example_script_prints_the_rows_python_m_core_predict_prints(exports, photo_folder, cli_rows, fmt, engine):
    got = rows(run(EXAMPLES / SCRIPT[fmt], photo_folder, "--model", exports[fmt], "--engine", engine))
    assert len(got) == 13 and [r["file"] for r in got if r["error"]] == [f"{photo_folder}/notes.jpg"]
    assert_same_rows(got, cli_rows)


def app_rows(predictor: Predictor, folder: Path) -> list[dict]:
    from core.data import iter_inputs

    return [
        {"file": p.file, "label": p.label or "", "prob_dog": p.prob_dog or "", "error": p.error or ""}
        for p in predictor.predict_many(iter_inputs([folder]))
    ]


def test_the_examples_run_from_a_copy_of_their_folder_with_nothing_of_the_project_beside(
    exports, photo_folder, predictors, tmp_path
):
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("cvd_runtime.py", "cvd_tta.py", "predict_onnx.py"):
        shutil.copy(EXAMPLES / name, kit)
    for path in (exports["onnx"], sidecar_path(exports["onnx"])):
        shutil.copy(path, kit)
    proc = run(kit / "predict_onnx.py", "--tta", "off", photo_folder, cwd=tmp_path)  # finds kit/default.onnx
    assert_same_rows(rows(proc), app_rows(predictors["off"], photo_folder))


# --- corrupt, stale, foreign: never trusted -------------------------------------------------------------------------


def refused(proc: subprocess.CompletedProcess, reason: str) -> bool:
    last = proc.stderr.strip().splitlines()[-1]
    return proc.returncode == 2 and "Traceback" not in proc.stderr and last.startswith("error:") and reason in last


def test_a_corrupt_export_is_refused_everywhere_and_rebuilt(tmp_path, test1, app_says, photo_folder):
    model = tmp_path / "mine.keras"
    shutil.copy(SHIPPED, model)
    artifact = ensure_export(model)  # none yet: made beside the model
    assert artifact == tmp_path / "mine.onnx" and sidecar_path(artifact).is_file()
    written = artifact.stat().st_mtime_ns
    assert ensure_export(model) == artifact and artifact.stat().st_mtime_ns == written  # up to date: reused

    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    artifact.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="corrupt"):
        verify_export(artifact, model)
    with pytest.raises(ExportError, match="corrupt"):
        load_export(artifact)
    assert refused(
        run(EXAMPLES / "predict_onnx.py", photo_folder, "--model", artifact), "differ from what was exported"
    )

    assert ensure_export(model) == artifact
    got = load_export(artifact, model).predict(test1[1][:50])
    assert float(np.abs(got - app_says["off"][:50]).max()) <= TOLERANCE


def test_a_stale_export_is_refused_and_rebuilt_from_the_new_model(tmp_path, photo_folder):
    import keras

    from core.model import build_seed, save_model

    model = tmp_path / "mine.keras"
    shutil.copy(SHIPPED, model)
    artifact = ensure_export(model)
    keras.utils.set_random_seed(0)
    save_model(build_seed(PipelineConfig(size=48, color_mode="grayscale")), model)  # a new model, same file name
    with pytest.raises(ExportError, match="stale"):
        verify_export(artifact, model)
    with pytest.raises(ExportError, match="stale"):
        load_export(artifact, model)

    assert ensure_export(model) == artifact
    meta = verify_export(artifact, model)
    assert meta["source"]["sha256"] == file_sha256(model)
    assert meta["input"]["shape"] == [None, 48, 48, 1] and meta["input"]["color"] == "gray"
    # The gray model through the example script, against the app: an untrained net sits near P(dog) = 0.5, so
    # every photo gets its mirrored look, and labels are compared only where float rounding cannot flip them.
    got = rows(run(EXAMPLES / "predict_onnx.py", photo_folder, "--model", artifact))
    expected = app_rows(Predictor(model), photo_folder)
    assert [(r["file"], bool(r["error"])) for r in got] == [(r["file"], bool(r["error"])) for r in expected]
    for mine, app in zip(got, expected, strict=True):
        if not app["error"]:
            assert abs(float(mine["prob_dog"]) - app["prob_dog"]) <= TOLERANCE
            assert mine["label"] == app["label"] or abs(app["prob_dog"] - 0.5) < 1e-3


def test_an_export_without_its_own_sidecar_is_never_loaded(exports, tmp_path, photo_folder):
    lone = tmp_path / "lone.onnx"
    shutil.copy(exports["onnx"], lone)
    with pytest.raises(ExportError, match="missing or unreadable"):
        load_export(lone)
    assert refused(run(EXAMPLES / "predict_onnx.py", photo_folder, "--model", lone), "missing or unreadable")

    sidecar_path(lone).write_text("{not json")
    with pytest.raises(ExportError, match="missing or unreadable"):
        verify_export(lone)
    meta = json.loads(sidecar_path(exports["onnx"]).read_text())
    sidecar_path(lone).write_text(json.dumps({**meta, "format": "litert"}))  # a sidecar that lies about the file
    with pytest.raises(ExportError, match="not the metadata"):
        load_export(lone)
    assert refused(run(EXAMPLES / "predict_litert.py", photo_folder, "--model", lone), "not a litert export")


# --- the command --------------------------------------------------------------------------------------------------


def test_python_m_core_export_writes_each_format_where_out_says(tmp_path, capsys):
    from core.cli import main

    def export(*args) -> tuple[int, str, str]:
        code = main(["export", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out.strip(), err

    assert export("--format", "onnx", "--out", tmp_path / "folder")[:2] == (0, str(tmp_path / "folder/default.onnx"))
    serving = tmp_path / "serving" / "cvd" / "1"  # TF Serving's model/version layout
    for _ in range(2):  # a second export replaces the first
        assert export("--format", "saved_model", "--out", serving)[:2] == (0, str(serving))
    assert (serving / "saved_model.pb").is_file()
    for path in (tmp_path / "folder/default.onnx", serving):
        assert verify_export(path, SHIPPED)["source"]["file"] == "default.keras"
    # --out is the export itself when it names one, else the folder to put it in (a folder of other things too)
    assert export_path(SHIPPED, "litert", tmp_path / "phone.tflite") == tmp_path / "phone.tflite"
    assert export_path(SHIPPED, "saved_model", tmp_path / "folder") == tmp_path / "folder" / "default_saved_model"
    assert export_path(SHIPPED, "onnx") == SHIPPED.with_suffix(".onnx")  # beside the model

    code, out, err = export("--model", tmp_path / "missing.keras", "--format", "onnx")
    assert code == 2 and out == "" and err.startswith("error:") and "no such model file" in err
    with pytest.raises(SystemExit):
        main(["export", "--format", "pickle"])


# --- without TensorFlow ---------------------------------------------------------------------------------------------

TF_FREE = """
import contextlib, io, json, runpy, sys, zipfile
import numpy as np
from core.export import load_export
from core.pipeline import PipelineConfig, decode
from core.tta import flip_tta

artifact, engine, test_zip, folder, size = sys.argv[1:]
model = load_export(artifact, "models/default.keras", engine=engine)
with zipfile.ZipFile(test_zip) as z:
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[:100]
    pixels = np.stack([decode(z.read(n), PipelineConfig(size=int(size), color_mode="rgb")) for n in names])
probs = flip_tta(model.predict, pixels, mode="unsure", margin=model.metadata["tta"]["margin"])
sys.argv = ["predict_onnx.py", folder, "--model", artifact, "--engine", engine]
sys.path.insert(0, "examples")  # as `python examples/predict_onnx.py` would
with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.suppress(SystemExit):
    runpy.run_path("examples/predict_onnx.py", run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"probs": probs.tolist(), "rows": len(printed.getvalue().splitlines()), "loaded": loaded}))
"""


@pytest.mark.parametrize("engine", ENGINES["onnx"])
def test_prediction_runs_without_tensorflow_in_the_process(exports, test_zip, app_says, photo_folder, engine):
    proc = subprocess.run(
        [sys.executable, "-c", TF_FREE, exports["onnx"], engine, test_zip, photo_folder, str(SIZE)],
        cwd=config.ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []  # neither TensorFlow nor Keras was imported
    assert result["rows"] == 14  # the header and 13 files
    probs, expected = np.array(result["probs"]), app_says["unsure"][:100]  # the same first 100 photos
    assert ((probs >= 0.5) == (expected >= 0.5)).all()
    assert float(np.abs(probs - expected).max()) <= TOLERANCE
