"""What this machine's CPU does natively, read from /proc/cpuinfo (elsewhere than Linux: nothing is assumed)."""

from __future__ import annotations

import functools
from pathlib import Path

PRECISIONS = ("float32", "bfloat16", "auto")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags the kernel lists for the first CPU (empty where /proc/cpuinfo is missing)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    flags = next((line.split(":", 1)[1] for line in lines if line.startswith("flags")), "")
    return frozenset(flags.split())


def has_amx(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware (AMX, `amx_bf16`): the one test of where bf16 pays,
    for training (training_precision)."""
    return "amx_bf16" in (cpu_flags() if flags is None else flags)


def has_bf16_inference(flags: frozenset[str] | None = None) -> bool:
    """Whether OpenVINO runs bfloat16 inference natively here: AMX (`amx_bf16`) or AVX-512 BF16 (`avx512_bf16`, its
    bf16 dot products), for core.fastpath's auto engine. Training asks has_amx: TensorFlow gains on AMX only."""
    found = cpu_flags() if flags is None else flags
    return "amx_bf16" in found or "avx512_bf16" in found


def training_precision(choice: str, flags: frozenset[str] | None = None) -> str:
    """float32 or bfloat16, the compute precision a run trains in.

    auto takes bfloat16 only where the CPU multiplies bfloat16 matrices in hardware (AMX, `amx_bf16`). Without
    it TensorFlow emulates bfloat16, 2-2.5x slower than float32 (docs/model.md), so auto is float32 there.
    """
    if choice != "auto":
        return choice
    return "bfloat16" if has_amx(flags) else "float32"
