"""Label photos with the LiteRT (TensorFlow Lite) export of a Cats vs Dogs Studio model, as a phone would.

    python -m core export --format litert                    # writes models/default.tflite and its .json sidecar
    python examples/predict_litert.py photo.jpg more/ [--tta off|unsure|all]

Needs only ai-edge-litert (the LiteRT runtime), numpy and opencv-python-headless, and cvd_runtime.py and
cvd_tta.py from this folder. Prints file,label,prob_dog,error rows, the same as `python -m core predict`. The
model's "serving_default" signature takes uint8 RGB (NHWC, "image") and returns P(dog) ("prob_dog"); the /255
scaling is inside it. On Android or iOS, feed the same uint8 pixels, preprocessed as the sidecar says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cvd_runtime
from ai_edge_litert.interpreter import Interpreter


def load(model: Path, meta: dict, engine: str):
    """A function from a uint8 NHWC batch to P(dog) on the LiteRT interpreter (it resizes to each batch)."""
    runner = Interpreter(model_path=str(model)).get_signature_runner("serving_default")
    return lambda pixels: runner(**{meta["input"]["name"]: pixels})["prob_dog"]


if __name__ == "__main__":
    sys.exit(cvd_runtime.main(sys.argv[1:], "litert", ".tflite", load, engines=("litert",)))
