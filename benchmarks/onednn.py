"""TensorFlow with its oneDNN kernels against its Eigen fallback, side by side: the same short training, in turn.

Usage: python benchmarks/onednn.py [--rounds 3] [--limit 1500] [--epochs 2] [--dataset PATH]

TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI and newer; `core` turns it on everywhere
(core/__init__.py). Each round runs `python -m core train DATASET --preset best` on the first --limit photos, at
96 px, for --epochs epochs, once with TF_ENABLE_ONEDNN_OPTS=1 and once with 0, in alternating order, into a
throwaway runs folder. It prints each process's wall, user and system seconds, and the medians' ratios on/off.
The photos' decode is cached after the first process, so later rounds time training, validation and saving.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "data" / "dogs-vs-cats" / "train.zip"


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return ", ".join(f for f in wanted if f in flags) or "none of AVX2, AVX-512, AMX"


def timed(command: list[str], env: dict) -> dict:
    """Wall, user and system seconds of one child process, from the kernel's accounting of it."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dataset", default=str(DATASET))
    args = parser.parse_args()
    train = [sys.executable, "-m", "core", "train", args.dataset, "--preset", "best", "--limit", str(args.limit)]
    train += ["--epochs", str(args.epochs), "--time-budget", "0", "--train-scales", "1"]
    print(f"CPU: {os.cpu_count()} cores; flags: {cpu_flags()}")
    results: dict[str, list[dict]] = {"1": [], "0": []}
    with tempfile.TemporaryDirectory() as runs:
        env = {**os.environ, "CVD_RUNS_DIR": runs, "TF_CPP_MIN_LOG_LEVEL": "2"}
        timed(train, env | {"TF_ENABLE_ONEDNN_OPTS": "1"})  # warm-up: decodes the photos into the cache
        for r in range(args.rounds):
            for setting in ("1", "0") if r % 2 == 0 else ("0", "1"):
                results[setting].append(timed(train, env | {"TF_ENABLE_ONEDNN_OPTS": setting}))
                print(f"round {r + 1}, oneDNN {'on ' if setting == '1' else 'off'}: " + fmt(results[setting][-1]))
    on, off = ({k: statistics.median(x[k] for x in results[s]) for k in ("wall", "user", "sys")} for s in "10")
    print(f"\nmedians of {args.rounds}: {args.limit:,} photos, {args.epochs} epochs at 96 px, whole process")
    print(f"{'':12}{'wall s':>10}{'user s':>10}{'sys s':>10}{'cpu s':>10}")
    for name, m in (("oneDNN on", on), ("oneDNN off", off)):
        print(f"{name:12}{m['wall']:10.1f}{m['user']:10.1f}{m['sys']:10.1f}{m['user'] + m['sys']:10.1f}")
    cpu_ratio = (on["user"] + on["sys"]) / (off["user"] + off["sys"])
    print(f"{'on / off':12}{on['wall'] / off['wall']:10.2f}{on['user'] / off['user']:10.2f}", end="")
    print(f"{on['sys'] / max(off['sys'], 1e-9):10.2f}{cpu_ratio:10.2f}")


def fmt(t: dict) -> str:
    return f"wall {t['wall']:.1f} s, user {t['user']:.1f} s, sys {t['sys']:.1f} s"


if __name__ == "__main__":
    main()
