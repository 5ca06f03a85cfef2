"""How small a photo can be and still be labelled: the evidence for config.MIN_IMAGE_SIDE.

Usage: python benchmarks/min_size.py [--model PATH] [--photos 1000]

Takes the model's own held-out validation photos from train.zip (as models/default.json lists them), shrinks
each to s x s pixels (INTER_AREA) for s from 200 down to 1, stores it as PNG, and predicts it through the
pipeline (which scales it back up to the model's input) with the minimum size switched off. Prints accuracy and
the share of confident answers (P(dog) under 0.1 or over 0.9) at each size.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.data import label_from_name
from core.pipeline import preprocess
from core.predict import Predictor
from core.runs import model_meta

SIDES = (200, 64, 32, 24, 16, 12, 8, 4, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(config.DEFAULT_MODEL))
    parser.add_argument("--photos", type=int, default=1000)
    args = parser.parse_args()
    config.MIN_IMAGE_SIDE = 1  # measure below the minimum too
    predictor = Predictor(args.model, tta="off")
    names = model_meta(Path(args.model))["validation_names"][: args.photos]
    with zipfile.ZipFile(config.KAGGLE_TRAIN_ZIP) as zf:
        photos = [cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_COLOR) for n in names]
    truth = np.array([label_from_name(n) for n in names])
    print(f"{len(photos)} validation photos of {Path(args.model).name} from train.zip (200x200), shrunk to s x s")
    for side in SIDES:
        shrunk = (cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA) for p in photos)
        x = np.stack([preprocess(cv2.imencode(".png", s)[1].tobytes(), predictor.pipeline) for s in shrunk])
        prob = predictor.probabilities(x)
        accuracy = float(((prob >= 0.5) == truth).mean())
        confident = float((np.abs(prob - 0.5) > 0.4).mean())
        print(f"  {side:>4} px: accuracy {accuracy:.3f}, confident answers {confident:.3f}")


if __name__ == "__main__":
    main()
