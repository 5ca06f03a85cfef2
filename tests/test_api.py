"""The REST API: every endpoint through Flask's test client, every hostile file, and a real waitress server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from conftest import make_jpeg
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.api import MAX_CONTENT_LENGTH, SECURITY_HEADERS, create_app
from core.config import CLASS_NAMES, ROOT
from core.predict import Predictor

TOKEN = "correct-horse-battery-staple"
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
    return create_app(predictor, token="", cors_origins="").test_client()  # whatever the environment says


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


# How run.json said what an accuracy was measured on before the app's own measurement was recorded with its count.
OLDER_RECORDS = {
    "one look only": lambda m: {k: v for k, v in m.items() if k not in ("accuracy", "accuracy_n", "measured_on")},
    "worded with how": lambda m: {**m, "measured_on": f"{m['measured_on']}, predicted as the app predicts"},
}


@pytest.mark.parametrize("record", OLDER_RECORDS)
def test_health_says_what_the_accuracy_was_measured_on_in_the_sidebars_words(saved_run, record):
    metrics = OLDER_RECORDS[record](saved_run.meta["metrics"])
    saved_run.update_meta(metrics=metrics)
    model = create_app(saved_run.model_path, token="").test_client().get("/health").get_json()["model"]
    held_out = f"the {saved_run.meta['n_val']} photos of small-train.zip held out from training"
    assert model["accuracy_measured_on"] == held_out
    assert model["accuracy"] == pytest.approx(metrics.get("accuracy", metrics["best_val_accuracy"]), abs=1e-6)
    sidebar = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180).run()  # its model: saved_run's
    assert f"right on {model['accuracy_measured_on']}" in "\n".join(c.value for c in sidebar.caption)


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


def assert_secure_headers(headers) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, dict(headers))
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_every_answer_carries_the_security_headers_and_no_cors(client):
    answers = [
        client.get("/health"),
        client.post("/predict", data=make_jpeg(seed=30), content_type="image/jpeg"),
        client.post("/predict", data=b"not an image", content_type="image/jpeg"),
        client.get("/nope"),
        client.post("/predict", data=b"\xff" * (MAX_CONTENT_LENGTH + 1), content_type="image/jpeg"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 400, 404, 413]
    for response in answers:
        assert_secure_headers(response.headers)
    from_a_page = client.get("/health", headers={"Origin": "https://evil.example"})
    assert not [name for name, _ in from_a_page.headers if name.startswith("Access-Control-")]


def test_cors_only_for_the_configured_origins(predictor):
    app = create_app(predictor, token=TOKEN, cors_origins="https://app.example, https://other.example/")
    client = app.test_client()
    allowed = client.get("/health", headers={"Origin": "https://other.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://other.example"
    assert allowed.headers["Vary"] == "Origin"
    refused = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    # A browser's preflight carries no credentials: it is answered without the token, and says what may follow.
    preflight = client.options(
        "/predict",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
    ids=["none", "empty", "no-token", "wrong", "basic", "longer", "shorter"],
)
def test_with_a_token_set_every_route_but_health_needs_it(predictor, authorization):
    client = create_app(predictor, token=TOKEN).test_client()
    headers = {"Authorization": authorization} if authorization is not None else {}
    for response in (
        client.post("/predict", data=make_jpeg(seed=31), content_type="image/jpeg", headers=headers),
        client.post("/predict/batch", data={"files": [(io.BytesIO(make_jpeg()), "a.jpg")]}, headers=headers),
        client.get("/nope", headers=headers),  # no route list for strangers either
    ):
        assert response.status_code == 401 and response.is_json
        assert "Bearer" in response.get_json()["error"] and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_secure_headers(response.headers)
    assert client.get("/health", headers=headers).status_code == 200
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/predict", data=make_jpeg(seed=31), content_type="image/jpeg", headers=good).status_code == 200


def test_the_token_and_cors_origins_come_from_the_environment(predictor, monkeypatch):
    monkeypatch.setenv("CVD_API_TOKEN", TOKEN)
    monkeypatch.setenv("CVD_API_CORS_ORIGINS", "https://app.example")
    client = create_app(predictor).test_client()
    assert client.post("/predict", data=make_jpeg(), content_type="image/jpeg").status_code == 401
    health = client.get("/health", headers={"Origin": "https://app.example"})
    assert health.status_code == 200 and health.headers["Access-Control-Allow-Origin"] == "https://app.example"
    monkeypatch.setenv("CVD_API_TOKEN", "")  # set but empty: no token
    assert create_app(predictor).test_client().post("/predict", data=make_jpeg()).status_code == 200


@contextlib.contextmanager
def running_server(model: Path, log: Path, **env):
    """`python -m core serve` in a subprocess on a free port, with extra environment; yields its base URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    # Port 0: the server binds a free port itself and names it, so no other process can take it in between.
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", "0", "--model", str(model)],
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


@pytest.fixture(scope="module")
def live_server(tiny_model, tmp_path_factory):
    """A real server without a token; yields its base URL."""
    with running_server(tiny_model, tmp_path_factory.mktemp("server") / "stderr.log", CVD_API_TOKEN="") as url:
        yield url


@pytest.fixture(scope="module")
def token_server(tiny_model, tmp_path_factory):
    """A real server that requires the bearer token TOKEN."""
    with running_server(tiny_model, tmp_path_factory.mktemp("token-server") / "stderr.log", CVD_API_TOKEN=TOKEN) as url:
        yield url


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


def _chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data) if length is None else length) + body + struct.pack(">I", zlib.crc32(body))


def _png(width: int, height: int, idat: bytes, idat_length: int | None = None, end: bool = True) -> bytes:
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", idat, idat_length) + (_chunk(b"IEND", b"") if end else b"")


def hostile_uploads() -> dict[str, bytes]:
    """One file of each hostile kind, made here from real bytes."""
    jpeg = bytearray(make_jpeg(seed=5))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # the frame header claims 4.2 gigapixels
    gif = io.BytesIO()
    Image.new("P", (1, 1)).save(gif, "GIF")
    screen = bytearray(gif.getvalue())
    screen[6:10] = struct.pack("<HH", 60000, 60000)  # a 1x1 frame on a 3.6-gigapixel logical screen
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    return {
        # 64x48 by its header, but its IDAT chunk claims ~3.7 GB that the file does not hold.
        "idat-length-lie.png": _png(64, 48, zlib.compress(b"\0" * 100), idat_length=0xDDDDDDDD, end=False),
        "header-bomb.png": _png(30000, 30000, zlib.compress(b"\0" * 1000)),
        "sof-bomb.jpg": bytes(jpeg),
        "screen-bomb.gif": bytes(screen),
        "truncated.png": png.tobytes()[: len(png) // 2],
        "truncated.jpg": make_jpeg(seed=6)[:3000],
        "text.jpg": b"GIF89a? no: " + b"plain text " * 100,
        "empty.png": b"",
    }


def test_a_real_server_answers_concurrent_hostile_uploads_with_json_400s(live_server):
    uploads = hostile_uploads()

    def post(item: tuple[str, bytes]) -> requests.Response:
        return requests.post(f"{live_server}/predict", files={"file": item}, timeout=120)

    with ThreadPoolExecutor(len(uploads)) as pool:  # all at once, one of each kind
        answers = dict(zip(uploads, pool.map(post, uploads.items()), strict=True))
    for name, response in answers.items():
        assert response.status_code == 400, (name, response.text)
        assert response.headers["Content-Type"] == "application/json", name
        error = response.json()["error"]
        assert error and not re.search(r"object at 0x|Traceback", error), (name, error)  # a reason, never a repr
    assert "too many pixels" in answers["header-bomb.png"].json()["error"]
    assert requests.get(f"{live_server}/health", timeout=30).status_code == 200


def test_a_real_server_answers_a_100_mb_body_with_a_json_413_streamed_or_not(live_server):
    def streamed():  # chunked: waitress counts the bytes as they come and stops at the limit
        for _ in range(100):
            yield b"\xff" * 2**20

    for body in (streamed(), b"\xff" * (100 * 2**20)):  # the second says its length up front
        response = requests.post(f"{live_server}/predict", data=body, timeout=120)
        assert response.status_code == 413
        assert response.json() == {"error": "request too large: the limit is 20 MB", "status": 413}
        assert_secure_headers(response.headers)
    assert requests.get(f"{live_server}/health", timeout=30).status_code == 200


def raw_request(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are and read the answer, as much of it as its Content-Length says."""
    address = urllib.parse.urlsplit(url)
    answer = b""
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        # The server answers an error as soon as it sees it and closes the connection; with bytes still unread
        # there, the close is a reset, which may cut the rest of our sending or end our reading.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert len(body) == int(headers["Content-Length"]), answer  # the whole answer arrived
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    ],
    ids=["bad-content-length", "huge-header", "unknown-encoding", "too-long"],
)
def test_a_real_server_answers_requests_it_cannot_parse_with_our_json(live_server, request_bytes, status):
    got, headers, body = raw_request(live_server, request_bytes)
    assert got == status, body
    assert headers["Content-Type"] == "application/json"
    assert_secure_headers(headers)
    error = json.loads(body)
    assert error["status"] == status and error["error"] and "generated by" not in error["error"]


def test_a_real_server_still_answers_health_with_hundreds_of_stalled_connections(live_server):
    address = urllib.parse.urlsplit(live_server)
    half_requests = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # headers that never end
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"\xff" * 1000,  # a body, stalled
    ]
    stalled = []
    try:
        for i in range(300):  # three times waitress's default connection limit
            sock = socket.create_connection((address.hostname, address.port), timeout=30)
            sock.sendall(half_requests[i % 2])
            stalled.append(sock)
        health = requests.get(f"{live_server}/health", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        photo = requests.post(f"{live_server}/predict", data=make_jpeg(seed=40), timeout=30)
        assert photo.status_code == 200 and photo.json()["label"] in CLASS_NAMES
    finally:
        for sock in stalled:
            sock.close()


def test_a_real_server_with_a_token_refuses_requests_without_it_but_not_health(token_server):
    photo = make_jpeg(seed=41)
    for headers in ({}, {"Authorization": "Bearer nope"}):
        refused = requests.post(f"{token_server}/predict", data=photo, headers=headers, timeout=30)
        assert refused.status_code == 401 and refused.headers["Content-Type"] == "application/json"
        assert refused.json()["status"] == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{token_server}/health", timeout=30).status_code == 200
    allowed = requests.post(f"{token_server}/predict", data=photo, headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200 and allowed.json()["label"] in CLASS_NAMES


def test_serve_with_a_missing_model_is_a_clear_error(tmp_path, capsys):
    from core.cli import main, parser

    args = parser().parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8000, None)  # None: the project's default model
    assert main(["serve", "--model", str(tmp_path / "missing.keras")]) == 2
    assert "no such model file" in capsys.readouterr().err
