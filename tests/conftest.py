"""Shared fixtures: the real data in ../shared/data, real JPEG bytes, a small real dataset and a tiny model."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from core import config

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Tests that hold the app's P(dog) to the Keras path's within 1e-4 run on the exact (f32) engine, in this process
# and the ones it starts: where the CPU has AMX the default (auto) takes OpenVINO bf16, which moves P(dog) by up to
# ~0.025 and keeps the labels. tests/test_fastpath.py checks auto and that engine on their own.
os.environ.setdefault("CVD_PREDICT_ENGINE", "onnxruntime")


def _require(path: Path) -> Path:
    # Under CI the shared data is always there, so its absence is a failure, never a skip.
    if not path.exists():
        message = f"shared data missing: {path} (set CVD_SHARED_DATA)"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def train_zip() -> Path:
    return _require(config.KAGGLE_TRAIN_ZIP)


@pytest.fixture(scope="session")
def test_zip() -> Path:
    return _require(config.KAGGLE_TEST_ZIP)


@pytest.fixture(scope="session")
def bad_inputs() -> Path:
    return _require(config.BAD_INPUTS)


def make_jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 90) -> bytes:
    """Real JPEG bytes of a drawn scene: a gradient with a few random shapes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    for _ in range(5):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, center, int(rng.integers(5, max(6, min(width, height) // 3))), color, -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# The fast subset, `./scripts/test -m "not slow"`, is the edit-test loop; CI runs everything. A test is slow when
# it starts processes that load TensorFlow, a browser or a server, or trains for more than a moment: whole files
# here, single tests by their own @pytest.mark.slow.
SLOW_FILES = {
    "test_browser_app.py",
    "test_browser_sessions.py",
    "test_cli.py",
    "test_distribute.py",
    "test_export.py",
    "test_hostile_files.py",
    "test_run_faults.py",
    "test_shipped_model.py",
}
SLOW_FIXTURES = {"live_server", "token_server"}  # test_api.py's real `python -m core serve` processes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def jpeg() -> bytes:
    return make_jpeg()


@pytest.fixture(autouse=True)
def isolated_app_dirs(tmp_path_factory, monkeypatch):
    """Keep runs and caches that tests write out of the project's own folders."""
    base = tmp_path_factory.getbasetemp() / "app"
    monkeypatch.setattr(config, "RUNS_DIR", base / "runs")
    monkeypatch.setattr(config, "CACHE_DIR", base / "cache")
    monkeypatch.setattr(config, "UPLOADS_DIR", base / "uploads")
    monkeypatch.setattr(config, "CORRECTIONS_DIR", base / "corrections")
    monkeypatch.setattr(config, "MY_PHOTOS_DIR", base / "my-photos")
    monkeypatch.setenv("CVD_RUNS_DIR", str(base / "runs"))
    # In-process AppTests load models only when a test predicts; tests/test_app_pages.py tests the warm-up.
    monkeypatch.setattr(config, "WARM_UP_MODEL", False)
    yield


@pytest.fixture(scope="session")
def small_zip(train_zip, tmp_path_factory) -> Path:
    """A real Kaggle-layout zip of 300 photos (150 per class) taken from train.zip, in a temp folder."""
    out = tmp_path_factory.mktemp("small") / "small-train.zip"
    with zipfile.ZipFile(train_zip) as src, zipfile.ZipFile(out, "w") as dst:
        names = [n for n in src.namelist() if n.endswith(".jpg")]
        cats = sorted(n for n in names if "/cat." in n)[:150]
        dogs = sorted(n for n in names if "/dog." in n)[:150]
        for name in cats + dogs:
            dst.writestr(name, src.read(name))
    return out


@pytest.fixture(scope="session")
def tiny_model(small_zip, tmp_path_factory) -> Path:
    """A seed-preset model trained for 1 epoch on small_zip: real, if not yet accurate.

    Its ONNX export (the fast path's, core.fastpath) is made here once, so the copies tests make of its run
    folder predict at once instead of each exporting on first use; tests/test_fastpath.py tests that first use.
    """
    from core.export import export_model
    from core.settings import TrainConfig
    from core.train import train

    runs = tmp_path_factory.mktemp("tiny-runs")
    result = train(small_zip, TrainConfig(epochs=1), runs_dir=runs)
    export_model(result.run.model_path, "onnx")
    return result.run.model_path


@pytest.fixture(scope="session", autouse=True)
def isolated_session_dirs(tmp_path_factory):
    """The same isolation for session-scoped fixtures (tiny_model), which are set up before per-test ones."""
    base = tmp_path_factory.getbasetemp() / "app"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "RUNS_DIR", base / "runs")
        patch.setattr(config, "CACHE_DIR", base / "cache")
        patch.setattr(config, "UPLOADS_DIR", base / "uploads")
        patch.setattr(config, "CORRECTIONS_DIR", base / "corrections")
        patch.setattr(config, "MY_PHOTOS_DIR", base / "my-photos")
        patch.setenv("CVD_RUNS_DIR", str(base / "runs"))
        yield


@pytest.fixture
def app_dirs(tmp_path, monkeypatch):
    """Empty data, runs and models folders for one test, for core and the dashboard (in-process and as a server)."""
    from types import SimpleNamespace

    dirs = SimpleNamespace(data=tmp_path / "data", runs=tmp_path / "runs", models=tmp_path / "models")
    for folder in vars(dirs).values():
        folder.mkdir()
    monkeypatch.setattr(config, "DATA_DIR", dirs.data)
    monkeypatch.setattr(config, "UPLOADS_DIR", dirs.data / "uploads")
    monkeypatch.setattr(config, "CORRECTIONS_DIR", dirs.data / "corrections")
    monkeypatch.setattr(config, "MY_PHOTOS_DIR", dirs.data / "my-photos")
    monkeypatch.setattr(config, "RUNS_DIR", dirs.runs)
    monkeypatch.setattr(config, "MODELS_DIR", dirs.models)
    monkeypatch.setattr(config, "DEFAULT_MODEL", dirs.models / "default.keras")
    monkeypatch.setattr(config, "DEFAULT_MODEL_META", dirs.models / "default.json")
    monkeypatch.setenv("CVD_DATA_DIR", str(dirs.data))
    monkeypatch.setenv("CVD_RUNS_DIR", str(dirs.runs))
    monkeypatch.setenv("CVD_MODELS_DIR", str(dirs.models))
    return dirs


@pytest.fixture
def training():
    """For a test that trains on the dashboard: a fresh training manager, as a newly started server has, and no
    run of the test's left training after it. The dashboard's manager is per process (ui.resources), and an
    in-process AppTest session shares it with every other test of this process."""
    from ui.resources import training_manager

    training_manager.clear()
    manager = training_manager()
    yield manager
    job = manager.current
    if job is not None and job.running:
        job.stop()
        assert job.wait(300), "a test's run did not stop"


@pytest.fixture
def saved_run(tiny_model, app_dirs):
    """The tiny model's run, copied into this test's runs folder (so deleting or promoting it is harmless)."""
    import shutil

    from core.runs import Run

    target = app_dirs.runs / tiny_model.parent.name
    shutil.copytree(tiny_model.parent, target)
    return Run(target)


@pytest.fixture(scope="session", autouse=True)
def one_script_cache_for_every_apptest():
    """Compile each page once per test process, as a server does, instead of on every AppTest run.

    AppTest builds a fresh ScriptCache for every run(), so each run parses every page again with `ast`. CPython
    3.11's AST constructor keeps its recursion depth in per-interpreter state, so a parse racing one in a
    training thread (TensorFlow's autograph parses Keras code while a run starts and at its first epoch end) can
    fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython gh-106905). A server
    caches each page's bytecode for good, so only tests hit that window over and over.
    """
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    shared = ScriptCache()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app_test, "ScriptCache", lambda: shared)
        patch.setattr(local_script_runner, "ScriptCache", lambda: shared)
        yield
