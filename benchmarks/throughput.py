"""Training and inference speed of candidate nets, side by side: images per second on random input.

Usage: python benchmarks/throughput.py [--batches 20] [--rounds 3] [--bf16] [--fused] [CANDIDATE ...]   (default: all)

The candidates are `benchmarks/experiments.py`'s, plus each preset's training sizes when it trains progressively.
Rounds interleave the candidates, so a swing in this machine's speed hits all of them alike; the medians and
their ratios to the first candidate are printed. It measures cost only: accuracy needs a real run.
With --bf16 each net is also built under Keras's mixed_bfloat16 policy (bfloat16 compute, float32 weights),
to see whether this CPU's bfloat16 support speeds training up. With --fused each net is also built as runs train it,
its batch norms `core.model.FusedBatchNorm` (TensorFlow's fused kernel) instead of Keras's own layer, and the
fused / Keras ratio of each pair is printed.
"""

from __future__ import annotations

import argparse
import itertools
import time

import keras
import numpy as np
from experiments import BASE, CANDIDATES

from core.model import build_model, compile_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("candidates", nargs="*", default=[])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="also time each net under mixed_bfloat16")
    parser.add_argument("--fused", action="store_true", help="also time each net with its batch norms fused")
    args = parser.parse_args()
    policies = ["float32", "mixed_bfloat16"] if args.bf16 else ["float32"]
    norms = [False, True] if args.fused else [False]
    names = args.candidates or list(CANDIDATES)
    rng = np.random.default_rng(0)
    nets = {}
    for name in names:
        candidate = BASE.changed(CANDIDATES[name])
        for size in sorted(set(candidate.stages) | {candidate.image_size}):
            at_size = candidate.changed({"image_size": size})
            pipeline = at_size.pipeline
            for policy, fused in itertools.product(policies, norms):
                keras.config.set_dtype_policy(policy)  # layers take the policy in force when they are built
                model = compile_model(build_model(at_size, to_train=fused), at_size, 1000)
                keras.config.set_dtype_policy("float32")
                n = args.batch_size * args.batches
                x = rng.random((n, *pipeline.input_shape), dtype=np.float32)
                y = rng.integers(0, 2, (n, 1)).astype(np.float32)
                model.fit(x[: args.batch_size * 2], y[: args.batch_size * 2], batch_size=args.batch_size, verbose=0)
                model.predict(x[:256], batch_size=128, verbose=0)  # trace both before timing
                suffix = ("" if policy == "float32" else "/bf16") + ("/fused" if fused else "")
                nets[f"{name}@{size}{suffix}"] = (model, x, y)
    train_rate = {k: [] for k in nets}
    infer_rate = {k: [] for k in nets}
    for r in range(args.rounds):
        for key, (model, x, y) in nets.items():
            started = time.perf_counter()
            model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
            train_rate[key].append(len(x) / (time.perf_counter() - started))
            started = time.perf_counter()
            model.predict(x, batch_size=128, verbose=0)
            infer_rate[key].append(len(x) / (time.perf_counter() - started))
        print(f"round {r + 1}: " + ", ".join(f"{k} {train_rate[k][-1]:.0f}/{infer_rate[k][-1]:.0f}" for k in nets))
    first = next(iter(nets))
    base_train, base_infer = np.median(train_rate[first]), np.median(infer_rate[first])
    print(f"\n{'net@size':<24}{'params':>10}{'train img/s':>13}{'ratio':>7}{'infer img/s':>13}{'ratio':>7}")
    for key, (model, _, _) in nets.items():
        tr, inf = np.median(train_rate[key]), np.median(infer_rate[key])
        ratios = f"{tr:>13.0f}{tr / base_train:>7.2f}{inf:>13.0f}{inf / base_infer:>7.2f}"
        print(f"{key:<24}{model.count_params():>10,}{ratios}")
    fused = [key for key in nets if key.endswith("/fused")]
    if fused:
        print(f"\n{'training, fused / Keras batch norm':<36}{'ratio':>7}")
        for key in fused:
            twin = key.removesuffix("/fused")
            print(f"{twin:<36}{np.median(train_rate[key]) / np.median(train_rate[twin]):>7.2f}")


if __name__ == "__main__":
    main()
