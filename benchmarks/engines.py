"""Inference engines side by side: today's TensorFlow path against the exports on ONNX Runtime, OpenVINO, LiteRT.

Usage: python benchmarks/engines.py [--model models/default.keras] [--rounds 5] [--e2e-rounds 2] [--process-rounds 3]

On the shipped model, in one run, on test1.zip's 1,001 original-size photos (decoded once, as the app decodes):
- which CPU features it found (amx_bf16, amx_tile, avx512_bf16): OpenVINO bf16 runs only where one is native;
- parity of every engine with today's path: labels and max |delta P(dog)|, one look and with the app's flip TTA;
- batch 1 latency (one photo per call) and batch 128 throughput, engines interleaved round by round;
- end to end in process: decode + infer over all of test1.zip (the app's TTA), beside the decode-only rate;
- separate processes: start-up to the first printed prediction (import + load + predict one photo) and peak
  RSS, for `python -m core predict` (TensorFlow) against the TensorFlow-free example scripts.
Today's path is core.predict.Predictor: the batch-norm-folded net in a tf.function, fed float32 pixels / 255.
Every ratio is against it, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core import config
from core.config import ROOT
from core.data import Source
from core.export import export_model, load_export
from core.hardware import cpu_flags
from core.pipeline import ImageError, decode, to_model_input
from core.predict import Predictor
from core.tta import flip_tta

TODAY = "TF tf.function (today)"
SHIPPED_PATH = "Predictor.predict_many (today, as shipped)"
CPU_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16")


def cpu_features() -> dict[str, bool]:
    """Which of the bf16-relevant features /proc/cpuinfo lists."""
    return {name: name in cpu_flags() for name in CPU_FEATURES}


def make_engines(today: Predictor, exports: dict[str, Path], bf16: bool) -> dict:
    """Each engine as a function from a uint8 NHWC batch to one look's P(dog)."""
    model = today.path
    engines = {
        TODAY: lambda x: today.probabilities(to_model_input(x)),
        "TF SavedModel export": load_export(exports["saved_model"], model).predict,
        "ONNX Runtime": load_export(exports["onnx"], model, engine="onnxruntime").predict,
        "OpenVINO f32": load_export(exports["onnx"], model, engine="openvino").predict,
        "LiteRT": load_export(exports["litert"], model).predict,
    }
    if bf16:
        engines["OpenVINO bf16"] = load_export(exports["onnx"], model, engine="openvino", precision="bf16").predict
    return engines


def batched(fn, pixels: np.ndarray, size: int = 128) -> np.ndarray:
    return np.concatenate([fn(pixels[i : i + size]) for i in range(0, len(pixels), size)])


def parity(engines: dict, pixels: np.ndarray, app: Predictor) -> dict:
    """Per engine: label agreement and max |delta P(dog)| against today's path, one look and with the app's TTA."""
    reference = {"off": batched(engines[TODAY], pixels), "unsure": app.probabilities(to_model_input(pixels))}
    found = {}
    for name, fn in engines.items():
        looks = {"off": batched(fn, pixels), "unsure": flip_tta(lambda x, fn=fn: batched(fn, x), pixels)}
        found[name] = {
            tta: (float(((p >= 0.5) == (reference[tta] >= 0.5)).mean()), float(np.abs(p - reference[tta]).max()))
            for tta, p in looks.items()
        }
    return found


def interleaved(engines: dict, rounds: int, measure) -> dict[str, list[list[float]]]:
    """measure(fn, round) for each engine in each round, the order rotated per round so none always goes first."""
    names = list(engines)
    found: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            found[name].append(measure(engines[name], r))
    return found


def flat(rounds: list[list[float]]) -> list[float]:
    return [value for values in rounds for value in values]


def paired_ratio(found: dict[str, list[list[float]]], name: str, stat=statistics.median, invert: bool = False) -> float:
    """The median over rounds of stat(engine) / stat(today's path) within each round (robust to a noisy machine)."""
    ratios = [stat(mine) / stat(today) for today, mine in zip(found[TODAY], found[name], strict=True)]
    return 1 / statistics.median(ratios) if invert else statistics.median(ratios)


def ratios(found: dict, name: str, lower_is_better: bool) -> str:
    """'median-based / best-based' ratio to today's path: the best of each round is what a quiet machine gives."""
    best = min if lower_is_better else max
    return (
        f"{paired_ratio(found, name, invert=lower_is_better):.2f}x /"
        f" {paired_ratio(found, name, best, invert=lower_is_better):.2f}x"
    )


def latency(pixels: np.ndarray, calls: int):
    def measure(fn, r: int) -> list[float]:
        out = []
        for i in range(calls):
            one = pixels[(r * calls + i) % len(pixels)][None]
            started = time.perf_counter()
            fn(one)
            out.append(time.perf_counter() - started)
        return out

    return measure


def throughput(pixels: np.ndarray, batch: int = 128, calls: int = 3):
    def measure(fn, r: int) -> list[float]:
        out = []
        for i in range(calls):
            start = ((r * calls + i) * batch) % (len(pixels) - batch)
            chunk = pixels[start : start + batch]
            started = time.perf_counter()
            fn(chunk)
            out.append(batch / (time.perf_counter() - started))
        return out

    return measure


def end_to_end(source: Source, probabilities, pool: ThreadPoolExecutor, cfg, batch: int = 128) -> float:
    """Seconds to decode and label every photo of a source, decoding one chunk while the one before is inferred."""

    def prepare(name: str):
        try:
            return decode(source.read(name), cfg)
        except ImageError:
            return None

    started = time.perf_counter()
    names = [item.name for item in source.listing if not item.refusal]
    pending = None
    for chunk in [*(names[i : i + batch] for i in range(0, len(names), batch)), None]:
        submitted = [pool.submit(prepare, n) for n in chunk] if chunk else None
        if pending:
            good = [x for x in (f.result() for f in pending) if x is not None]
            probabilities(np.stack(good))
        pending = submitted
    return time.perf_counter() - started


def e2e_table(engines: dict, app: Predictor, rounds: int) -> dict[str, list[list[float]]]:
    """Images/s, decode + infer over test1.zip with the app's TTA; today's path also through Predictor.predict_many."""
    from core.data import iter_inputs

    source = Source(config.KAGGLE_TEST_ZIP)
    n = sum(1 for item in source.listing if not item.refusal)
    pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2))  # as Predictor's decoder pool

    def shipped(_: int) -> list[float]:
        started = time.perf_counter()
        app.predict_many(iter_inputs([config.KAGGLE_TEST_ZIP]))
        return [n / (time.perf_counter() - started)]

    def timed(probabilities):
        return lambda _: [n / end_to_end(source, probabilities, pool, app.pipeline)]

    contenders = {name: timed(lambda x, fn=fn: flip_tta(fn, x)) for name, fn in engines.items()}
    contenders |= {"decode only": timed(lambda x: None), SHIPPED_PATH: shipped}
    found = interleaved(contenders, rounds, lambda measure, r: measure(r))
    pool.shutdown()
    return found


def peak_rss_mb(pid: int, done: threading.Event) -> list[float]:
    """Poll a process's VmHWM (its memory's high-water mark, new at exec) while it runs; the last reading is its peak.

    getrusage's ru_maxrss cannot tell: a child forked from this TensorFlow-sized process inherits its peak.
    """
    peak = [0.0]

    def poll() -> None:
        while not done.is_set():
            try:
                found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            except OSError:
                return
            if found:
                peak[0] = max(peak[0], int(found.group(1)) / 1024)
            time.sleep(0.002)

    threading.Thread(target=poll, daemon=True).start()
    return peak


def process_run(cmd: list[str]) -> tuple[float, float]:
    """Seconds from start to the first printed prediction row, and peak RSS in MB, of one fresh process."""
    # CVD_PREDICT_ENGINE=tensorflow: `python -m core predict` on today's Keras path, not the ONNX fast path.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CVD_PREDICT_ENGINE": "tensorflow"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    done = threading.Event()
    peak = peak_rss_mb(proc.pid, done)
    proc.stdout.readline()  # the header
    proc.stdout.readline()  # the first row
    first = time.perf_counter() - started
    proc.stdout.read()
    code = proc.wait()
    done.set()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return first, peak[0]


def processes(model: Path, exports: dict[str, Path], photo: Path, rounds: int) -> dict[str, list[tuple]]:
    """Start-up and peak RSS of a TensorFlow prediction process against the TensorFlow-free ones, interleaved."""
    py, ex = sys.executable, ROOT / "examples"
    commands = {
        "python -m core predict (TensorFlow)": [py, "-m", "core", "predict", str(photo), "--model", str(model)],
        "examples/predict_onnx.py (ONNX Runtime)": [py, str(ex / "predict_onnx.py"), str(photo), "--model"]
        + [str(exports["onnx"])],
        "examples/predict_onnx.py --engine openvino": [py, str(ex / "predict_onnx.py"), str(photo), "--engine"]
        + ["openvino", "--model", str(exports["onnx"])],
        "examples/predict_litert.py (LiteRT)": [py, str(ex / "predict_litert.py"), str(photo), "--model"]
        + [str(exports["litert"])],
    }
    found: dict[str, list[tuple]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            found[name].append(process_run(cmd))
    return found


def print_engines(par: dict, lat: dict, thr: dict, e2e: dict) -> None:
    print(
        "\nRatios against today's path, paired within each round: from the medians / from the best of each round."
        "\n\n| engine | batch 1, median (best) | speed-up | batch 128 img/s, median (best) | vs today |"
        " test1 e2e img/s, median (best) | vs today | labels / max dP, one look | labels / max dP, app TTA |"
    )
    print("| --- | --: | --: | --: | --: | --: | --: | --: | --: |")
    for name in lat:
        times, ips, e = flat(lat[name]), flat(thr[name]), flat(e2e[name])
        (a_off, d_off), (a_tta, d_tta) = par[name]["off"], par[name]["unsure"]
        print(
            f"| {name} | {statistics.median(times) * 1e3:.2f} ms ({min(times) * 1e3:.2f}) | {ratios(lat, name, True)} |"
            f" {statistics.median(ips):,.0f} ({max(ips):,.0f}) | {ratios(thr, name, False)} |"
            f" {statistics.median(e):,.0f} ({max(e):,.0f}) | {ratios(e2e, name, False)} |"
            f" {a_off:.2%} / {d_off:.1e} | {a_tta:.2%} / {d_tta:.1e} |"
        )
    for name in ("decode only", SHIPPED_PATH):
        e = flat(e2e[name])
        print(f"| {name} | | | | | {statistics.median(e):,.0f} ({max(e):,.0f}) | {ratios(e2e, name, False)} | | |")


def print_processes(found: dict) -> None:
    names = list(found)
    base_t = statistics.median(t for t, _ in found[names[0]])
    base_m = statistics.median(m for _, m in found[names[0]])
    print("\n| process (one photo) | start to first row, median (min-max) | vs TF | peak RSS MB | vs TF |")
    print("| --- | --: | --: | --: | --: |")
    for name, runs in found.items():
        t = [r[0] for r in runs]
        mid, m = statistics.median(t), statistics.median(r[1] for r in runs)
        spread = f"{min(t):.2f}-{max(t):.2f}"
        print(f"| {name} | {mid:.2f} s ({spread}) | {mid / base_t:.2f}x | {m:,.0f} | {m / base_m:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(config.DEFAULT_MODEL))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the latency and batch timings")
    parser.add_argument("--latency-calls", type=int, default=40, help="single-photo calls per engine per round")
    parser.add_argument("--e2e-rounds", type=int, default=2)
    parser.add_argument("--process-rounds", type=int, default=3)
    args = parser.parse_args()
    model = Path(args.model)

    features = cpu_features()
    bf16 = features["amx_bf16"] or features["avx512_bf16"]
    print(f"CPU: {os.cpu_count()} cores; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()))
    print("OpenVINO bf16: " + ("measured (native bf16 found)" if bf16 else "skipped: no native bf16 on this CPU"))
    with tempfile.TemporaryDirectory(prefix="cvd-engines-") as folder:
        run_all(args, model, Path(folder), bf16)


def run_all(args: argparse.Namespace, model: Path, tmp: Path, bf16: bool) -> None:
    """Export into tmp, then every measurement, printing the tables."""
    load = os.getloadavg()[0]
    exports = {fmt: export_model(model, fmt, tmp) for fmt in ("onnx", "saved_model", "litert")}
    today, app = Predictor(model, tta="off"), Predictor(model)  # one look, and the app's default flip TTA
    engines = make_engines(today, exports, bf16)
    source = Source(config.KAGGLE_TEST_ZIP)
    pixels = np.stack([decode(source.read(item.name), app.pipeline) for item in source.listing if not item.refusal])
    print(f"{len(pixels)} photos of {config.KAGGLE_TEST_ZIP.name}, model {model.name}; load average {load:.1f}")

    par = parity(engines, pixels, app)
    for fn in engines.values():  # warm every engine before any timing
        fn(pixels[:128])
    lat = interleaved(engines, args.rounds, latency(pixels, args.latency_calls))
    print("timed batch 1", file=sys.stderr, flush=True)
    thr = interleaved(engines, args.rounds, throughput(pixels))
    print("timed batch 128; end to end next", file=sys.stderr, flush=True)
    e2e = e2e_table(engines, app, args.e2e_rounds)
    print_engines(par, lat, thr, e2e)
    photo = tmp / "photo.jpg"
    photo.write_bytes(source.read(source.listing[0].name))
    print_processes(processes(model, exports, photo, args.process_rounds))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
