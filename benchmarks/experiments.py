"""Architecture experiments for the 'best' preset: short, equal-budget runs of candidate presets.

Usage: python benchmarks/experiments.py [--limit 6000] [--epochs 4] CANDIDATE...
Each candidate is a preset variant defined below; results append to docs/experiments.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from core import config
from core.settings import TrainConfig
from core.train import train

# Each candidate is the best preset's settings tree with a few of them changed; PRESETS itself is never touched.
BASE = TrainConfig.for_preset("best")
CANDIDATES = {
    "best": {},
    "vgg96": {"net.widths": (16, 32, 64, 128), "net.stem": 0, "train_scales": ()},
    "stem96": {"net.widths": (32, 64, 128, 256), "net.stem": 32},
    "stem16": {"net.widths": (32, 64, 128, 256), "net.stem": 16, "train_scales": ()},
    "stem24-3": {"net.widths": (32, 64, 128), "net.stem": 24, "train_scales": ()},
    "stem16-112": {"image_size": 112, "train_scales": ()},
    "stem128": {"image_size": 128, "net.widths": (32, 64, 128, 256), "net.stem": 32},
    "vgg80gray": {"image_size": 80, "color_mode": "grayscale"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("candidates", nargs="+", choices=sorted(CANDIDATES))
    parser.add_argument("--source", default=str(config.KAGGLE_TRAIN_ZIP))
    parser.add_argument("--limit", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for name in args.candidates:
        # Named exp-<candidate> (its run folder and model too), with the best preset's network and optimiser.
        changes = {**CANDIDATES[name], "preset": f"exp-{name}", "epochs": args.epochs, "limit": args.limit}
        cfg = BASE.changed({**changes, "validation_split": 0.2})
        started = time.time()
        result = train(args.source, cfg, runs_dir=config.RUNS_DIR / "experiments")
        row = {
            "candidate": name,
            "limit": args.limit,
            "epochs": args.epochs,
            "best_val_accuracy": result.metrics["best_val_accuracy"],
            "train_images_per_s": round(result.metrics["train_images_per_s"], 1),
            "wall_s": round(time.time() - started, 1),
        }
        print(row, flush=True)
        rows.append(row)
    out = Path("docs/experiments.csv")
    frame = pd.DataFrame(rows)
    frame.to_csv(out, mode="a", header=not out.exists(), index=False)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
