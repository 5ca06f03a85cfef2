"""Label photos with the ONNX export of a Cats vs Dogs Studio model, on ONNX Runtime (or OpenVINO).

    python -m core export --format onnx                      # writes models/default.onnx and its .json sidecar
    python examples/predict_onnx.py photo.jpg more/ [--tta off|unsure|all] [--engine openvino]

Needs only onnxruntime (or openvino), numpy and opencv-python-headless, and cvd_runtime.py and cvd_tta.py from
this folder. Prints file,label,prob_dog,error rows, the same as `python -m core predict`. The model takes uint8
RGB (NHWC, input "image") and returns P(dog) ("prob_dog"): the /255 scaling is inside it. The same file serves
on Triton's onnxruntime backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cvd_runtime
import numpy as np


def load(model: Path, meta: dict, engine: str):
    """A function from a uint8 NHWC batch to P(dog), on ONNX Runtime or OpenVINO (float32, for exact results)."""
    if engine == "openvino":
        import openvino as ov

        # OpenVINO runs in bf16 by default on CPUs that have it: ask for f32 to get the app's numbers.
        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda pixels: compiled(pixels)["prob_dog"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(["prob_dog"], {meta["input"]["name"]: np.ascontiguousarray(pixels)})[0]


if __name__ == "__main__":
    sys.exit(cvd_runtime.main(sys.argv[1:], "onnx", ".onnx", load, engines=("onnxruntime", "openvino")))
