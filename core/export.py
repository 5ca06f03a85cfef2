"""Exports of a saved model for other runtimes: ONNX, TF SavedModel and LiteRT, each with a metadata sidecar.

Every export takes uint8 pixels (RGB or gray, NHWC, at the model's size) with the /255 scaling inside the graph,
and returns {"prob_dog": P(dog)}. Beside it, `<export>.json` (the sidecar) says how to preprocess, how to read
the output, the TTA rule, the accuracy and what it was measured on, and the sha256 of the export and of the
`.keras` file it came from, so that a corrupt or stale export is refused, never trusted.

Only `export_model` imports TensorFlow; `verify_export` and `load_export` on onnxruntime, openvino or litert do
not, which is what a TensorFlow-free prediction process needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import threading
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.config import CLASS_NAMES, ROOT, TTA_MODES, UNSURE_MARGIN, temp_sibling
from core.errors import ExportError
from core.tta import flip_tta

# The CLI imports this module at start-up: keras, TensorFlow, the converters and runtimes load in the functions
# that need them, and so do core.runs and core.registry (they bring pandas).
if TYPE_CHECKING:
    import keras

FORMATS = ("onnx", "saved_model", "litert")
# The runtimes each format loads in here; the first is the default.
ENGINES = {"onnx": ("onnxruntime", "openvino"), "saved_model": ("tensorflow",), "litert": ("litert",)}
SCHEMA = "cats-vs-dogs-studio/export/1"
ONNX_OPSET = 17
# An export must match the Keras model it came from to this much P(dog), or it is not written.
PARITY_TOLERANCE = 1e-4
_SUFFIX = {"onnx": ".onnx", "saved_model": "_saved_model", "litert": ".tflite"}
_KERAS_FORMAT = {"onnx": "onnx", "saved_model": "tf_saved_model", "litert": "litert"}


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """The metadata file beside an export: the export's name plus .json (default.onnx -> default.onnx.json)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_sha256(path: str | os.PathLike) -> str:
    """sha256 of an export: of the file, or for a folder (SavedModel) of every file's relative path and bytes.

    examples/cvd_runtime.py computes the same, so the standalone examples check exports as the app does.
    """
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def export_path(model_path: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> Path:
    """Where an export goes: out when it names one (a .onnx or .tflite file, a new or earlier SavedModel folder),
    else a file named after the model in the folder out; beside the model when out is None."""
    _check_format(fmt)
    model_path = Path(model_path)
    name = model_path.stem + _SUFFIX[fmt]
    if out is None:
        return model_path.with_name(name)
    out = Path(out)
    if fmt == "saved_model":
        is_other_folder = out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").exists()
        return out / name if is_other_folder else out
    return out if out.suffix == _SUFFIX[fmt] else out / name


def serving_model(model: keras.Model) -> keras.Model:
    """The batch-norm-folded inference net behind a uint8 input with the /255 scaling inside: {"prob_dog": P(dog)}."""
    import keras

    from core.model import inference_model, model_pipeline

    pixels = keras.Input(model_pipeline(model).input_shape, dtype="uint8", name="image")
    # Rescaling casts to float32 and multiplies by float32(1/255): the same numbers as core.pipeline.to_model_input.
    scaled = keras.layers.Rescaling(1 / 255, name="scale_1_255")(pixels)
    return keras.Model(pixels, {"prob_dog": inference_model(model)(scaled)}, name="cats_vs_dogs")


def _write(wrapper: keras.Model, fmt: str, path: Path) -> None:
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *wrapper.input_shape[1:]), tf.uint8, name="image")]
    options = {"opset_version": ONNX_OPSET} if fmt == "onnx" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's numpy 2 shim probes np.object
        wrapper.export(str(path), format=_KERAS_FORMAT[fmt], verbose=False, input_signature=signature, **options)
    if fmt == "onnx":
        _name_batch_axis(path)


def _name_batch_axis(path: Path) -> None:
    # tf2onnx calls the batch axis "unk__56"; Triton's and other tools' configs read better with "batch".
    import onnx

    graph = onnx.load(str(path))
    for value in [*graph.graph.input, *graph.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(graph, str(path))


def _self_check(wrapper: keras.Model, fmt: str, path: Path) -> dict:
    # Parity is measured before an export is kept: seeded random photos through Keras and through the runtime.
    pixels = np.random.default_rng(0).integers(0, 256, (16, *wrapper.input_shape[1:]), dtype=np.uint8)
    expected = np.asarray(wrapper(pixels, training=False)["prob_dog"]).reshape(-1)
    engine = ENGINES[fmt][0]
    try:
        got = np.asarray(_OPENERS[engine](path, "f32")(pixels)).reshape(-1)
    except ImportError:
        return {"runtime": engine, "result": f"not checked: {engine} is not installed here"}
    diff = float(np.abs(got - expected).max())
    if not diff <= PARITY_TOLERANCE:  # also refuses nan
        raise ExportError(f"the {fmt} export disagrees with the Keras model by {diff:.2g} in P(dog); nothing written")
    return {"runtime": engine, "inputs": "16 seeded random uint8 images", "max_abs_diff_prob_dog": diff}


def _replace(tmp: Path, target: Path) -> None:
    # os.replace cannot put a folder over a non-empty one: move the old one aside first, then delete it.
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(tmp.name + ".old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def export_model(model_path: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> Path:
    """Export a .keras model in fmt (see the module docstring) and write its sidecar; returns the export's path."""
    from core.model import load_model
    from core.runs import write_json

    model_path = Path(model_path)
    target = export_path(model_path, fmt, out)
    if fmt == "saved_model" and target.is_file():
        raise ExportError(f"{target} is a file: a SavedModel is a folder; choose another --out")
    source_sha = file_sha256(model_path)  # hashed before loading: the sidecar names the bytes that were exported
    model = load_model(model_path)
    wrapper = serving_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        _write(wrapper, fmt, tmp)
        check = _self_check(wrapper, fmt, tmp)
        artifact_sha = artifact_sha256(tmp)  # of the bytes checked, before anyone else can replace them
        sidecar_path(target).unlink(missing_ok=True)  # an old sidecar must never describe the new bytes
        _replace(tmp, target)
    finally:
        _remove(tmp)
    meta = export_metadata(model_path, model, fmt, {"file": target.name, "sha256": artifact_sha}, source_sha)
    write_json(sidecar_path(target), {**meta, "parity_check": check})
    return target


def _accuracy(model_path: Path) -> dict:
    from core.registry import describe
    from core.runs import model_meta

    choice = describe("export", model_path)
    accuracy = {"value": choice.accuracy, "measured_on": choice.measured_on}
    meta = model_meta(model_path)
    metrics, calibration = meta.get("metrics", {}), meta.get("calibration") or {}
    if calibration.get("folded"):  # prob_dog is calibrated: the export outputs it as the app does
        accuracy["calibration"] = {
            "method": calibration["method"],
            "fitted_on": calibration["on"],
            "calibration_error": metrics.get("calibration_error"),
        }
    if "accuracy" in metrics and "best_val_accuracy" in metrics:
        before = ", before the calibration was folded in" if calibration.get("folded") else ""
        accuracy["single_look"] = {
            "value": metrics["best_val_accuracy"],
            "measured_on": "the same held-out photos, one look per photo (tta off), by training at its best epoch"
            + before,
        }
    return accuracy


def _versions(fmt: str) -> dict:
    import cv2
    import keras
    import tensorflow as tf

    versions = {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__}
    versions |= {"keras": keras.__version__, "tensorflow": tf.__version__}
    if fmt == "onnx":
        import onnx
        import tf2onnx

        versions |= {"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__, "onnx_opset": ONNX_OPSET}
    return versions


def _preprocessing(size: int, gray: bool) -> dict:
    return {
        "decode": "cv2.imdecode; a JPEG at 1/2, 1/4 or 1/8 of its size (cv2.IMREAD_REDUCED_COLOR_N, or _GRAYSCALE_N)"
        " with the largest N that keeps its shorter side >= N x size; other formats at full size, transparent ones"
        " composited on white",
        "color": "gray (cv2.IMREAD_GRAYSCALE)" if gray else "RGB (cv2 decodes BGR: convert with cv2.COLOR_BGR2RGB)",
        "resize": {"size": [size, size], "method": "cv2.INTER_AREA", "keep_aspect_ratio": False, "crop": None},
        "scaling": "none: pass uint8 0-255; the model divides by 255 itself",
        "reference": "core.pipeline.decode in Cats vs Dogs Studio; examples/cvd_runtime.py does the same",
    }


def export_metadata(model_path: Path, model: keras.Model, fmt: str, artifact: dict, source_sha: str) -> dict:
    """The sidecar: what an export takes and returns, how to preprocess, labels, TTA, accuracy, provenance."""
    from core.model import model_pipeline
    from core.runs import model_meta

    pipeline = model_pipeline(model)
    gray = pipeline.color_mode == "grayscale"
    source_meta = model_meta(model_path)
    return {
        "schema": SCHEMA,
        "format": fmt,
        "artifact": artifact,
        "input": {"name": "image", "shape": [None, *pipeline.input_shape], "dtype": "uint8", "layout": "NHWC"}
        | {"color": "gray" if gray else "RGB"},
        "output": {"name": "prob_dog", "shape": [None, 1], "dtype": "float32", "meaning": "P(dog), 0 to 1"},
        "preprocessing": _preprocessing(pipeline.size, gray),
        "labels": {"class_names": list(CLASS_NAMES), "threshold": 0.5, "rule": "dog when prob_dog >= 0.5, else cat"},
        "tta": {
            "default": "unsure",
            "modes": list(TTA_MODES),
            "margin": UNSURE_MARGIN,
            "rule": f"unsure: a photo with |prob_dog - 0.5| < {UNSURE_MARGIN} is predicted again mirrored (left-right)"
            " and gets the mean of the two looks; all: every photo; off: one look (examples/cvd_tta.py)",
        },
        "accuracy": _accuracy(model_path),
        "source": {
            "file": model_path.name,
            "sha256": source_sha,
            "bytes": model_path.stat().st_size,
            "preset": source_meta.get("config", {}).get("preset"),
            "run": source_meta.get("source_run") or source_meta.get("id"),
        },
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(fmt),
    }


def _is_format(artifact: Path, fmt) -> bool:
    # A sidecar's format must be the file's: a .onnx or .tflite file, or a SavedModel folder.
    if fmt == "saved_model":
        return (artifact / "saved_model.pb").is_file()
    return fmt in FORMATS and artifact.is_file() and artifact.suffix == _SUFFIX[fmt]


def verify_export(artifact: str | os.PathLike, model_path: str | os.PathLike | None = None) -> dict:
    """The sidecar of an export whose bytes are what was written and, given the .keras file, made from its bytes.

    Raises ExportError for a missing or foreign sidecar, a corrupt export, or a stale one.
    """
    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if not artifact.exists():
        raise ExportError(f"{artifact}: no such export")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        raise ExportError(f"{artifact}: its metadata {side.name} is missing or unreadable: not trusted") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA or not _is_format(artifact, meta.get("format")):
        raise ExportError(f"{artifact}: {side.name} is not the metadata of an export of this project")
    if artifact_sha256(artifact) != (meta.get("artifact") or {}).get("sha256"):
        raise ExportError(f"{artifact}: corrupt: its bytes differ from what was exported")
    if model_path is not None and file_sha256(model_path) != (meta.get("source") or {}).get("sha256"):
        raise ExportError(f"{artifact}: stale: it was exported from other bytes than {Path(model_path).name}")
    return meta


def ensure_export(model_path: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None) -> Path:
    """An export of the model's current bytes: the one already at export_path if it verifies, else a fresh one."""
    target = export_path(model_path, fmt, out)
    try:
        verify_export(target, model_path)
    except ExportError:
        return export_model(model_path, fmt, out)
    return target


def _open_onnxruntime(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(["prob_dog"], {"image": pixels})[0]


def _open_openvino(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    # The CPU plugin picks bf16 by itself where the CPU has it (AMX or AVX-512 BF16): say which precision we want.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    local = threading.local()  # an infer request serves one call at a time: one per thread

    def run(pixels: np.ndarray) -> np.ndarray:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        return np.array(local.request.infer({"image": pixels})["prob_dog"])

    return run


def _open_litert(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    lock = threading.Lock()  # one interpreter runs one batch at a time

    def run(pixels: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(runner(image=pixels)["prob_dog"])

    return run


def _open_tensorflow(path: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    def run(pixels: np.ndarray) -> np.ndarray:
        # Through `loaded`, which must outlive its signature: the signature holds only weak references to it.
        return loaded.signatures["serving_default"](image=tf.constant(pixels))["prob_dog"].numpy()

    return run


_OPENERS = {
    "onnxruntime": _open_onnxruntime,
    "openvino": _open_openvino,
    "litert": _open_litert,
    "tensorflow": _open_tensorflow,
}


@dataclass(frozen=True)
class ExportedModel:
    """A verified export loaded in a runtime: P(dog) of uint8 NHWC batches, safe to call from several threads."""

    path: Path
    metadata: dict
    engine: str
    precision: str
    _run: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """One look per image: P(dog) as float32, for a uint8 batch at the model's input shape."""
        return np.asarray(self._run(np.ascontiguousarray(pixels, dtype=np.uint8)), np.float32).reshape(-1)

    def probabilities(self, pixels: np.ndarray, tta: str | None = None) -> np.ndarray:
        """P(dog) with the app's flip TTA (core.tta.flip_tta), in the sidecar's default mode unless tta is given."""
        rule = self.metadata["tta"]
        return flip_tta(self.predict, pixels, mode=tta or rule["default"], margin=rule["margin"])


def load_export(
    artifact: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    engine: str | None = None,
    precision: str = "f32",
) -> ExportedModel:
    """Verify an export (against the .keras file too, if given) and load it in a runtime of its format.

    precision "bf16" is for OpenVINO only, on CPUs with native bf16; it moves P(dog) by up to ~1e-2.
    """
    meta = verify_export(artifact, model_path)
    engine = engine or ENGINES[meta["format"]][0]
    if engine not in ENGINES[meta["format"]]:
        raise ExportError(f"a {meta['format']} export runs on {', '.join(ENGINES[meta['format']])}, not {engine}")
    if precision != "f32" and engine != "openvino":
        raise ExportError(f"{engine} runs these exports in f32 only")
    return ExportedModel(Path(artifact), meta, engine, precision, _OPENERS[engine](Path(artifact), precision))


EXAMPLE_SCRIPT = {"onnx": "predict_onnx.py", "saved_model": "predict_saved_model.py", "litert": "predict_litert.py"}


def export_bundle(artifact: str | os.PathLike) -> bytes:
    """A verified export as a zip to download: the export, its sidecar, and the example script that runs it.

    Unzipped, `python predict_<format>.py IMAGE...` in that folder prints what `python -m core predict` prints.
    """
    artifact = Path(artifact)
    meta = verify_export(artifact)  # only bytes that are what was exported leave the server
    examples = ROOT / "examples"
    files = [p for p in sorted(artifact.rglob("*")) if p.is_file()] if artifact.is_dir() else [artifact]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for file in files:
            bundle.write(file, file.relative_to(artifact.parent).as_posix())
        bundle.write(sidecar_path(artifact), sidecar_path(artifact).name)
        for script in (EXAMPLE_SCRIPT[meta["format"]], "cvd_runtime.py", "cvd_tta.py"):
            bundle.write(examples / script, script)
    return buffer.getvalue()
