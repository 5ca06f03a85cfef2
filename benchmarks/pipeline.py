"""Pipeline benchmark: the seed's serial cv2 loop against our parallel, cached pipeline, and predict latency.

Usage: python benchmarks/pipeline.py [--model PATH] [--train-limit N] [--latency-images 200] [--rounds 2]

On the same files, in one run, it measures in images per second:
- the seed's loop: one file at a time, cv2.imdecode(bytes, IMREAD_GRAYSCALE) (the seed's cv2.imread, reading from
  the zip), then cv2.resize to 80x80;
- our pipeline: core.data.load_dataset, a first (cold) load and a cached reload;
on test1.zip's original-size photos (a temp copy, named cat/dog in turn, since the loader takes labeled photos
only) and on train.zip. Then single-image predict latency with decode included:
seed style (model.predict on one image) against Predictor.predict_bytes. It prints the table, the ratios and the
targets: pipeline >= 2x the seed loop on original-size photos, cached reload >= 20x, Predictor <= 5 ms median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.data import load_dataset
from core.pipeline import PipelineConfig

SEED = PipelineConfig(80, "grayscale")


def seed_loop(path: Path, names: list[str]) -> np.ndarray:
    """The seed tutorial's loader: serial, grayscale, cv2.resize's default interpolation."""
    images = []
    with zipfile.ZipFile(path) as zf:
        for name in names:
            img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_GRAYSCALE)
            images.append(cv2.resize(img, (SEED.size, SEED.size)))
    return np.array(images).reshape(-1, SEED.size, SEED.size, 1)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def warm_page_cache(path: Path) -> None:
    # Read the zip once so that neither contender pays for the disk and the comparison is decode against decode.
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def labeled_copy(path: Path, folder: Path) -> Path:
    """The photos of an unlabeled zip (Kaggle's test1.zip) under cat/dog names in turn, stored as they were."""
    copy = folder / f"labeled-{path.name}"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as dst:
        photos = sorted(n for n in src.namelist() if n.endswith(".jpg"))
        for i, name in enumerate(photos):
            dst.writestr(f"{('cat', 'dog')[i % 2]}.{Path(name).name}", src.read(name))
    return copy


def loading(label: str, path: Path, limit: int | None, rounds: int) -> dict:
    """Seed loop, first load and cached reload on the same files of one zip; medians over interleaved rounds."""
    warm_page_cache(path)
    seed_s, first_s, reload_s = [], [], []

    def ours():
        with tempfile.TemporaryDirectory() as cache:
            kwargs = {"limit": limit, "cache_dir": Path(cache)}
            took, first = timed(load_dataset, path, SEED, **kwargs)
            first_s.append(took)
            for _ in range(3):
                took, again = timed(load_dataset, path, SEED, **kwargs)
                assert again.from_cache
                reload_s.append(took)
        return first

    def seeds(names: list[str]):
        took, seed_x = timed(seed_loop, path, names)
        seed_s.append(took)
        return seed_x

    first = ours()  # also gives the file list the seed loop walks
    seed_x = seeds(first.names.tolist())
    for _ in range(rounds - 1):
        # The reverse order too, so that a change in the machine's load mid-run does not favour one side.
        seed_x = seeds(first.names.tolist())
        first = ours()
    names = first.names.tolist()
    assert seed_x.shape == first.x.shape
    n = len(names)
    seed, first_load, reload = (statistics.median(v) for v in (seed_s, first_s, reload_s))
    return {
        "dataset": label,
        "images": n,
        "seed_loop_img_s": n / seed,
        "first_load_img_s": n / first_load,
        "cached_reload_img_s": n / reload,
        "first_vs_seed": seed / first_load,
        "reload_vs_first": first_load / reload,
        "reload_vs_seed": seed / reload,
        "seed_s": seed_s,
        "first_s": first_s,
        "reload_s": reload_s,
    }


def resolve_model(arg: str | None) -> Path:
    """--model, else the default model, as the CLI picks it (core.registry.default_model)."""
    from core.registry import default_model

    path = Path(arg) if arg else getattr(default_model(), "path", None)
    if path is None:
        sys.exit("no model: pass --model or train one with `python -m core train SOURCE`")
    return path


def latency(model_path: Path, photos: list[bytes]) -> dict:
    """Median per-image milliseconds, decode included: seed-style model.predict against Predictor."""
    from core.model import load_model, model_pipeline
    from core.predict import Predictor

    model = load_model(model_path)
    cfg = model_pipeline(model)

    def seed_style(data: bytes) -> float:
        flag = cv2.IMREAD_GRAYSCALE if cfg.color_mode == "grayscale" else cv2.IMREAD_COLOR
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if cfg.color_mode == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        x = cv2.resize(img, (cfg.size, cfg.size)).reshape(1, *cfg.input_shape) / 255.0
        return float(model.predict(x, verbose=0)[0, 0])

    predictor = Predictor(model_path)
    for data in photos[:3]:  # both sides warm
        seed_style(data)
        predictor.predict_bytes(data)
    seed_ms, ours_ms = [], []
    for data in photos:
        started = time.perf_counter()
        seed_style(data)
        seed_ms.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        predictor.predict_bytes(data)
        ours_ms.append((time.perf_counter() - started) * 1e3)
    return {
        "model": str(model_path),
        "pipeline": f"{cfg.size}x{cfg.size} {cfg.color_mode}",
        "images": len(photos),
        "seed_predict_median_ms": statistics.median(seed_ms),
        "predictor_median_ms": statistics.median(ours_ms),
        "predictor_p90_ms": float(np.percentile(ours_ms, 90)),
        "speedup": statistics.median(seed_ms) / statistics.median(ours_ms),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model for the latency test (default: shipped model, else newest run)")
    parser.add_argument("--train-zip", type=Path, default=config.KAGGLE_TRAIN_ZIP)
    parser.add_argument("--test-zip", type=Path, default=config.KAGGLE_TEST_ZIP)
    parser.add_argument("--train-limit", type=int, help="use a balanced slice of train.zip (default: all of it)")
    parser.add_argument("--latency-images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of each loading measurement")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        original = labeled_copy(args.test_zip, Path(folder))
        rows = [
            loading("test1.zip (original size)", original, None, args.rounds),
            loading(f"train.zip ({args.train_limit or 'all'}, 200x200)", args.train_zip, args.train_limit, args.rounds),
        ]
    header = f"{'dataset':<30} {'images':>7} {'seed loop':>10} {'first load':>11} {'reload':>10} "
    header += f"{'first/seed':>11} {'reload/first':>13}"
    print("\nDecode to 80x80 grayscale, images per second")
    print(header)
    for r in rows:
        print(
            f"{r['dataset']:<30} {r['images']:>7} {r['seed_loop_img_s']:>10.0f} {r['first_load_img_s']:>11.0f} "
            f"{r['cached_reload_img_s']:>10.0f} {r['first_vs_seed']:>10.2f}x {r['reload_vs_first']:>12.1f}x"
        )

    with zipfile.ZipFile(args.test_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[: args.latency_images]
        photos = [zf.read(n) for n in names]
    lat = latency(resolve_model(args.model), photos)
    print(f"\nSingle-image predict latency, decode included, median of {lat['images']} test1 photos")
    print(f"model {lat['model']} ({lat['pipeline']})")
    print(f"  seed style (model.predict)   {lat['seed_predict_median_ms']:8.2f} ms")
    print(f"  Predictor.predict_bytes      {lat['predictor_median_ms']:8.2f} ms", end="")
    print(f"  (p90 {lat['predictor_p90_ms']:.2f} ms)")
    print(f"  speedup                      {lat['speedup']:8.1f}x")

    original = rows[0]
    print("\nTargets")
    print(f"  pipeline >= 2x seed loop on original-size photos: {original['first_vs_seed']:.2f}x, ", end="")
    print(verdict(original["first_vs_seed"] >= 2))
    for r in rows:
        print(f"  cached reload >= 20x first load, {r['dataset']}: {r['reload_vs_first']:.1f}x, ", end="")
        print(verdict(r["reload_vs_first"] >= 20))
    median_ms = lat["predictor_median_ms"]
    print(f"  Predictor <= 5 ms median: {median_ms:.2f} ms, {verdict(median_ms <= 5)}")
    print(json.dumps({"loading": rows, "latency": lat}, default=float))


if __name__ == "__main__":
    main()
