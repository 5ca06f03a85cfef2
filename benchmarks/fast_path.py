"""Today's Keras path against the fast path (the ONNX export, core.fastpath), side by side in one run.

Usage: python benchmarks/fast_path.py [--model models/default.keras] [--rounds 3] [--e2e-rounds 1]

The paths alternate round by round, each the same commands with CVD_PREDICT_ENGINE set: tensorflow (today's),
onnxruntime, and, where the CPU runs bf16 natively (AMX or AVX-512 BF16), openvino-bf16 (OpenVINO bf16 with f32
looks near the decisions).
- `python -m core serve`: seconds from the start of the process until /health answers, and its peak RSS
  (VmHWM) after 20 predictions;
- `python -m core predict PHOTO`: the whole process, start to exit, and its peak RSS;
- single-photo latency including decode, in process: Predictor.predict_bytes against FastPredictor.predict_bytes
  on the same test1 photos, alternating photo by photo;
- `python -m core predict train.zip --csv` over its 20,000 photos end to end (start-up included), beside a
  decode-only pass through the same code (predict_many with a predictor whose inference returns at once), to say
  how close to decode-only the fast path gets.
The first use of a model (its export, in a child process) is timed once, on a copy, and reported apart.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process loads TensorFlow too, for today's latency

from core import config
from core.config import ROOT
from core.fastpath import ENGINE_ENV, ensure_export_in_child
from core.hardware import has_amx, has_bf16_inference
from core.predict import BasePredictor

TODAY, FAST = "tensorflow", "onnxruntime"
PATHS = (TODAY, FAST, "openvino-bf16") if has_bf16_inference() else (TODAY, FAST)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def vm_hwm_mb(pid: int) -> float:
    """A process's peak RSS so far (VmHWM, reset at exec), in MB; 0 once it has gone."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0.0
    return int(found.group(1)) / 1024 if found else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_run(model: Path, engine: str, photo: bytes) -> tuple[float, float]:
    """Seconds until /health answers, and peak RSS after 20 predictions, of one fresh `python -m core serve`."""
    import requests

    port = free_port()
    cmd = [sys.executable, "-m", "core", "serve", "--port", str(port), "--model", str(model)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, ENGINE_ENV: engine}, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=5).raise_for_status()
                break
            except requests.ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {proc.returncode}") from None
                time.sleep(0.005)
        ready = time.perf_counter() - started
        for _ in range(20):
            requests.post(f"http://127.0.0.1:{port}/predict", data=photo, timeout=30).raise_for_status()
        return ready, vm_hwm_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def process_run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds from start to exit, and peak RSS in MB (polled VmHWM), of one fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done = [0.0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], vm_hwm_mb(proc.pid))
            time.sleep(0.002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-500:]}")
    return wall, peak[0]


class DecodeOnly(BasePredictor):
    """predict_many's decode, batching and CSV with no inference: the floor for `python -m core predict`."""

    engine = "none"

    def __init__(self, size: int, color_mode: str):
        from core.pipeline import PipelineConfig

        super().__init__()
        self.path, self.tta, self.pipeline = Path("decode-only"), "off", PipelineConfig(size, color_mode)

    def pixel_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return np.full(len(pixels), 0.5, np.float32)


def decode_only(source: str, csv: str, size: int, color_mode: str) -> None:
    """What cmd_predict does, less the model: list, decode, write the CSV."""
    from core.data import iter_inputs
    from core.predict import predictions_frame

    predictions_frame(DecodeOnly(size, color_mode).predict_many(iter_inputs([source]))).to_csv(csv, index=False)


def latencies(model: Path, photos: list[bytes], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per predict_bytes call (decode + inference + the app's TTA), the paths taking turns."""
    from core.fastpath import FastPredictor
    from core.predict import Predictor

    predictors = {TODAY: Predictor(model), **{e: FastPredictor(model, engine=e) for e in PATHS[1:]}}
    found: dict[str, list[float]] = {name: [] for name in predictors}
    for r in range(rounds):
        for i, data in enumerate(photos):
            shift = (i + r) % len(predictors)
            order = list(predictors)[shift:] + list(predictors)[:shift]
            for name in order:
                started = time.perf_counter()
                predictors[name].predict_bytes(data)
                found[name].append((time.perf_counter() - started) * 1000)
    return found


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio(today: list[float], fast: list[float]) -> str:
    return f"{statistics.median(fast) / statistics.median(today):.2f}x"


def print_row(what: str, unit: str, values: dict[str, list[float]], fmt: str = "{:.2f}") -> None:
    cells = [f"{spread(values[e], fmt)} {unit}".strip() for e in PATHS]
    ratios = [ratio(values[TODAY], values[e]) for e in PATHS[1:]]
    print(f"| {what} | {' | '.join(cells)} | {' | '.join(ratios)} |")


def first_use(model: Path, tmp: Path) -> float:
    """Seconds to export a copy of the model that has no export yet (the child process, TensorFlow included)."""
    copy = tmp / "first-use" / model.name
    copy.parent.mkdir()
    shutil.copy(model, copy)
    if model.with_suffix(".json").exists():
        shutil.copy(model.with_suffix(".json"), copy.with_suffix(".json"))
    started = time.perf_counter()
    ensure_export_in_child(copy, note=lambda _: None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(config.DEFAULT_MODEL))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of serve and one-photo predict, per path")
    parser.add_argument("--e2e-rounds", type=int, default=1, help="rounds of predict over train.zip, per path")
    parser.add_argument("--latency-photos", type=int, default=200)
    parser.add_argument("--decode-only", nargs=4, metavar=("SOURCE", "CSV", "SIZE", "COLOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_only:
        source, csv, size, color = args.decode_only
        decode_only(source, csv, int(size), color)
        return
    model = Path(args.model).resolve()
    started = time.time()
    print(f"load average at start: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs", flush=True)
    ensure_export_in_child(model)  # made once here, so every measure below is of a model already exported
    with tempfile.TemporaryDirectory() as tmp:
        run_all(args, model, Path(tmp))
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}; the whole run took {time.time() - started:.0f} s")


def run_all(args: argparse.Namespace, model: Path, tmp: Path) -> None:
    with zipfile.ZipFile(config.KAGGLE_TEST_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[: args.latency_photos]
        photos = [z.read(n) for n in names]
    photo = tmp / "photo.jpg"
    photo.write_bytes(photos[0])
    export_s = first_use(model, tmp)

    serve: dict[str, list] = {e: [] for e in PATHS}
    one: dict[str, list] = {e: [] for e in PATHS}
    for r in range(args.rounds):
        for engine in PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]:
            serve[engine].append(serve_run(model, engine, photos[0]))
            cmd = [sys.executable, "-m", "core", "predict", str(photo), "--model", str(model)]
            one[engine].append(process_run(cmd, {**ENV, ENGINE_ENV: engine}))
            print(f"round {r + 1} {engine}: serve {serve[engine][-1]}, predict one {one[engine][-1]}", flush=True)
    lat = latencies(model, photos, 1)
    print(f"one-photo latency medians: { {k: round(statistics.median(v), 2) for k, v in lat.items()} } ms", flush=True)

    e2e: dict[str, list] = {e: [] for e in (*PATHS, "decode")}
    train, csv = str(config.KAGGLE_TRAIN_ZIP), str(tmp / "out.csv")
    with zipfile.ZipFile(config.KAGGLE_TRAIN_ZIP) as z:
        count = sum(n.endswith(".jpg") for n in z.namelist())
    pipeline = json_pipeline(model)
    for r in range(args.e2e_rounds):
        for engine in (*PATHS, "decode") if r % 2 == 0 else ("decode", *PATHS[::-1]):
            if engine == "decode":
                cmd = [sys.executable, __file__, "--decode-only", train, csv, *pipeline]
                e2e[engine].append(process_run(cmd, ENV)[0])
            else:
                cmd = [sys.executable, "-m", "core", "predict", train, "--csv", csv, "--model", str(model)]
                e2e[engine].append(process_run(cmd, {**ENV, ENGINE_ENV: engine})[0])
            print(f"end-to-end round {r + 1} {engine}: {e2e[engine][-1]:.1f} s", flush=True)
    report(serve, one, lat, e2e, count, export_s)


def json_pipeline(model: Path) -> list[str]:
    from core.export import export_path, verify_export

    shape = verify_export(export_path(model, "onnx"), model)["input"]["shape"]
    return [str(shape[1]), "grayscale" if shape[3] == 1 else "rgb"]


def report(serve: dict, one: dict, lat: dict, e2e: dict, count: int, export_s: float) -> None:
    def column(runs: dict, k: int) -> dict[str, list[float]]:
        return {e: [run[k] for run in runs[e]] for e in PATHS}

    heads = ["today (TensorFlow)", *(f"fast path ({e})" for e in PATHS[1:])]
    print(f"\n| measure | {' | '.join(heads)} | {' | '.join(f'{e} / today' for e in PATHS[1:])} |")
    print("| --- |" + " --: |" * (2 * len(PATHS) - 1))
    print_row("`python -m core serve`: start to /health answering", "s", column(serve, 0))
    print_row("`serve` peak RSS after 20 predictions", "MB", column(serve, 1), "{:.0f}")
    print_row("`python -m core predict PHOTO`: start to exit", "s", column(one, 0))
    print_row("`predict PHOTO` peak RSS", "MB", column(one, 1), "{:.0f}")
    print_row("one photo in process, decode + infer + TTA (median)", "ms", lat)
    print_row("the same, p90", "ms", {e: [float(np.percentile(v, 90))] for e, v in lat.items()})
    rate = {name: [count / s for s in values] for name, values in e2e.items()}
    print_row(f"`python -m core predict train.zip` ({count:,} photos), img/s", "", rate, "{:,.0f}")
    print_row("the same, wall seconds", "s", e2e, "{:.1f}")
    decode = statistics.median(rate["decode"])
    shares = ", ".join(f"{e} {statistics.median(rate[e]) / decode:.0%}" for e in PATHS)
    print(
        f"\nDecode-only pass over the same {count:,} photos (same process shape, no model): "
        f"{spread(rate['decode'], '{:,.0f}')} img/s; each path runs at this share of it: {shares}."
    )
    print(f"First use of a model without an export: {export_s:.1f} s to export it (once per model file).")
    print(f"CPU flags: amx_bf16 {'found' if has_amx() else 'not found'}, bf16 inference native: {has_bf16_inference()}")


if __name__ == "__main__":
    main()
