"""The TensorFlow-free fast path: the CLI and the API predict on ONNX Runtime what the Keras path predicts.

Each process under test is real (`core.cli.main` in a fresh interpreter, a waitress server on a real socket) and
reports which modules it imported, so "without TensorFlow" is checked, not assumed. The model is a copy of the
shipped one in a temp folder, so its first use really exports it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import config
from core.config import ROOT, UNSURE_MARGIN
from core.data import Source, iter_inputs
from core.export import ExportedModel, file_sha256, load_export, sidecar_path, verify_export
from core.fastpath import BF16_GUARD, ENGINE_ENV, FastPredictor, GuardedBf16, engine_wanted, open_predictor
from core.hardware import has_bf16_inference
from core.pipeline import decode
from core.predict import Predictor, evaluate, submission_frame

SHIPPED = config.DEFAULT_MODEL
TOLERANCE = 1e-4  # |delta P(dog)| allowed between the fast path and the Keras path (ONNX Runtime reaches ~1e-6)

# Runs core.cli.main once per argv in one fresh interpreter, then says what it printed and which of TensorFlow,
# Keras and tf_keras it imported (none may be).
CLI = """
import contextlib, io, json, sys
for blocked in sys.argv[2:]:
    sys.modules[blocked] = None  # as if not installed: importing it raises ImportError
from core.cli import main
runs = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    runs.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"runs": runs, "loaded": loaded}))
"""

# `python -m core serve` in a thread of a fresh interpreter; once /health answers, a photo and a batch are posted.
SERVE = """
import json, os, socket, sys, threading, time, requests
from core.cli import main
model, photo, *batch = sys.argv[1:]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
threading.Thread(target=main, args=(["serve", "--port", str(port), "--model", model],), daemon=True).start()
url, deadline = f"http://127.0.0.1:{port}", time.time() + 600
while True:  # until the server answers (its first use exports the model first)
    try:
        health = requests.get(f"{url}/health", timeout=5).json()
        break
    except requests.ConnectionError:
        assert time.time() < deadline, "the server never answered"
        time.sleep(0.1)
one = requests.post(f"{url}/predict", data=open(photo, "rb").read(), timeout=60).json()
files = [("files", (os.path.basename(p), open(p, "rb").read())) for p in batch]
many = requests.post(f"{url}/predict/batch", files=files, timeout=60).json()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"health": health, "one": one, "many": many, "loaded": loaded}), flush=True)
os._exit(0)
"""


def python(script: str, *args, **env) -> dict:
    """Run a script in a fresh interpreter at the project root; its last stdout line, as JSON."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def copy_model(folder: Path) -> Path:
    """The shipped model and its metadata, copied into folder (with no export beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED, folder / "default.keras")
    shutil.copy(config.DEFAULT_MODEL_META, folder / "default.json")
    return folder / "default.keras"


@pytest.fixture(scope="session")
def photos(test_zip, tmp_path_factory) -> Path:
    """A folder of 40 real test1 photos (original size) and a text file named like a photo."""
    folder = tmp_path_factory.mktemp("fast-photos")
    with zipfile.ZipFile(test_zip) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".jpg"))[:40]:
            (folder / Path(name).name).write_bytes(z.read(name))
    (folder / "notes.jpg").write_text("not a photo")
    return folder


@pytest.fixture(scope="session")
def labeled_zip(train_zip, tmp_path_factory) -> Path:
    """200 real train.zip photos, 100 per class, from the end of each class (not the first ones other tests use)."""
    out = tmp_path_factory.mktemp("fast-labeled") / "labeled.zip"
    with zipfile.ZipFile(train_zip) as src, zipfile.ZipFile(out, "w") as dst:
        names = [n for n in src.namelist() if n.endswith(".jpg")]
        for kind in ("cat", "dog"):
            for name in sorted(n for n in names if f"/{kind}." in n)[-100:]:
                dst.writestr(name, src.read(name))
    return out


@pytest.fixture(scope="session")
def keras_path() -> Predictor:
    """Today's path: the Keras model on TensorFlow, with the app's default flip TTA."""
    return Predictor(SHIPPED)


@pytest.fixture(scope="session")
def first_use(tmp_path_factory, photos, labeled_zip, test_zip) -> dict:
    """predict, evaluate and submission through core.cli.main in one fresh process, on a model never exported."""
    model = copy_model(tmp_path_factory.mktemp("first-use"))
    out = model.parent
    commands = [
        ["predict", str(photos), "--model", str(model), "--csv", str(out / "predictions.csv")],
        ["evaluate", str(labeled_zip), "--model", str(model)],
        ["submission", str(test_zip), "--model", str(model), "--out", str(out / "submission.csv")],
    ]
    return {"model": model, **python(CLI, json.dumps(commands))}


def rows_of(predictor, source: Path) -> pd.DataFrame:
    return pd.DataFrame([vars(p) for p in predictor.predict_many(iter_inputs([source]))]).set_index("file")


def assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.index) == list(expected.index)
    assert (got.error.isna() == expected.error.isna()).all()
    good = expected.error.isna()
    assert (got.label[good] == expected.label[good]).all()
    assert float((got.prob_dog[good] - expected.prob_dog[good]).abs().max()) <= TOLERANCE


def test_cli_predict_evaluate_and_submission_run_without_tensorflow_and_export_on_first_use(
    first_use, photos, keras_path, labeled_zip, test_zip
):
    assert first_use["loaded"] == []  # not TensorFlow, not Keras: the export ran in a child process
    predict, evaluated, submission = first_use["runs"]
    assert [run["code"] for run in first_use["runs"]] == [0, 0, 0]
    model = first_use["model"]
    assert "exporting default.keras to onnx (none yet)" in predict["stderr"]
    assert "exporting" not in evaluated["stderr"] + submission["stderr"]  # made once, then reused
    meta = verify_export(model.with_suffix(".onnx"), model)
    assert meta["source"]["sha256"] == file_sha256(model) and sidecar_path(model.with_suffix(".onnx")).is_file()

    got = pd.read_csv(model.parent / "predictions.csv").set_index("file")
    assert len(got) == 41 and got.loc[str(photos / "notes.jpg"), "error"].startswith("not an image")
    assert_same_predictions(got, rows_of(keras_path, photos))

    report = json.loads(evaluated["stdout"].strip().splitlines()[-1])
    expected = evaluate(keras_path, labeled_zip)
    assert report["engine"] == "onnxruntime" and report["n"] == expected.n == 200
    assert report["confusion"] == expected.confusion and report["accuracy"] == expected.accuracy

    kaggle = pd.read_csv(model.parent / "submission.csv")
    assert len(kaggle) == 1001
    pd.testing.assert_frame_equal(kaggle, submission_frame(keras_path.predict_many(iter_inputs([test_zip]))))


def test_the_api_serves_without_tensorflow_and_answers_what_the_keras_path_answers(
    first_use, photos, keras_path, tmp_path
):
    model = copy_model(tmp_path)  # a second copy: the server's first use exports it too
    pictures = sorted(photos.glob("*.jpg"))[:8]
    result = python(SERVE, model, pictures[0], *pictures, photos / "notes.jpg")
    assert result["loaded"] == []
    assert result["health"]["model"]["engine"] == "onnxruntime"
    assert (
        result["health"]["model"]["accuracy"]
        == json.loads(config.DEFAULT_MODEL_META.read_text())["metrics"]["accuracy"]
    )
    expected, *wanted = keras_path.predict_many(iter_inputs([pictures[0], *pictures]))
    assert result["one"]["label"] == expected.label
    assert abs(result["one"]["prob_dog"] - expected.prob_dog) <= TOLERANCE
    answers = result["many"]["results"]
    assert result["many"]["count"] == 9 and result["many"]["errors"] == 1
    assert answers[-1]["error"].startswith("not an image")
    for answer, want in zip(answers, wanted, strict=False):
        assert answer["label"] == want.label and abs(answer["prob_dog"] - want.prob_dog) <= TOLERANCE


@pytest.fixture(scope="session")
def fast(first_use) -> FastPredictor:
    """The fast path on the exported copy of the shipped model, in this process."""
    found = open_predictor(first_use["model"])
    assert isinstance(found, FastPredictor)
    return found


def test_the_fast_path_predicts_what_the_keras_path_predicts_on_500_real_photos(fast, keras_path, test_zip, train_zip):
    items = five_hundred(test_zip, train_zip)
    got = pd.DataFrame([vars(p) for p in fast.predict_many(items)]).set_index("file")
    expected = pd.DataFrame([vars(p) for p in keras_path.predict_many(items)]).set_index("file")
    assert len(got) == 500 and got.error.isna().all(), got.error.dropna().value_counts().head().to_dict()
    assert 0.3 < (expected.label == "dog").mean() < 0.7  # both classes, so the labels can disagree
    assert_same_predictions(got, expected)
    unsure = (expected.prob_dog - 0.5).abs() < UNSURE_MARGIN
    assert unsure.sum() >= 10  # photos near the threshold are among them: the TTA rule is exercised


def five_hundred(test_zip, train_zip) -> list:
    """300 original-size test1 photos and 200 of train.zip (100 cats, 100 dogs), as inputs."""
    test1, train = Source(test_zip), Source(train_zip)
    listed = sorted(train.listing, key=lambda it: it.name)
    return [
        *test1.inputs(sorted(test1.listing, key=lambda it: it.name)[:300]),
        *train.inputs(listed[:100] + listed[-100:]),
    ]


def test_auto_takes_openvino_bf16_only_where_the_cpu_runs_bf16_natively(monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert engine_wanted(frozenset({"avx512f", "amx_tile", "amx_bf16"})) == "openvino-bf16"
    assert engine_wanted(frozenset({"avx512f", "avx512_bf16"})) == "openvino-bf16"  # AVX-512 BF16, no AMX
    assert engine_wanted(frozenset({"avx2", "avx512f", "avx512_vnni"})) == "onnxruntime"  # bf16 emulated: f32, exact
    assert engine_wanted(frozenset()) == "onnxruntime"
    monkeypatch.setenv(ENGINE_ENV, "onnxruntime")
    assert engine_wanted(frozenset({"amx_bf16"})) == "onnxruntime"  # asked for by name: taken as asked


def test_by_default_the_cli_takes_this_cpus_engine_and_keeps_the_keras_labels(first_use, labeled_zip, keras_path):
    argv = ["evaluate", str(labeled_zip), "--model", str(first_use["model"])]
    result = python(CLI, json.dumps([argv]), **{ENGINE_ENV: ""})  # empty: auto, as when unset
    (run,) = result["runs"]
    assert result["loaded"] == [] and run["code"] == 0
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    assert report["engine"] == ("openvino-bf16" if has_bf16_inference() else "onnxruntime")
    expected = evaluate(keras_path, labeled_zip)
    assert report["confusion"] == expected.confusion and report["accuracy"] == expected.accuracy


def test_openvino_bf16_guarded_gives_the_f32_labels_on_test1_and_train_photos(fast, test_zip, train_zip):
    guarded = FastPredictor(fast.path, engine="openvino-bf16")
    assert guarded.engine == "openvino-bf16" and isinstance(guarded.exported, GuardedBf16)
    items = list(iter_inputs([test_zip])) + five_hundred(test_zip, train_zip)[300:]  # all 1,001 and 200 labeled
    got = pd.DataFrame([vars(p) for p in guarded.predict_many(items)]).set_index("file")
    exact = pd.DataFrame([vars(p) for p in fast.predict_many(items)]).set_index("file")
    assert len(got) == 1201 and (got.label == exact.label).all()
    delta = (got.prob_dog - exact.prob_dog).abs()
    assert float(delta.max()) < BF16_GUARD
    near = (exact.prob_dog - 0.5).abs() < BF16_GUARD / 2  # near the threshold: predicted again in f32, exactly
    assert near.any() and float(delta[near].max()) <= TOLERANCE


def test_the_guard_gives_the_f32_decisions_where_the_quick_looks_are_off(fast, test_zip):
    # An engine that is off by 0.04 (under the guard) everywhere: the guard must still give f32's labels and the
    # same photos their second look; without the guard (0) the same engine changes labels.
    exact = fast.exported
    onnx = load_export(exact.path, fast.path, engine="onnxruntime")
    off = ExportedModel(exact.path, exact.metadata, "skewed", "f32", lambda px: onnx.predict(px) + 0.04)
    test1 = Source(test_zip)
    pixels = np.stack([decode(item.read(), fast.pipeline) for item in test1.inputs(test1.listing)])  # all 1,001
    want = exact.probabilities(pixels, "unsure")
    guarded = GuardedBf16(off, exact).probabilities(pixels, "unsure")
    assert ((guarded > 0.5) == (want > 0.5)).all() and float(np.abs(guarded - want).max()) <= 0.04 + 1e-6
    unguarded = GuardedBf16(off, exact, guard=0).probabilities(pixels, "unsure")
    assert ((unguarded > 0.5) != (want > 0.5)).any()


@pytest.mark.parametrize("tta", ["off", "all"])
def test_each_tta_mode_is_the_keras_paths(fast, keras_path, photos, tta):
    mine = open_predictor(fast.path, tta=tta)
    assert isinstance(mine, FastPredictor) and mine.tta == tta
    assert_same_predictions(rows_of(mine, photos), rows_of(Predictor(SHIPPED, tta=tta), photos))


def test_grad_cam_loads_the_keras_model_only_when_asked(fast, keras_path, photos):
    from core.gradcam import explain

    mine = open_predictor(fast.path)  # a fresh one: nothing asked for Grad-CAM yet
    assert mine._model is None
    data = (photos / "1.jpg").read_bytes()
    got, expected = explain(mine, data), explain(keras_path, data)
    assert mine._model is not None
    assert got.label == expected.label and abs(got.prob_dog - expected.prob_dog) <= TOLERANCE
    assert float(np.abs(got.heatmap - expected.heatmap).max()) < 1e-3


def test_a_corrupt_a_lone_and_a_stale_export_are_rebuilt_never_used(first_use, photos, tmp_path):
    import keras

    from core.model import build_seed, save_model
    from core.pipeline import PipelineConfig

    model = copy_model(tmp_path)
    onnx = model.with_suffix(".onnx")
    shutil.copy(first_use["model"].with_suffix(".onnx"), onnx)
    shutil.copy(sidecar_path(first_use["model"].with_suffix(".onnx")), sidecar_path(onnx))
    notes: list[str] = []
    assert isinstance(open_predictor(model, note=notes.append), FastPredictor) and notes == []  # current: reused

    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # truncated
    assert isinstance(open_predictor(model, note=notes.append), FastPredictor)
    assert "corrupt" in notes[-1] and verify_export(onnx, model)

    sidecar_path(onnx).unlink()  # an export with no sidecar of ours, as if someone put it there
    assert isinstance(open_predictor(model, note=notes.append), FastPredictor)
    assert "missing or unreadable" in notes[-1] and verify_export(onnx, model)

    keras.utils.set_random_seed(0)
    save_model(build_seed(PipelineConfig(size=48, color_mode="grayscale")), model)  # a new model, same name
    rebuilt = open_predictor(model, note=notes.append)
    assert isinstance(rebuilt, FastPredictor) and "stale" in notes[-1] and len(notes) == 3
    assert rebuilt.pipeline == PipelineConfig(size=48, color_mode="grayscale")
    assert verify_export(onnx, model)["source"]["sha256"] == file_sha256(model)
    got, expected = rows_of(rebuilt, photos), rows_of(Predictor(model), photos)
    assert float((got.prob_dog - expected.prob_dog).abs().max()) <= TOLERANCE


def test_without_onnxruntime_the_cli_falls_back_to_tensorflow_with_a_note(first_use, photos, keras_path):
    commands = [["predict", str(photos), "--model", str(first_use["model"])]]
    (run,) = python(CLI, json.dumps(commands), "onnxruntime")["runs"]
    assert run["code"] == 0
    assert "the fast path is not available for default.keras (onnxruntime is not installed)" in run["stderr"]
    assert "Traceback" not in run["stderr"]
    assert_same_predictions(pd.read_csv(io.StringIO(run["stdout"])).set_index("file"), rows_of(keras_path, photos))


def test_cvd_predict_engine_tensorflow_is_the_keras_path_and_nonsense_is_a_clear_error(first_use, monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "tensorflow")
    assert type(open_predictor(first_use["model"])) is Predictor
    monkeypatch.setenv(ENGINE_ENV, "cuda")
    wanted = "CVD_PREDICT_ENGINE='cuda': use one of auto, onnxruntime, openvino-bf16, tensorflow"
    with pytest.raises(ValueError, match=wanted):
        open_predictor(first_use["model"])
