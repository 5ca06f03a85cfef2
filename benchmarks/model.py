"""Seed preset vs best preset, side by side: accuracy on one shared validation split, training speed,
time to reach the seed's best validation accuracy, and prediction throughput.

Usage:
  python benchmarks/model.py                      # trains the seed preset, compares it with the shipped model
  python benchmarks/model.py --seed-run RUN_ID    # reuse a finished seed run from models/runs/
  python benchmarks/model.py --best-run RUN_ID    # compare against a run instead of models/default.keras

Accuracy and throughput are as the app predicts (flip TTA for unsure photos), with single-look accuracy beside.
Both presets split train.zip with the same seed (42), so the best preset's 10% validation split is a subset
of the seed preset's 20% split: neither model trained on the shared images they are scored on here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from core import config
from core.config import ROOT
from core.data import iter_inputs
from core.predict import Predictor, evaluate
from core.runs import RunStore
from core.settings import TrainConfig
from core.train import train


def _time_to_reach(history: pd.DataFrame, target: float) -> float | None:
    hit = history[history.val_accuracy >= target]
    return float(hit.elapsed_s.iloc[0]) if len(hit) else None


def _throughput(predictor: Predictor, source: Path, repeats: int = 2) -> float:
    items = list(iter_inputs([source]))
    predictor.predict_many(items[:256])  # warm the decoder pool and the batch shapes
    started = time.perf_counter()
    for _ in range(repeats):
        predictor.predict_many(items)
    return repeats * len(items) / (time.perf_counter() - started)


def _cli_throughput(model: Path, source: Path) -> tuple[float, float]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "core", "predict", str(source), "--model", str(model), "--csv", "/dev/null"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    n = sum(1 for _ in iter_inputs([source]))
    return n / wall, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(config.KAGGLE_TRAIN_ZIP))
    parser.add_argument("--predict-source", default=str(config.KAGGLE_TEST_ZIP))
    parser.add_argument("--seed-run", help="id of a finished seed run to reuse instead of training one")
    parser.add_argument("--best-run", help="id of a best run to use instead of models/default.keras")
    args = parser.parse_args()
    store = RunStore()

    if args.seed_run:
        seed_run = store.get(args.seed_run)
    else:
        print("training the seed preset (10 epochs, the tutorial's settings)...", flush=True)
        seed_run = train(args.source, TrainConfig.for_preset("seed")).run
    if args.best_run:
        best_run = store.get(args.best_run)
        best_model, best_meta, best_history = best_run.model_path, best_run.meta, best_run.history
    else:
        best_model = config.DEFAULT_MODEL
        best_meta = json.loads(config.DEFAULT_MODEL_META.read_text())
        best_history = pd.read_csv(config.MODELS_DIR / "default-history.csv")

    shared_val = sorted(set(seed_run.meta["validation_names"]) & set(best_meta["validation_names"]))
    seed_best = float(seed_run.history.val_accuracy.max())
    rows = {}
    for name, model, meta, history in (
        ("seed", seed_run.model_path, seed_run.meta, seed_run.history),
        ("best", best_model, best_meta, best_history),
    ):
        predictor = Predictor(model)  # as the app predicts: a mirrored second look at unsure photos
        ev = evaluate(predictor, args.source, names=shared_val)
        single = evaluate(Predictor(model, tta="off"), args.source, names=shared_val)
        cli_rate, cli_wall = _cli_throughput(model, Path(args.predict_source))
        rows[name] = {
            "val_accuracy (shared split)": ev.accuracy,
            "val_accuracy, single look (--tta off)": single.accuracy,
            "val images": ev.n,
            "train images/s": meta["metrics"]["train_images_per_s"],
            "train wall time (s)": meta["wall_time_s"],
            "s to reach seed's best val acc": _time_to_reach(history, seed_best),
            "predict images/s (in process)": _throughput(predictor, Path(args.predict_source)),
            "CLI predict test1.zip wall (s)": cli_wall,
            "CLI predict images/s incl. start-up": cli_rate,
        }
    table = pd.DataFrame(rows)
    table["best / seed"] = table["best"] / table["seed"]
    pd.set_option("display.float_format", lambda v: f"{v:,.3f}")
    print(f"\nseed run {seed_run.id} (best val acc {seed_best:.4f}) vs best model {best_model}")
    print(f"shared validation split: {len(shared_val)} images of {Path(args.source).name}\n")
    print(table.to_string())
    gain = rows["best"]["val_accuracy (shared split)"] - rows["seed"]["val_accuracy (shared split)"]
    print(f"\naccuracy gain: {100 * gain:+.1f} points")


if __name__ == "__main__":
    main()
