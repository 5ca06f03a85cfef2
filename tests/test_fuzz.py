"""A bounded fuzz run: thousands of seeded mutations of real JPEG, PNG, GIF, WebP, TIFF and BMP bytes.

Each call either returns the right shape or raises ImageError with a plain reason; nothing else, and nothing
hangs. benchmarks/fuzz.py runs the same mutations at 20,000+ inputs and reports memory and the slowest ones.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import pytest
from fuzzing import corpus, fields, seeds

from core.pipeline import ImageError, PipelineConfig, decode, decode_preview, inspect

MUTATIONS = 3_000
# Only a hang trips this: a decode here takes milliseconds; the per-file target (2 s) is benchmarks/fuzz.py's.
DEADLINE_S = 20.0
CONFIGS = (PipelineConfig(), PipelineConfig(96, "rgb"))
REPR = re.compile(r"<\w[^>]* at 0x|object at|\bb'|\\x[0-9a-f]{2}|Traceback|Error\(|\.py\b")


def test_every_seed_is_a_valid_image_of_an_accepted_format_with_fields_to_edit():
    made = seeds()
    assert {inspect(data).format for data in made.values()} == {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"}
    for name, data in made.items():
        assert decode(data, CONFIGS[1]).shape == (96, 96, 3), name
        assert len(fields(data)) >= 3, name
    assert {inspect(made[name]).frames for name in ("animated.gif", "animated.png", "animated.webp")} == {2}


def test_mutations_are_seeded_and_cover_every_seed_and_kind():
    first = list(corpus(200, seed=7))
    assert first == list(corpus(200, seed=7))
    assert {name for name, _, _ in first} == set(seeds())
    kinds = {kind.removesuffix("+crc") for _, kind, _ in first}
    assert kinds == {"flip", "bytes", "cut", "field", "fields", "insert", "delete", "repeat"}
    assert any(kind.endswith("+crc") for _, kind, _ in first)


def _outcome(call, check) -> str:
    started = time.perf_counter()
    try:
        check(call())
        outcome = "decoded"
    except ImageError as err:
        reason = str(err)
        assert reason and "\n" not in reason and not REPR.search(reason), reason
        outcome = "refused"
    assert time.perf_counter() - started < DEADLINE_S
    return outcome


def test_every_mutated_file_decodes_to_the_right_shape_or_gets_a_plain_reason():
    outcomes: Counter[str] = Counter()
    for k, (name, kind, data) in enumerate(corpus(MUTATIONS, seed=0)):
        cfg = CONFIGS[k % 2]

        def model_input(x: np.ndarray, cfg: PipelineConfig = cfg) -> None:
            assert x.shape == cfg.input_shape and x.dtype == np.uint8

        def preview(x: np.ndarray) -> None:
            assert x.ndim == 3 and x.shape[2] == 3 and max(x.shape[:2]) <= 64 and x.dtype == np.uint8

        try:
            outcomes[_outcome(lambda d=data, c=cfg: decode(d, c), model_input)] += 1
            outcomes[_outcome(lambda d=data: decode_preview(d, max_side=64), preview)] += 1
        except AssertionError as err:
            pytest.fail(f"{name} after {kind} (mutation {k}): {err}")
    assert sum(outcomes.values()) == 2 * MUTATIONS
    assert outcomes["decoded"] > MUTATIONS // 4 and outcomes["refused"] > MUTATIONS // 4, outcomes
