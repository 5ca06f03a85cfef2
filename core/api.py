"""The REST API: a Flask app that labels photos with one loaded, warmed-up model, served by waitress."""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, Request, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from core.pipeline import PipelineConfig
from core.predict import Prediction, Predictor

# Flask's request size cap. Waitress refuses bodies past WAITRESS_BODY_FACTOR times it before buffering them,
# so a client can never make the server spool gigabytes; between the two the answer is Flask's JSON 413.
MAX_CONTENT_LENGTH = int(os.environ.get("CVD_MAX_CONTENT_LENGTH", 20 * 1024 * 1024))
WAITRESS_BODY_FACTOR = 4
SERVER_THREADS = 8


def model_info(predictor: Predictor) -> dict:
    """What /health reports about the model: name, a content hash as its version, file, preset and accuracy."""
    from core.runs import model_meta

    path = predictor.path
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    meta = model_meta(path)
    metrics = meta.get("metrics", {})
    pipeline: PipelineConfig = predictor.pipeline
    return {
        "name": predictor.name,
        "version": digest.hexdigest()[:12],
        "file": path.name,
        "bytes": stat.st_size,
        "modified": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds"),
        "preset": meta.get("config", {}).get("preset"),
        "accuracy": metrics.get("accuracy", metrics.get("best_val_accuracy")),
        "accuracy_measured_on": metrics.get("measured_on"),
        **_accuracy_details(meta),
        "tta": predictor.tta,
        "trained_at": meta.get("finished_at"),
        "input": {"size": pipeline.size, "color_mode": pipeline.color_mode},
    }


def _accuracy_details(meta: dict) -> dict:
    # The reported accuracy's 95% interval, its photo count and how it was predicted; the training's own
    # one-look figure beside it when both are known.
    from core.metrics import recorded_accuracies

    app, single = recorded_accuracies(meta)
    score = app or single
    if score is None:
        return {}
    details = {"accuracy_ci95": list(score.interval), "accuracy_n": score.n, "accuracy_predicted": score.how}
    if app is not None and single is not None:
        details["accuracy_one_look"] = single.value
    return details


def _error(status: int, message: str, **extra):
    response = jsonify({"error": message, "status": status, **extra})
    response.status_code = status
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


def create_app(model: str | os.PathLike | Predictor, max_content_length: int | None = None) -> Flask:
    """The Flask app for one model, loaded and warmed up now (the Predictor is thread-safe)."""
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    info = model_info(predictor)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_content_length or MAX_CONTENT_LENGTH
    app.extensions["predictor"] = predictor

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
        if request.mimetype != "multipart/form-data":
            raise BadRequest("send the images as multipart files (field 'files', repeated)")
        uploads = [f for field in request.files for f in request.files.getlist(field)]
        if not uploads:
            raise BadRequest("no files: send the images as multipart files (field 'files', repeated)")
        items = [(f.filename or f"{f.name}[{i}]", f.read(), None) for i, f in enumerate(uploads)]
        results = [_result(p) for p in predictor.predict_many(items)]
        errors = sum(r["error"] is not None for r in results)
        return {"model": info["name"], "count": len(results), "errors": errors, "results": results}

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        # 400, 404, 405, 413 and the rest: a JSON body, never Werkzeug's HTML page.
        if err.code is None or err.code < 400:  # routing redirects are answers, not errors
            return err
        if err.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return _error(413, f"request too large: the limit is {limit / 2**20:g} MB")
        return _error(err.code or 500, err.description or err.name)

    @app.errorhandler(Exception)
    def unexpected_error(err: Exception):
        # Logged here with its traceback; the client gets no internals.
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")

    return app


def serve(
    model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, threads: int = SERVER_THREADS
) -> None:
    """Serve the API with waitress (a production WSGI server) until interrupted; port 0 picks a free one."""
    import waitress

    app = create_app(Path(model_path))
    limit = app.config["MAX_CONTENT_LENGTH"]
    server = waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=limit * WAITRESS_BODY_FACTOR,
        ident="cats-vs-dogs-studio",
    )
    name = app.extensions["predictor"].name
    # The socket is bound now, so this line tells scripts (and the tests) the server is ready, and on which port.
    print(f"serving model {name} on http://{server.effective_host}:{server.effective_port}", file=sys.stderr)
    try:
        server.run()
    finally:
        server.close()
