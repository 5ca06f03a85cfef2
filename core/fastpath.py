"""The TensorFlow-free prediction path: a model's ONNX export on ONNX Runtime, made on first use, never trusted blindly.

`open_predictor` is what the CLI's predict, evaluate and submission, the API and the dashboard call. It returns a
FastPredictor on the model's ONNX export when it can and the Keras Predictor otherwise, with a note saying why.
ONNX Runtime is the engine because benchmarks/engines.py measured it the fastest exact (f32) engine here: 3.4x
TensorFlow at batch 1, level at batch 128, and a process that starts 26x sooner in 0.15x the memory. Where the CPU
runs bf16 natively (AMX or AVX-512 BF16), the default engine is OpenVINO bf16 with a guard (GuardedBf16): photos
whose bf16 P(dog) is near a decision are predicted again on ONNX Runtime, so the labels are f32's
(benchmarks/fast_path.py).

The export lives beside the .keras file (default.keras -> default.onnx + default.onnx.json) and its sidecar holds
the .keras file's sha256: every load checks the export's bytes and that hash (core.export.verify_export), so a
corrupt or stale export is rebuilt, never used. Exporting needs TensorFlow, so it runs in a child process
(`python -m core export`): the process that predicts never imports TensorFlow or Keras, also on a first use.
Predictions are the app's: the same decode (core.pipeline.decode), the same flip TTA rule (core.tta), the same
threshold, and P(dog) within 1e-4 of the Keras path on ONNX Runtime (tests/test_fastpath.py); on OpenVINO bf16 the
same labels, P(dog) within 0.05.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock

from core.config import ROOT, TTA_MODES
from core.errors import ModelMissing, SettingsError
from core.export import ExportedModel, ExportError, export_path, load_export, verify_export
from core.hardware import has_bf16_inference
from core.pipeline import PipelineConfig
from core.predict import BasePredictor, Predictor
from core.tta import flip_tta

# CVD_PREDICT_ENGINE picks the engine: auto (the default: openvino-bf16 where the CPU has AMX or AVX-512 BF16, else
# onnxruntime), onnxruntime, openvino-bf16, or tensorflow, which turns the fast path off everywhere (the Keras path).
ENGINE_ENV = "CVD_PREDICT_ENGINE"
ENGINES = ("auto", "onnxruntime", "openvino-bf16", "tensorflow")
# bf16 looks are trusted only this far from a decision (the 0.5 threshold, the TTA's unsure bounds): twice the
# largest |delta P(dog)| OpenVINO bf16 showed against f32 on test1's 1,001 photos (2.5e-2, benchmarks/engines.py).
BF16_GUARD = 0.05
EXPORT_TIMEOUT_S = 900  # TensorFlow's import and tf2onnx on a busy 2-core machine take well under a minute
_CHUNK = 256  # images per engine call: bounds the activations a 2,000-photo evaluation holds at once
Note = Callable[[str], None]


def _stderr_note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


class GuardedBf16:
    """OpenVINO bf16 looks wherever they cannot change a decision, and ONNX Runtime's f32 ones where they could.

    A photo whose bf16 P(dog) (after the TTA) lies within `guard` of 0.5, or whose first look lies within it of the
    TTA's unsure bounds (0.5 +- margin), is predicted again in f32, both looks: so its label, and whether it got a
    second look, are f32's whenever bf16 is off by less than `guard`. Other photos keep bf16's P(dog).
    """

    def __init__(self, quick: ExportedModel, exact: ExportedModel, guard: float = BF16_GUARD):
        self.quick, self.exact, self.guard = quick, exact, guard
        self.metadata = exact.metadata

    def probabilities(self, pixels: np.ndarray, tta: str) -> np.ndarray:
        """P(dog) with the app's flip TTA, as ExportedModel.probabilities."""
        looks: list[np.ndarray] = []

        def quick(batch: np.ndarray) -> np.ndarray:
            looks.append(self.quick.predict(batch))  # flip_tta's first call is every photo's first look
            return looks[-1]

        margin = self.metadata["tta"]["margin"]
        prob = flip_tta(quick, pixels, mode=tta, margin=margin)
        near = np.abs(prob - 0.5) < self.guard
        if tta == "unsure" and len(prob):
            near |= np.abs(np.abs(looks[0] - 0.5) - margin) < self.guard
        if near.any():
            prob[near] = self.exact.probabilities(pixels[near], tta)
        return prob


class FastPredictor(BasePredictor):
    """A model's verified ONNX export on ONNX Runtime (or OpenVINO bf16, guarded), with the app's decode, flip TTA
    and threshold; thread-safe.

    It never imports TensorFlow. `model`, the Keras model that Grad-CAM needs, is loaded on first use only.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        tta: str = "unsure",
        artifact: str | os.PathLike | None = None,
        engine: str = "onnxruntime",
    ):
        if tta not in TTA_MODES:
            raise SettingsError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
        super().__init__()
        self.path = Path(model_path)
        self.tta = tta
        self.engine = engine
        artifact = artifact or export_path(self.path, "onnx")
        self.exported = load_export(artifact, self.path, engine="onnxruntime")
        if engine == "openvino-bf16":
            quick = load_export(artifact, self.path, engine="openvino", precision="bf16")
            self.exported = GuardedBf16(quick, self.exported)
        shape = tuple(self.exported.metadata["input"]["shape"])
        self.pipeline = PipelineConfig.from_input_shape(shape)
        self.exported.probabilities(np.zeros((1, *shape[1:]), np.uint8), tta="all")  # warm both looks up now
        self._model = None
        self._model_lock = threading.Lock()

    def pixel_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """P(dog) with the predictor's TTA (core.tta.flip_tta) for a uint8 batch decoded by core.pipeline.decode."""
        out = [self.exported.probabilities(pixels[i : i + _CHUNK], self.tta) for i in range(0, len(pixels), _CHUNK)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """P(dog) for a float32 batch made by core.pipeline.to_model_input (its uint8 pixels come back exactly)."""
        return self.pixel_probabilities(np.rint(np.clip(batch, 0.0, 1.0) * 255).astype(np.uint8))

    @property
    def model(self):
        """The Keras model, for Grad-CAM: loaded (with TensorFlow) the first time it is asked for, then kept."""
        with self._model_lock:
            if self._model is None:
                from core.model import load_model

                self._model = load_model(self.path)
            return self._model


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _why_not_current(target: Path, model_path: Path) -> str | None:
    # None when the export at target is this model's, else why not, in words (no paths).
    if not target.exists():
        return "none yet"
    try:
        verify_export(target, model_path)
    except ExportError as err:
        return str(err).removeprefix(f"{target}: ")
    return None


def current_export(model_path: str | os.PathLike, fmt: str = "onnx") -> Path | None:
    """The export beside a model if it is of the model's current bytes and its own are intact; None otherwise."""
    model_path = Path(model_path)
    target = export_path(model_path, fmt)
    return target if _why_not_current(target, model_path) is None else None


def _export_in_child(model_path: Path, fmt: str) -> None:
    command = [sys.executable, "-m", "core", "export", "--model", str(model_path), "--format", fmt]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"the {fmt} export took longer than {EXPORT_TIMEOUT_S} s and was stopped") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        reason = lines[-1].removeprefix("error: ") if lines else f"the exporter exited with code {proc.returncode}"
        raise ExportError(f"the {fmt} export failed: {reason}")


def ensure_export_in_child(model_path: str | os.PathLike, fmt: str = "onnx", note: Note | None = None) -> Path:
    """The export of the model's current bytes beside it: the one there if it verifies, else one made now.

    A missing, corrupt or stale export is made again by `python -m core export` in a child process (TensorFlow
    loads there, not here), one process at a time per export (a file lock beside it), and verified once more
    here before it is returned. Raises ExportError (or OSError, e.g. a read-only folder) when it cannot be had.
    """
    model_path = Path(model_path).resolve()
    target = export_path(model_path, fmt)
    if _why_not_current(target, model_path) is None:
        return target
    with FileLock(_lock_path(target), timeout=EXPORT_TIMEOUT_S):
        why = _why_not_current(target, model_path)  # another process may have made it while this one waited
        if why is not None:
            (note or _stderr_note)(
                f"exporting {model_path.name} to {fmt} ({why}); once per model file, in a child process that "
                f"loads TensorFlow, cached as {target.name} beside it"
            )
            _export_in_child(model_path, fmt)
            verify_export(target, model_path)  # the child's word is not taken for it either
    return target


def engine_wanted(flags: frozenset[str] | None = None) -> str:
    """The engine asked for through CVD_PREDICT_ENGINE, with auto (the default) resolved for this CPU: openvino-bf16
    where it runs bf16 natively (AMX or AVX-512 BF16) and OpenVINO is installed, else onnxruntime."""
    wanted = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if wanted not in ENGINES:
        raise SettingsError(f"{ENGINE_ENV}={wanted!r}: use one of {', '.join(ENGINES)}")
    if wanted != "auto":
        return wanted
    native = has_bf16_inference(flags)
    return "openvino-bf16" if native and importlib.util.find_spec("openvino") else "onnxruntime"


def _reason(err: Exception) -> str:
    # In words: our own errors say what happened; anything else is named by its type, never shown as a repr.
    if isinstance(err, ExportError | OSError | ImportError) and str(err):
        return str(err)
    return type(err).__name__


def open_predictor(model_path: str | os.PathLike, tta: str = "unsure", note: Note | None = None) -> BasePredictor:
    """The fastest predictor to be had for a model: FastPredictor on its ONNX export, else the Keras Predictor.

    Where the fast path cannot be had (onnxruntime missing, a folder it cannot write, an export that fails) it
    falls back to TensorFlow and note() says why (default: a "note:" line on stderr); it never fails for that.
    """
    model_path = Path(model_path)
    if tta not in TTA_MODES:
        raise SettingsError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
    if not model_path.exists():
        raise ModelMissing(f"{model_path}: no such model file")
    engine = engine_wanted()
    if engine == "tensorflow":
        return Predictor(model_path, tta)
    note = note or _stderr_note
    try:
        for runtime in ("onnxruntime", "openvino") if engine == "openvino-bf16" else ("onnxruntime",):
            if importlib.util.find_spec(runtime) is None:
                raise ImportError(f"{runtime} is not installed")
        return FastPredictor(model_path, tta, ensure_export_in_child(model_path, "onnx", note), engine)
    except Exception as err:  # any failure of the fast path: the Keras path still predicts
        note(f"the fast path is not available for {model_path.name} ({_reason(err)}): predicting with TensorFlow")
    return Predictor(model_path, tta)
