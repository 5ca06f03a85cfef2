"""Label photos with the TF SavedModel export of a Cats vs Dogs Studio model, the format TF Serving serves.

    python -m core export --format saved_model --out serving/cvd/1    # TF Serving's <model>/<version> layout
    python examples/predict_saved_model.py --model serving/cvd/1 photo.jpg more/ [--tta off|unsure|all]

Needs only tensorflow (or TF Serving: see below), numpy and opencv-python-headless, and cvd_runtime.py and
cvd_tta.py from this folder. Prints file,label,prob_dog,error rows, the same as `python -m core predict`.
The "serving_default" signature takes uint8 RGB (NHWC, "image") and returns P(dog) ("prob_dog"); the /255
scaling is inside it. With TF Serving, POST the same uint8 pixels, preprocessed as the sidecar says, to
/v1/models/cvd:predict as {"inputs": {"image": [[[[r, g, b], ...]]]}}.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cvd_runtime


def load(model: Path, meta: dict, engine: str):
    """A function from a uint8 NHWC batch to P(dog) through the SavedModel's serving_default signature."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model))

    def predict(pixels):
        # Through `loaded`, which must outlive its signature: the signature holds only weak references to it.
        return loaded.signatures["serving_default"](**{meta["input"]["name"]: tf.constant(pixels)})["prob_dog"].numpy()

    return predict


if __name__ == "__main__":
    sys.exit(cvd_runtime.main(sys.argv[1:], "saved_model", "_saved_model", load, engines=("tensorflow",)))
