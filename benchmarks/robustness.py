"""Does the model care whether a photo is original-size or a 200x200 copy like train.zip's? Side by side.

train.zip was resized to 200x200 (aspect ratio not kept) before it reached us; the photos the model meets in
use are original-size (about 500x375). test1.zip holds 1,001 original-size photos without labels, so this
measures agreement instead of accuracy: each photo is predicted as-is and as a train.zip-style copy (squashed
to 200x200, re-encoded as JPEG), and the two answers are compared (single looks, no TTA). It also compares the
three flip test-time augmentation modes on the model's validation split: off, unsure (the default: a mirrored
second look only where P(dog) is between 0.1 and 0.9) and all, with the share of photos each one mirrors.

Usage: python benchmarks/robustness.py [--model models/default.keras]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.config import TTA_MODES, UNSURE_MARGIN
from core.data import Source, label_from_name
from core.pipeline import ImageError, preprocess
from core.predict import Predictor
from core.runs import model_meta


def train_zip_style(data: bytes) -> bytes:
    """Re-create what the third party did to train.zip: squash to 200x200 and re-encode as JPEG."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(
        ".jpg", cv2.resize(img, (200, 200), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    assert ok
    return buf.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(config.DEFAULT_MODEL))
    parser.add_argument("--photos", default=str(config.KAGGLE_TEST_ZIP))
    parser.add_argument("--labeled", default=str(config.KAGGLE_TRAIN_ZIP))
    args = parser.parse_args()
    predictor = Predictor(args.model, tta="off")
    cfg = predictor.pipeline

    photos = Source(args.photos)
    originals, squashed = [], []
    for item in photos.listing:
        try:
            data = photos.read(item.name)
            originals.append(preprocess(data, cfg))
            squashed.append(preprocess(train_zip_style(data), cfg))
        except ImageError:
            continue
    p_orig = predictor.probabilities(np.stack(originals))
    p_sq = predictor.probabilities(np.stack(squashed))
    agree = float(((p_orig >= 0.5) == (p_sq >= 0.5)).mean())
    print(f"{len(originals)} original-size photos of {Path(args.photos).name}, model {Path(args.model).name}")
    print(f"  label agreement, original vs train.zip-style 200x200 copy: {agree:.4f}")
    print(f"  mean |P(dog) difference|: {float(np.abs(p_orig - p_sq).mean()):.4f}")
    print(
        f"  share predicted dog: original {float((p_orig >= 0.5).mean()):.3f}, copy {float((p_sq >= 0.5).mean()):.3f}"
    )

    val_names = model_meta(Path(args.model)).get("validation_names", [])
    if val_names:
        labeled = Source(args.labeled)
        x = np.stack([preprocess(labeled.read(n), cfg) for n in val_names])
        y = np.array([label_from_name(n) for n in val_names])
        probs = {"off": predictor.probabilities(x)}  # the single looks, reused for the unsure share
        probs |= {mode: Predictor(args.model, tta=mode).probabilities(x) for mode in TTA_MODES if mode != "off"}
        accuracy = {mode: float(((probs[mode] >= 0.5) == y).mean()) for mode in TTA_MODES}
        unsure = float((np.abs(probs["off"] - 0.5) < UNSURE_MARGIN).mean())
        mirrored = {"off": 0.0, "unsure": unsure, "all": 1.0}
        print(f"validation split ({len(y)} images), flip TTA modes:")
        for mode in TTA_MODES:
            print(
                f"  {mode:>6}: accuracy {accuracy[mode]:.4f} ({100 * (accuracy[mode] - accuracy['off']):+.2f} points), "
                f"mirrors {mirrored[mode]:.1%} of photos"
            )
        print(json.dumps({"agreement": agree, "val_accuracy": accuracy, "mirrored": mirrored}))


if __name__ == "__main__":
    main()
