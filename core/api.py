"""The REST API: a Flask app that labels photos with one loaded, warmed-up model, served by waitress."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import resource
import sys
from datetime import UTC, datetime
from pathlib import Path

import waitress
from flask import Flask, Request, Response, jsonify, request
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from werkzeug.exceptions import BadRequest, HTTPException

from core import config
from core.data import Input
from core.fastpath import open_predictor
from core.pipeline import PipelineConfig
from core.predict import BasePredictor, Prediction
from core.registry import ModelChoice, describe

# The request size cap, the same in Flask and in waitress: waitress refuses a bigger body as it arrives (from its
# Content-Length, or as soon as a chunked body passes it), so a client can never make the server spool more.
MAX_CONTENT_LENGTH = int(os.environ.get("CVD_MAX_CONTENT_LENGTH", 20 * 1024 * 1024))
SERVER_THREADS = 8
# On every response: never sniffed into another type, framed, cached or sent on as a referrer.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
OPEN_PATHS = ("/health",)  # answered without the token, so a load balancer can probe the server


def model_info(predictor: BasePredictor) -> dict:
    """What /health reports about the model: name, a content hash as its version, file, preset and accuracy.

    What its JSON says is read by core.registry.describe, as the dashboard's sidebar reads it.
    """
    path = predictor.path
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    choice = describe(predictor.name, path)
    pipeline: PipelineConfig = predictor.pipeline
    return {
        "name": predictor.name,
        "version": digest.hexdigest()[:12],
        "file": path.name,
        "bytes": stat.st_size,
        "modified": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds"),
        "preset": choice.preset,
        "accuracy": choice.accuracy,
        "accuracy_measured_on": choice.measured_on,
        **_accuracy_details(choice),
        "tta": predictor.tta,
        "engine": predictor.engine,
        "trained_at": choice.trained_at,
        "input": {"size": pipeline.size, "color_mode": pipeline.color_mode},
    }


def _accuracy_details(choice: ModelChoice) -> dict:
    # The reported accuracy's 95% interval, its photo count and how it was predicted; the training's own
    # one-look figure beside it when both are known.
    score, single = choice.score, choice.single_look
    if score is None:
        return {}
    details = {"accuracy_ci95": list(score.interval), "accuracy_n": score.n, "accuracy_predicted": score.how}
    if single is not None and single is not score:
        details["accuracy_one_look"] = single.value
    return details


def _error(status: int, message: str, **extra):
    response = jsonify({"error": message, "status": status, **extra})
    response.status_code = status
    return response


def too_large_message(limit: int) -> str:
    """What a 413 says, from Flask or from waitress."""
    return f"request too large: the limit is {limit / 2**20:g} MB"


def _authorized(req: Request, token: str) -> bool:
    # Constant-time comparison: the time taken says nothing about how much of a guess was right.
    scheme, _, given = (req.headers.get("Authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _cors_headers(req: Request, origins: frozenset[str]) -> dict:
    # Only for configured origins; a preflight also learns what it may send.
    origin = req.headers.get("Origin")
    if not origin or not (origin in origins or "*" in origins):
        return {}
    headers = {"Access-Control-Allow-Origin": "*" if "*" in origins else origin, "Vary": "Origin"}
    if req.method == "OPTIONS":
        headers |= {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        }
    return headers


def _settings(token: str | None, cors_origins: str | None) -> tuple[str | None, frozenset[str]]:
    # None: read the environment (CVD_API_TOKEN, CVD_API_CORS_ORIGINS); "" turns either off.
    token = os.environ.get(config.API_TOKEN_ENV) if token is None else token
    origins = os.environ.get(config.API_CORS_ORIGINS_ENV, "") if cors_origins is None else cors_origins
    return token or None, frozenset(o.strip().rstrip("/") for o in origins.split(",") if o.strip())


def _guard(app: Flask, token: str | None, origins: frozenset[str]) -> None:
    # The bearer token before any route runs, and the security (and configured CORS) headers after every one.
    @app.before_request
    def require_token():
        if token and request.method != "OPTIONS" and request.path not in OPEN_PATHS and not _authorized(request, token):
            response = _error(401, "unauthorized: send the API token as `Authorization: Bearer <token>`")
            response.headers["WWW-Authenticate"] = 'Bearer realm="cats-vs-dogs-studio"'
            return response
        return None

    @app.after_request
    def add_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        response.headers.update(_cors_headers(request, origins))
        return response


def _one_upload(req: Request) -> tuple[bytes, str]:
    # A multipart upload (field `file`, or any single file field), else the raw body is the image.
    if req.mimetype == "multipart/form-data":
        files = [f for field in req.files for f in req.files.getlist(field)]
        chosen = req.files.get("file") if "file" in req.files else None
        if chosen is None and len(files) > 1:
            raise BadRequest("several files sent: post one to /predict, or several to /predict/batch")
        chosen = chosen or (files[0] if files else None)
        if chosen is None:
            raise BadRequest("no file: send the image as the multipart field 'file', or as the request body")
        return chosen.read(), chosen.filename or chosen.name or "file"
    # Not touching req.form first: parsing it would consume a raw body sent as form-urlencoded (curl's default).
    data = req.get_data(cache=False)
    if not data:
        raise BadRequest(
            "no file: the request body is empty; send the image as the multipart field 'file' or as the body"
        )
    return data, "body"


def _result(p: Prediction) -> dict:
    return {"file": p.file, "label": p.label, "prob_dog": p.prob_dog, "error": p.error}


def _many_uploads(req: Request) -> list[Input]:
    """An Input of the bytes of every file of a multipart batch request; BadRequest if there are none."""
    if req.mimetype != "multipart/form-data":
        raise BadRequest("send the images as multipart files (field 'files', repeated)")
    uploads = [f for field in req.files for f in req.files.getlist(field)]
    if not uploads:
        raise BadRequest("no files: send the images as multipart files (field 'files', repeated)")
    return [Input.of_bytes(f.filename or f"{f.name}[{i}]", f.read()) for i, f in enumerate(uploads)]


def create_app(
    model: str | os.PathLike | BasePredictor,
    max_content_length: int | None = None,
    token: str | None = None,
    cors_origins: str | None = None,
) -> Flask:
    """The Flask app for one model, loaded and warmed up now (every predictor is thread-safe).

    A path is opened with core.fastpath.open_predictor: its ONNX export on ONNX Runtime, else TensorFlow.

    token: the bearer token every route but /health requires (default: $CVD_API_TOKEN; unset or "": none).
    cors_origins: comma-separated origins that browsers may call it from, or "*" (default:
    $CVD_API_CORS_ORIGINS; unset: no CORS headers, so browsers allow same-origin calls only).
    """
    predictor = model if isinstance(model, BasePredictor) else open_predictor(model)
    info = model_info(predictor)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_content_length or MAX_CONTENT_LENGTH
    app.extensions["predictor"] = predictor
    _guard(app, *_settings(token, cors_origins))

    @app.get("/health")
    def health():
        return {"status": "ok", "model": info}

    @app.post("/predict")
    def predict():
        data, name = _one_upload(request)
        result = predictor.predict_bytes(data, name)
        if result.error:
            return _error(400, result.error, file=name)
        return {"label": result.label, "prob_dog": result.prob_dog, "model": info["name"]}

    @app.post("/predict/batch")
    def predict_batch():
        results = [_result(p) for p in predictor.predict_many(_many_uploads(request))]
        errors = sum(r["error"] is not None for r in results)
        return {"model": info["name"], "count": len(results), "errors": errors, "results": results}

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        # 400, 404, 405, 413 and the rest: a JSON body, never Werkzeug's HTML page.
        if err.code is None or err.code < 400:  # routing redirects are answers, not errors
            return err
        if err.code == 413:
            return _error(413, too_large_message(app.config["MAX_CONTENT_LENGTH"]))
        return _error(err.code or 500, err.description or err.name)

    @app.errorhandler(Exception)
    def unexpected_error(err: Exception):
        # Logged here with its traceback; the client gets no internals.
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")

    return app


def _waitress_settings(limit: int, threads: int) -> dict:
    # Slow and idle clients cost a socket and a little memory each, never a thread: waitress buffers each request
    # whole before a thread runs it. These bound what each may hold, and how many there may be.
    return {
        "threads": threads,
        "connection_limit": config.API_CONNECTION_LIMIT,
        "channel_timeout": config.API_CHANNEL_TIMEOUT_S,  # idle connections are closed after this long
        "cleanup_interval": 5,  # how often it looks for them
        "backlog": 2048,  # connections past the limit wait here rather than being refused
        "asyncore_use_poll": True,  # select() cannot watch file descriptors past 1024
        "max_request_body_size": limit,
        "max_request_header_size": 32 * 1024,  # per half-sent request: 256 KB by default
        "inbuf_overflow": 256 * 1024,  # a body past this is buffered in a temp file, not in memory
        "ident": "cats-vs-dogs-studio",
    }


def _raise_open_files_limit(needed: int) -> None:
    # Each connection is a file descriptor: a default soft limit of 1024 would cap the connection limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(
    model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, threads: int = SERVER_THREADS
) -> None:
    """Serve the API with waitress (a production WSGI server) until interrupted; port 0 picks a free one."""
    app = create_app(Path(model_path))
    settings = _waitress_settings(app.config["MAX_CONTENT_LENGTH"], threads)
    _raise_open_files_limit(settings["connection_limit"] + 256)
    sockets: dict = {}
    server = waitress.create_server(app, map=sockets, host=host, port=port, **settings)
    answer_waitress_errors_in_json(sockets, too_large_message(settings["max_request_body_size"]))
    name = app.extensions["predictor"].name
    # The socket is bound now, so this line tells scripts (and the tests) the server is ready, and on which port.
    print(f"serving model {name} on http://{server.effective_host}:{server.effective_port}", file=sys.stderr)
    try:
        server.run()
    finally:
        server.close()


def answer_waitress_errors_in_json(sockets: dict, too_large: str) -> None:
    """Make waitress's own error answers ours: JSON, with the security headers.

    waitress answers some requests before the app sees them: a body over max_request_body_size (413), headers it
    cannot parse (400) or that are too large (431), a transfer encoding it does not know (501). It makes them in
    `waitress.task.ErrorTask`, as text/plain, and has no public hook to change that. So this relies on waitress 3's
    internals (pinned `waitress>=3.0,<4` in requirements.txt, with this function named there): each listening
    server's `channel_class`, whose `error_task_class` makes those answers. tests/test_api.py checks it.
    """

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            message = too_large if error.code == 413 else f"{error.reason.lower()}: {error.body}"
            body = json.dumps({"error": message, "status": error.code}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), *SECURITY_HEADERS.items()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    for listener in sockets.values():  # one server per listening socket (two for a host like localhost)
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = JsonErrorChannel
