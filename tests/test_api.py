"""The REST API: every endpoint through Flask's test client, every hostile file, and a real waitress server."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import make_jpeg

from core.api import MAX_CONTENT_LENGTH, create_app
from core.config import CLASS_NAMES, ROOT
from core.predict import Predictor

# What each shared hostile file must give; a file added there later must still get a 200 or a JSON 400.
VALID_IMAGES = {"rgba.png", "gray16.png"}
REFUSALS = {
    "zero-byte.jpg": "empty",
    "text-named.jpg": "not an image",
    "truncated.jpg": "truncated",
    "bomb-20000x20000.png": "too many pixels",
    "class-folders.zip": "not an image",
    "macos-made.zip": "not an image",
    "zip-slip.zip": "not an image",
}


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor(tiny_model)


@pytest.fixture(scope="module")
def client(predictor):
    return create_app(predictor).test_client()


def upload(data: bytes, name: str = "photo.jpg", field: str = "file") -> dict:
    return {field: (io.BytesIO(data), name)}


def test_health_names_the_model_and_its_version(client, tiny_model):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    model = body["model"]
    assert model["name"] == tiny_model.parent.name  # a run's model is named by its run
    assert re.fullmatch(r"[0-9a-f]{12}", model["version"])
    assert model["file"] == "model.keras" and model["bytes"] == tiny_model.stat().st_size
    assert model["preset"] == "seed"
    assert 0.0 <= model["accuracy"] <= 1.0
    low, high = model["accuracy_ci95"]  # with its 95% interval over the photos it was measured on
    assert low <= model["accuracy"] <= high and model["accuracy_n"] == 60
    assert model["accuracy_measured_on"] == "the 60 photos of small-train.zip held out from training"
    assert model["tta"] == "unsure"
    assert model["input"] == {"size": 80, "color_mode": "grayscale"}


def test_predict_labels_a_multipart_file(client, predictor):
    data = make_jpeg(seed=1)
    response = client.post("/predict", data=upload(data), content_type="multipart/form-data")
    assert response.status_code == 200
    body = response.get_json()
    expected = predictor.predict_bytes(data)
    assert set(body) == {"label", "prob_dog", "model"}
    assert body["label"] == expected.label and body["label"] in CLASS_NAMES
    assert body["prob_dog"] == pytest.approx(expected.prob_dog, abs=1e-6)
    assert body["model"] == predictor.name


@pytest.mark.parametrize(
    "content_type", ["image/jpeg", "application/octet-stream", "application/x-www-form-urlencoded"]
)
def test_predict_labels_raw_image_bytes(client, predictor, content_type):
    # curl --data-binary sends form-urlencoded by default; the body must still be read as the image.
    data = make_jpeg(seed=2)
    response = client.post("/predict", data=data, content_type=content_type)
    assert response.status_code == 200
    assert response.get_json()["prob_dog"] == pytest.approx(predictor.predict_bytes(data).prob_dog, abs=1e-6)


def test_predict_takes_a_single_file_under_any_field_name(client):
    response = client.post("/predict", data=upload(make_jpeg(seed=3), field="image"))
    assert response.status_code == 200
    assert response.get_json()["label"] in CLASS_NAMES


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "no file"),
        ({"data": {"note": "hello"}, "content_type": "multipart/form-data"}, "no file"),
        ({"data": b"", "content_type": "image/jpeg"}, "no file"),
        ({"data": upload(b"", "empty.jpg"), "content_type": "multipart/form-data"}, "empty file"),
        (
            {
                "data": {"a": (io.BytesIO(make_jpeg()), "a.jpg"), "b": (io.BytesIO(make_jpeg()), "b.jpg")},
                "content_type": "multipart/form-data",
            },
            "/predict/batch",
        ),
    ],
    ids=["nothing", "form-without-file", "empty-body", "empty-file", "two-files"],
)
def test_predict_without_one_usable_file_is_a_json_400(client, kwargs, reason):
    response = client.post("/predict", **kwargs)
    assert response.status_code == 400
    assert response.is_json and reason in response.get_json()["error"]


def test_every_hostile_file_gets_a_json_answer_never_a_500(client, bad_inputs):
    files = sorted(p for p in bad_inputs.iterdir() if p.is_file())
    assert {p.name for p in files} >= VALID_IMAGES | set(REFUSALS)
    for path in files:
        data = path.read_bytes()
        for response in (
            client.post("/predict", data=upload(data, path.name), content_type="multipart/form-data"),
            client.post("/predict", data=data, content_type="application/octet-stream"),
        ):
            assert response.is_json, path.name
            body = response.get_json()
            if path.name in VALID_IMAGES:
                assert response.status_code == 200, (path.name, body)
                assert body["label"] in CLASS_NAMES
            else:
                assert response.status_code == 400, (path.name, body)
                assert REFUSALS.get(path.name, "") in body["error"], (path.name, body)


def test_the_bomb_is_refused_from_its_header_in_well_under_a_second(client, bad_inputs):
    data = (bad_inputs / "bomb-20000x20000.png").read_bytes()
    started = time.time()
    response = client.post("/predict", data=upload(data, "bomb.png"), content_type="multipart/form-data")
    assert response.status_code == 400 and "too many pixels" in response.get_json()["error"]
    assert time.time() - started < 1.0


def test_batch_gives_per_file_results_and_errors_in_order(client, predictor, bad_inputs):
    good = [make_jpeg(seed=s) for s in (10, 11, 12)]
    hostile = sorted(p for p in bad_inputs.iterdir() if p.is_file())
    files = [(io.BytesIO(d), f"good{i}.jpg") for i, d in enumerate(good)]
    files += [(io.BytesIO(p.read_bytes()), p.name) for p in hostile]
    response = client.post("/predict/batch", data={"files": files}, content_type="multipart/form-data")
    assert response.status_code == 200
    body = response.get_json()
    results = body["results"]
    assert [r["file"] for r in results] == [f"good{i}.jpg" for i in range(3)] + [p.name for p in hostile]
    assert body["count"] == len(results) and body["model"] == predictor.name
    for data, result in zip(good, results[:3], strict=True):
        assert result["error"] is None
        assert result["prob_dog"] == pytest.approx(predictor.predict_bytes(data).prob_dog, abs=1e-6)
    by_name = {r["file"]: r for r in results}
    for name in VALID_IMAGES:
        assert by_name[name]["error"] is None and by_name[name]["label"] in CLASS_NAMES
    for name, reason in REFUSALS.items():
        assert by_name[name]["label"] is None and reason in by_name[name]["error"]
    assert body["errors"] == len(REFUSALS) + sum(p.name not in VALID_IMAGES | set(REFUSALS) for p in hostile)


def test_batch_takes_files_under_any_field_names(client):
    data = {"a": (io.BytesIO(make_jpeg(seed=20)), "a.jpg"), "b": (io.BytesIO(make_jpeg(seed=21)), "b.jpg")}
    response = client.post("/predict/batch", data=data, content_type="multipart/form-data")
    assert response.status_code == 200
    assert sorted(r["file"] for r in response.get_json()["results"]) == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"data": make_jpeg(), "content_type": "image/jpeg"},
        {"data": {"x": "y"}, "content_type": "multipart/form-data"},
    ],
    ids=["nothing", "raw-body", "no-files"],
)
def test_batch_without_multipart_files_is_a_json_400(client, kwargs):
    response = client.post("/predict/batch", **kwargs)
    assert response.status_code == 400 and "multipart" in response.get_json()["error"]


def test_a_body_over_the_default_20_mb_limit_is_a_json_413(client):
    assert MAX_CONTENT_LENGTH == 20 * 1024 * 1024
    too_big = b"\xff" * (MAX_CONTENT_LENGTH + 1)
    for kwargs in (
        {"data": too_big, "content_type": "image/jpeg"},
        {"data": upload(too_big), "content_type": "multipart/form-data"},
    ):
        response = client.post("/predict", **kwargs)
        assert response.status_code == 413
        assert response.is_json and "20 MB" in response.get_json()["error"]
    response = client.post("/predict/batch", data={"files": [(io.BytesIO(too_big), "x.jpg")]})
    assert response.status_code == 413 and response.is_json


def test_the_size_limit_is_configurable(predictor):
    small = create_app(predictor, max_content_length=100_000).test_client()
    assert small.post("/predict", data=make_jpeg(), content_type="image/jpeg").status_code == 200
    response = small.post("/predict", data=b"\xff" * 100_001, content_type="image/jpeg")
    assert response.status_code == 413 and response.is_json


def test_unknown_routes_and_methods_are_json_404_and_405(client):
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.is_json
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and wrong.is_json and wrong.get_json()["status"] == 405


def test_an_unexpected_error_is_a_json_500_without_internals(predictor):
    app = create_app(predictor)

    def broken():
        raise ZeroDivisionError("secret internals")

    app.add_url_rule("/broken", view_func=broken)
    response = app.test_client().get("/broken")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error", "status": 500}
    assert b"secret" not in response.data and b"Traceback" not in response.data


@pytest.fixture(scope="module")
def live_server(tiny_model, tmp_path_factory):
    """`python -m core serve` in a subprocess on a free port; yields its base URL."""
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Port 0: the server binds a free port itself and names it, so no other process can take it in between.
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", "0", "--model", str(tiny_model)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.time() + 120
        while not (found := re.search(r"serving model \S+ on (http://\S+)", log.read_text())):
            assert proc.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.time() < deadline, f"server did not start: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_real_server_answers_200_requests_from_8_threads(live_server, predictor):
    images = [make_jpeg(seed=100 + i, width=200 + i, height=150) for i in range(20)]
    expected = [predictor.predict_bytes(d).prob_dog for d in images]
    health = requests.get(f"{live_server}/health", timeout=10)
    assert health.status_code == 200 and health.json()["model"]["name"] == predictor.name

    def client(worker: int) -> list[tuple[int, float | None, float]]:
        out = []
        with requests.Session() as session:
            for i in range(25):
                k = (worker * 25 + i) % len(images)
                if i % 2:
                    r = session.post(f"{live_server}/predict", files={"file": ("x.jpg", images[k])}, timeout=30)
                else:
                    r = session.post(f"{live_server}/predict", data=images[k], timeout=30)
                out.append((r.status_code, r.json().get("prob_dog"), expected[k]))
        return out

    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(client, range(8)) for a in batch]
    assert len(answers) == 200
    assert all(status == 200 for status, _, _ in answers)
    # Each answer is its own image's: no request got another one's result under concurrency.
    assert all(got == pytest.approx(want, abs=1e-5) for _, got, want in answers)
    assert time.time() - started < 120


def test_a_real_server_refuses_hostile_uploads_with_json(live_server, bad_inputs):
    for path in sorted(p for p in bad_inputs.iterdir() if p.is_file()):
        r = requests.post(f"{live_server}/predict", files={"file": (path.name, path.read_bytes())}, timeout=30)
        assert r.status_code == (200 if path.name in VALID_IMAGES else 400), (path.name, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
    too_big = requests.post(f"{live_server}/predict", data=b"\xff" * (MAX_CONTENT_LENGTH + 1), timeout=60)
    assert too_big.status_code == 413 and "error" in too_big.json()


def test_serve_with_a_missing_model_is_a_clear_error(tmp_path, capsys):
    from core.cli import main, parser

    args = parser().parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8000, None)  # None: the project's default model
    assert main(["serve", "--model", str(tmp_path / "missing.keras")]) == 2
    assert "no such model file" in capsys.readouterr().err
