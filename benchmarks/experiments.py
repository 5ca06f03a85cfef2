"""Architecture experiments for the 'best' preset: short, equal-budget runs of candidate presets.

Usage: python benchmarks/experiments.py [--limit 6000] [--epochs 4] CANDIDATE...
Each candidate is a preset variant defined below; results append to docs/experiments.csv.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from core import config
from core.pipeline import PipelineConfig
from core.presets import PRESETS
from core.train import TrainConfig, train

BASE = PRESETS["best"]
CANDIDATES = {
    "best": BASE,
    "vgg96": dataclasses.replace(BASE, widths=(16, 32, 64, 128), stem=0, train_scales=()),
    "stem96": dataclasses.replace(BASE, widths=(32, 64, 128, 256), stem=32),
    "stem16": dataclasses.replace(BASE, widths=(32, 64, 128, 256), stem=16, train_scales=()),
    "stem24-3": dataclasses.replace(BASE, widths=(32, 64, 128), stem=24, train_scales=()),
    "stem16-112": dataclasses.replace(BASE, pipeline=PipelineConfig(112, "rgb"), train_scales=()),
    "stem128": dataclasses.replace(BASE, pipeline=PipelineConfig(128, "rgb"), widths=(32, 64, 128, 256), stem=32),
    "vgg80gray": dataclasses.replace(BASE, pipeline=PipelineConfig(80, "grayscale")),
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
        preset = dataclasses.replace(CANDIDATES[name], name=f"exp-{name}")
        PRESETS[preset.name] = preset
        cfg = TrainConfig.for_preset(preset.name, epochs=args.epochs, limit=args.limit, validation_split=0.2)
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
