"""The seed preset, the previous shipped model and the shipped (or a candidate) model, side by side: accuracy
overall and per class, calibration error (ECE) on the same validation photos, training speed, the time to reach
the seed's best and 96% validation accuracy, prediction throughput, and single-photo latency on the app's serving
path (the ONNX export on ONNX Runtime, decode included, the models taking turns photo by photo).

Usage:
  python benchmarks/model.py                      # trains the seed preset, compares it with the shipped model
  python benchmarks/model.py --seed-run RUN_ID    # reuse a finished seed run from models/runs/
  python benchmarks/model.py --best-run RUN_ID    # a run in place of models/default.keras (a candidate)
  python benchmarks/model.py --previous REV       # the "previous" model: models/default.keras at git REV
                                                  # (default: the commit before the last that changed it)

Accuracy, ECE and throughput are as the app predicts (flip TTA for unsure photos), with single-look accuracy
beside. Every preset splits train.zip with the same seed (42), so the best preset's 10% validation split is a
subset of the seed preset's 20% split; the photos scored are those that every model held out (a model calibrated
after training holds out only its report half). The times to reach an accuracy read each run's own history,
which validates with one look.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

from core import config
from core.config import ROOT
from core.data import iter_inputs
from core.fastpath import FastPredictor, ensure_export_in_child
from core.predict import Predictor, evaluate
from core.runs import RunStore, model_history, model_meta
from core.settings import TrainConfig
from core.train import train


def _time_to_reach(history: pd.DataFrame, target: float) -> float | None:
    hit = history[history.val_accuracy >= target]
    return float(hit.elapsed_s.iloc[0]) if len(hit) else None  # None (NaN in the table): never reached


def _throughput(predictor: Predictor, source: Path, repeats: int = 2) -> float:
    items = list(iter_inputs([source]))
    predictor.predict_many(items[:256])  # warm the decoder pool and the batch shapes
    started = time.perf_counter()
    for _ in range(repeats):
        predictor.predict_many(items)
    return repeats * len(items) / (time.perf_counter() - started)


def _latencies(models: list[Path], source: Path, photos: int = 40, rounds: int = 3) -> list[float]:
    """Median ms per single-photo predict_bytes on the app's serving path, the models taking turns per photo."""
    with zipfile.ZipFile(source) as z:
        data = [z.read(n) for n in sorted(n for n in z.namelist() if n.endswith(".jpg"))[:photos]]
    predictors = [FastPredictor(m) for m in models]
    found: list[list[float]] = [[] for _ in models]
    for r in range(rounds):
        for i, photo in enumerate(data):
            for k in [(i + r + j) % len(models) for j in range(len(models))]:
                started = time.perf_counter()
                predictors[k].predict_bytes(photo)
                found[k].append((time.perf_counter() - started) * 1000)
    return [statistics.median(ms) for ms in found]


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


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True)


def _model(name: str, path: Path) -> tuple[str, Path, dict, pd.DataFrame]:
    """(name, model file, metadata, history), read as the app reads them beside any model file."""
    return name, path, model_meta(path), model_history(path)


def _previous_model(rev: str | None, into: Path) -> tuple[str, Path, dict, pd.DataFrame]:
    """models/default.keras with its metadata and history as they were at git rev (None: the commit before the
    last one that changed the model), written into a scratch folder."""
    if rev is None:
        revs = _git("log", "-n", "2", "--format=%h", "--", "models/default.keras").stdout.decode().split()
        rev = revs[-1]
    for name in ("default.keras", "default.json", "default-history.csv"):
        (into / name).write_bytes(_git("show", f"{rev}:models/{name}").stdout)
    return _model(f"previous ({rev})", into / "default.keras")


def _models(args, store: RunStore, scratch: Path) -> list[tuple[str, Path, dict, pd.DataFrame]]:
    """(name, model file, metadata, history) of the seed run, the previous shipped model and the best model."""
    if args.seed_run:
        seed_run = store.get(args.seed_run)
    else:
        print("training the seed preset (10 epochs, the tutorial's settings)...", flush=True)
        seed_run = train(args.source, TrainConfig.for_preset("seed")).run
    best = store.get(args.best_run).model_path if args.best_run else config.DEFAULT_MODEL
    return [_model("seed", seed_run.model_path), _previous_model(args.previous, scratch), _model("best", best)]


def _row(model: Path, meta: dict, history: pd.DataFrame, shared: list[str], seed_best: float, args) -> dict:
    predictor = Predictor(model)  # as the app predicts: a mirrored second look at unsure photos
    ev = evaluate(predictor, args.source, names=shared)
    single = evaluate(Predictor(model, tta="off"), args.source, names=shared)
    classes = ev.class_scores()
    cli_rate, cli_wall = _cli_throughput(model, Path(args.predict_source))
    return {
        "val accuracy (shared photos)": ev.accuracy,
        "val accuracy, cats": classes["cat"].value,
        "val accuracy, dogs": classes["dog"].value,
        "val accuracy, single look (--tta off)": single.accuracy,
        "ECE (5 bins)": ev.calibration_error(),
        "val images": ev.n,
        "epochs": len(history),
        "train images/s": meta["metrics"]["train_images_per_s"],
        "train wall time (s)": meta["wall_time_s"],
        "s to reach seed's best val acc": _time_to_reach(history, seed_best),
        "s to reach 96% val acc": _time_to_reach(history, 0.96),
        "predict images/s (in process)": _throughput(predictor, Path(args.predict_source)),
        "CLI predict test1.zip wall (s)": cli_wall,
        "CLI predict images/s incl. start-up": cli_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(config.KAGGLE_TRAIN_ZIP))
    parser.add_argument("--predict-source", default=str(config.KAGGLE_TEST_ZIP))
    parser.add_argument("--seed-run", help="id of a finished seed run to reuse instead of training one")
    parser.add_argument("--best-run", help="id of a best run to use instead of models/default.keras")
    parser.add_argument("--previous", help="git revision of the previous shipped model (default: the one before)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        models = _models(args, RunStore(), Path(scratch))
        held = [set(meta["validation_names"]) for _, _, meta, _ in models]
        shared = sorted(set.intersection(*held))
        seed_best = float(models[0][3].val_accuracy.max())
        for _, model, _, _ in models:  # each model's ONNX export, made once as on first use: timings are steady-state
            ensure_export_in_child(model)
        rows = {name: _row(model, meta, history, shared, seed_best, args) for name, model, meta, history in models}
        latency = _latencies([model for _, model, _, _ in models], Path(args.predict_source))
    for (name, *_), ms in zip(models, latency, strict=True):
        rows[name]["single-photo latency incl. decode, ONNX Runtime (ms)"] = ms
    table = pd.DataFrame(rows)
    previous = models[1][0]
    table["best / seed"] = table["best"] / table["seed"]
    table["best / previous"] = table["best"] / table[previous]
    pd.set_option("display.float_format", lambda v: f"{v:,.4f}")
    print(
        f"\nseed run {models[0][2]['id']} (best val acc {seed_best:.4f}), {previous} {models[1][2]['id']}, "
        f"best {models[2][1]} ({models[2][2]['id']})"
    )
    print(f"shared validation photos: {len(shared)} of {Path(args.source).name}, held out by all three\n")
    print(table.to_string())
    for name in ("seed", previous):
        gain = rows["best"]["val accuracy (shared photos)"] - rows[name]["val accuracy (shared photos)"]
        print(f"accuracy gain over {name}: {100 * gain:+.2f} points")


if __name__ == "__main__":
    main()
