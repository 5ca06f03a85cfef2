"""Two models side by side: the photos both held out, the default partner, and the paired counts and test."""

from __future__ import annotations

import pandas as pd
import pytest

from core.compare import Paired, paired, partner, shared_held_out, training_fixes
from core.predict import scored


def meta(fingerprint: str, held: list[str], fixes: dict | None = None) -> dict:
    return {"dataset": {"fingerprint": fingerprint}, "validation_names": held, "training_data": fixes}


CORRECTED = {"corrections": {"applied_relabelled": 1, "applied_excluded": 12}, "extras": []}


def test_shared_photos_are_those_both_held_out_of_the_same_dataset_only():
    a, b = meta("f1", ["x/cat.1.jpg", "x/dog.2.jpg", "x/cat.3.jpg"]), meta("f1", ["x/cat.3.jpg", "x/cat.1.jpg"])
    assert shared_held_out(a, b) == ["x/cat.1.jpg", "x/cat.3.jpg"]  # in the first model's order
    assert shared_held_out(a, meta("f2", ["x/cat.1.jpg"])) == []  # another dataset: the same names mean nothing
    assert shared_held_out(meta("", ["x/cat.1.jpg"]), meta("", ["x/cat.1.jpg"])) == []


def test_a_corrected_run_is_paired_with_the_uncorrected_one_that_shares_most_photos():
    fixed = meta("f1", ["a", "b", "c"], CORRECTED)
    others = {
        "small-overlap": meta("f1", ["a"]),
        "also-corrected": meta("f1", ["a", "b", "c"], CORRECTED),
        "best-match": meta("f1", ["a", "b", "c", "d"]),
        "other-data": meta("f2", ["a", "b", "c"]),
    }
    assert partner(fixed, others) == "best-match"
    assert partner(others["best-match"], {"fixed": fixed, "plain": meta("f1", ["a"])}) == "fixed"  # and back
    assert partner(fixed, {"other-data": others["other-data"]}) is None
    assert training_fixes(fixed) == "corrections (1 relabelled, 12 excluded)"
    with_photos = CORRECTED | {"extras": [{"photos": 3}, {"photos": 2}]}
    assert training_fixes(meta("f1", [], with_photos)).endswith(" and 5 extra photos")
    assert training_fixes(meta("f1", [])) == ""


def frame(probs: dict[str, float | None]) -> pd.DataFrame:
    rows = [
        {
            "file": f,
            "label": None,
            "prob_dog": p,
            "error": None if p is not None else "unreadable",
            "true": int("dog" in f),
        }
        for f, p in probs.items()
    ]
    return pd.DataFrame(rows)


def test_paired_counts_photo_by_photo_over_the_photos_both_scored():
    first = scored(frame({"cat.1": 0.1, "cat.2": 0.7, "dog.3": 0.9, "dog.4": 0.2, "dog.5": 0.8, "cat.6": None}))
    second = scored(frame({"cat.1": 0.2, "cat.2": 0.3, "dog.3": 0.4, "dog.4": 0.1, "dog.5": 0.6, "cat.6": 0.1}))
    counts = paired(first, second)
    # cat.1, dog.5 both right; dog.3 only the first; cat.2 only the second; dog.4 both wrong; cat.6 unread by one
    assert counts == Paired(both_right=2, only_first=1, only_second=1, both_wrong=1) and counts.n == 5


@pytest.mark.parametrize(
    ("only_first", "only_second", "p"),
    [(10, 0, 2 * 0.5**10), (0, 0, 1.0), (5, 5, 1.0), (3, 1, 0.625)],  # two-sided exact binomial tail
)
def test_the_exact_mcnemar_test_on_the_disagreements(only_first, only_second, p):
    counts = Paired(100, only_first, only_second, 7)
    assert counts.p_value == pytest.approx(p)
    said = counts.sentence("A", "B")
    assert f"only A on {only_first}, only B on {only_second}" in said
    assert ("a difference that is unlikely to be chance (p < 0.05)." in said) == (p < 0.05)
    assert ("a difference that could be chance at this many photos." in said) == (p >= 0.05)
