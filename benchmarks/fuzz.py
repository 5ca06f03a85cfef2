"""Fuzz benchmark: 20,000+ seeded mutations of real images, the hostile files at the limits, and predict on a zip.

Usage: python benchmarks/fuzz.py [--mutations 20000] [--seed 0] [--threads 8] [--skip-predict]

1. The mutations of tests/test_fuzz.py (bit flips, byte edits, cuts, inserts, repeats and edits of the sizes,
   lengths, offsets and counts decoders trust, in JPEG, PNG, GIF, WebP, TIFF and BMP), each through decode()
   (80 px gray and 96 px RGB in turn) and decode_preview(): outcome counts, the slowest inputs (wall and CPU
   seconds), the process's peak RSS above its baseline and the decode budget's peak. Then the same inputs again
   from several threads at once, as prediction decodes, with the budget's peak beside its capacity.
2. The hostile files at the limits (tests/fuzzing.py's hostile_files()), each decided in a fresh process by each
   entry point: wall and CPU seconds and peak RSS above that process's baseline, against the targets (decided in
   at most 2 s with at most 300 MB).
3. `python -m core predict` on a zip of those files: its peak RSS with the decode budget, and with admission
   control switched off (a budget too large to bind), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core import config
from core.config import ROOT
from core.pipeline import DECODE_BUDGET, ImageError, PipelineConfig, decode, decode_preview

# The fuzz corpus is test infrastructure (tests/fuzzing.py): tests/ is not installed with core and ui, so this
# script, like pytest, finds it on the path.
sys.path.insert(0, str(ROOT / "tests"))
from fuzzing import corpus, hostile_files, measure_decode  # noqa: E402

CONFIGS = (PipelineConfig(), PipelineConfig(96, "rgb"))
MB = 10**6


def rss_bytes() -> int:
    """This process's peak resident memory so far (VmHWM: its own, not inherited from a parent)."""
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) * 1024


def reason_class(reason: str) -> str:
    """A reason with its numbers taken out, so that alike refusals count together."""
    return re.sub(r"\d[\d,.]*", "N", reason.split(":")[0] + ":" + ":".join(reason.split(":")[1:2]))[:60]


def one_call(fn, data: bytes, shape) -> tuple[str, float, float]:
    """Run one decode: its outcome ("decoded", "WRONG SHAPE" or "refused: ..."), wall and CPU seconds.

    Any exception other than ImageError propagates and stops the run, as it would fail tests/test_fuzz.py.
    """
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        got = fn(data)
        outcome = "decoded" if shape(got.shape) and got.dtype.name == "uint8" else "WRONG SHAPE"
    except ImageError as err:
        outcome = "refused: " + reason_class(str(err))
    return outcome, time.perf_counter() - wall, time.thread_time() - cpu


def mutations(count: int, seed: int) -> dict:
    calls = {
        "decode": (lambda d, k: decode(d, CONFIGS[k % 2]), lambda k: lambda s: s == CONFIGS[k % 2].input_shape),
        "preview": (lambda d, k: decode_preview(d, max_side=64), lambda k: lambda s: s[2] == 3 and max(s[:2]) <= 64),
    }
    base, outcomes, classes, timings = rss_bytes(), Counter(), Counter(), []
    tracemalloc.start()
    started = time.perf_counter()
    for k, (name, kind, data) in enumerate(corpus(count, seed)):
        for entry, (fn, shape) in calls.items():
            outcome, wall, cpu = one_call(lambda d, fn=fn, k=k: fn(d, k), data, shape(k))
            outcomes[outcome.split(":")[0]] += 1
            classes[outcome] += 1
            timings.append((cpu, wall, name, kind, entry, outcome))
    elapsed = time.perf_counter() - started
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    timings.sort(reverse=True)
    return {
        "inputs": count,
        "calls": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "reasons": classes.most_common(25),
        "seconds": elapsed,
        "peak_rss_above_baseline_mb": (rss_bytes() - base) / MB,
        "python_peak_mb": python_peak / MB,
        "budget_peak_mb": DECODE_BUDGET.peak / MB,
        "slowest": [
            {"cpu_s": c, "wall_s": w, "seed": n, "mutation": m, "call": e, "outcome": o}
            for c, w, n, m, e, o in timings[:10]
        ],
    }


def threaded(count: int, seed: int, threads: int) -> dict:
    inputs = [data for _, _, data in corpus(count, seed)]
    DECODE_BUDGET.peak = 0

    def run(k: int) -> str:
        return one_call(lambda d: decode(d, CONFIGS[k % 2]), inputs[k], lambda s: s == CONFIGS[k % 2].input_shape)[0]

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = Counter(o.split(":")[0] for o in pool.map(run, range(len(inputs))))
    return {
        "threads": threads,
        "inputs": len(inputs),
        "outcomes": dict(outcomes),
        "seconds": time.perf_counter() - started,
        "budget_peak_mb": DECODE_BUDGET.peak / MB,
        "budget_capacity_mb": DECODE_BUDGET.capacity / MB,
    }


def hostile(folder: Path) -> list[dict]:
    rows = []
    for name, data in hostile_files().items():
        path = folder / name
        path.write_bytes(data)
        for call in ("gray", "rgb", "preview", "original"):
            result = measure_decode(str(path), call, str(ROOT))
            rows.append({"file": name, "bytes": len(data), "call": call, **result})
            print(
                f"  {name:<24} {call:<8} {result['wall_s']:6.2f} {result['cpu_s']:6.2f} "
                f"{result['peak_bytes'] / MB:7.0f}  {result['outcome'][:70]}",
                flush=True,
            )
    return rows


# The CLI is its small wrapper's only child: RUSAGE_CHILDREN is then the CLI's own peak, which starts from the
# wrapper's high-water mark, not this (much bigger) process's.
_PEAK_OF_CHILD = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"returncode": proc.returncode, "peak": peak, "lines": len(proc.stdout.splitlines())}))
"""


def predict_peak(folder: Path, budget_mb: int | None) -> dict:
    """Peak RSS of `python -m core predict` on a zip of the hostile files, each of the big ones three times."""
    zpath = folder / "hostile.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in hostile_files().items():
            for copy in range(3):
                zf.writestr(f"{copy}-{name}", data)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if budget_mb is not None:
        env["CVD_DECODE_BUDGET_MB"] = str(budget_mb)
    command = [sys.executable, "-m", "core", "predict", str(zpath), "--model", str(config.DEFAULT_MODEL)]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, *command], cwd=ROOT, env=env, capture_output=True, text=True
    )
    result = json.loads(proc.stdout)
    result["zip_bytes"] = zpath.stat().st_size
    result["seconds"] = time.perf_counter() - started
    return result


def report_mutations(fuzz: dict, parallel: dict) -> None:
    print(f"\n1. {fuzz['inputs']:,} mutations, {fuzz['calls']:,} calls in {fuzz['seconds']:.0f} s: {fuzz['outcomes']}")
    print("   nothing but a right-shaped array or ImageError came back (any other exception would have stopped this)")
    print(f"   peak RSS above baseline {fuzz['peak_rss_above_baseline_mb']:.0f} MB, Python allocations peak ", end="")
    print(f"{fuzz['python_peak_mb']:.0f} MB, decode budget peak {fuzz['budget_peak_mb']:.0f} MB")
    print("   slowest calls (CPU s, wall s):")
    for s in fuzz["slowest"]:
        print(f"     {s['cpu_s']:6.3f} {s['wall_s']:6.3f}  {s['seed']:<20} {s['mutation']:<12} {s['call']:<8} ", end="")
        print(s["outcome"][:60])
    print("   most common reasons:")
    for reason, count in fuzz["reasons"][:15]:
        print(f"     {count:6,}  {reason}")
    print(f"   {parallel['inputs']:,} of them again through decode() in {parallel['threads']} threads: ", end="")
    print(f"{parallel['outcomes']}, budget peak {parallel['budget_peak_mb']:.0f} MB of ", end="")
    print(f"{parallel['budget_capacity_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skip-predict", action="store_true", help="leave out part 3 (it loads TensorFlow twice)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    fuzz = mutations(args.mutations, args.seed)
    parallel = threaded(min(args.mutations, 5_000), args.seed + 1, args.threads)
    report_mutations(fuzz, parallel)

    print("\n2. Hostile files at the limits, each decided in a fresh process")
    print(f"  {'file':<24} {'call':<8} {'wall s':>6} {'CPU s':>6} {'peak MB':>7}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        rows = hostile(Path(tmp))
        worst_cpu = max(r["cpu_s"] for r in rows)
        worst_wall = max(r["wall_s"] for r in rows)
        worst_peak = max(r["peak_bytes"] for r in rows) / MB
        print(f"  slowest decision {worst_cpu:.2f} s CPU ({worst_wall:.2f} s wall, shared machine), ", end="")
        print(f"target <= 2 s: {'met' if worst_cpu <= 2 else 'MISSED'}")
        print(f"  largest peak {worst_peak:.0f} MB above baseline, target <= 300 MB: ", end="")
        print("met" if worst_peak <= 300 else "MISSED")
        predict = {}
        if not args.skip_predict:
            predict = {"budgeted": predict_peak(Path(tmp), None), "unbounded": predict_peak(Path(tmp), 1_000_000)}
            with_budget, without = predict["budgeted"]["peak"] / MB, predict["unbounded"]["peak"] / MB
            print(f"\n3. python -m core predict on a {predict['budgeted']['zip_bytes']:,}-byte zip of ", end="")
            print(f"{predict['budgeted']['lines'] - 1} hostile files")
            print(f"  peak RSS with the decode budget ({DECODE_BUDGET.capacity / 2**20:.0f} MB): {with_budget:,.0f} MB")
            print(f"  peak RSS without admission control: {without:,.0f} MB ({without / with_budget:.2f}x)")
            print(f"  target < 1,500 MB: {'met' if with_budget < 1500 else 'MISSED'}")
    print(json.dumps({"mutations": fuzz, "threaded": parallel, "hostile": rows, "predict": predict}, default=float))


if __name__ == "__main__":
    main()
