"""Two models side by side on the same photos: those that neither of them trained on.

A run trained with corrections or extra photos validates on the uncorrected run's own split less the corrected
photos (core.corrections.split_for_training), so the photos both held out are the fair ground to compare them on.
The paired counts say on how many photos they disagree, and the exact McNemar test how likely that split of
disagreements is by chance.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest

from core.predict import Evaluation


def shared_held_out(meta_a: dict, meta_b: dict) -> list[str]:
    """The photos both models' training held out, in a's order; none unless both trained on the same dataset."""
    dataset_a = meta_a.get("dataset", {}).get("fingerprint")
    if not dataset_a or dataset_a != meta_b.get("dataset", {}).get("fingerprint"):
        return []
    held_by_b = set(meta_b.get("validation_names") or ())
    return [name for name in meta_a.get("validation_names") or () if name in held_by_b]


def training_fixes(meta: dict) -> str:
    """What a model trained on beyond its dataset as given, in words ("" for nothing beyond it)."""
    record = meta.get("training_data") or {}
    said = []
    if corrections := record.get("corrections"):
        relabelled, excluded = corrections.get("applied_relabelled", 0), corrections.get("applied_excluded", 0)
        said.append(f"corrections ({relabelled:,} relabelled, {excluded:,} excluded)")
    extra = sum(e.get("photos", 0) for e in record.get("extras", []))
    if extra:
        said.append(f"{extra:,} extra photos")
    return " and ".join(said)


def partner(meta: dict, others: dict[str, dict]) -> str | None:
    """The model to show beside this one by default: of those trained the other way (with fixes against without),
    the one that shares the most held-out photos with it; None when no such model shares any."""
    fixed = bool(training_fixes(meta))
    counts = {key: len(shared_held_out(meta, m)) for key, m in others.items() if bool(training_fixes(m)) != fixed}
    best = max(counts, key=counts.get, default=None)
    return best if best is not None and counts[best] else None


@dataclass(frozen=True)
class Paired:
    """Photo by photo, on the photos both evaluations scored: who got each right."""

    both_right: int
    only_first: int
    only_second: int
    both_wrong: int

    @property
    def n(self) -> int:
        return self.both_right + self.only_first + self.only_second + self.both_wrong

    @property
    def p_value(self) -> float:
        """Exact McNemar test (two-sided): the chance of a split of the disagreements at least this uneven, were
        the two models equally good."""
        disagreements = self.only_first + self.only_second
        return float(binomtest(self.only_first, disagreements, 0.5).pvalue) if disagreements else 1.0

    def sentence(self, first: str, second: str) -> str:
        chance = self.p_value >= 0.05
        verdict = "could be chance at this many photos" if chance else "is unlikely to be chance (p < 0.05)"
        return (
            f"On the same {self.n:,} photos: both right on {self.both_right:,}, only {first} on {self.only_first:,}, "
            f"only {second} on {self.only_second:,}, both wrong on {self.both_wrong:,}. Exact McNemar test on the "
            f"{self.only_first + self.only_second:,} disagreements: p = {self.p_value:.2g}, a difference that "
            f"{verdict}."
        )


def paired(first: Evaluation, second: Evaluation) -> Paired:
    """Paired counts over the photos both evaluations scored (a photo either could not read is left out)."""
    a, b = (e.predictions[e.predictions.error.isna()].set_index("file") for e in (first, second))
    both = a.join(b, how="inner", lsuffix="_a", rsuffix="_b")
    right_a = (both.prob_dog_a >= 0.5).astype(int) == both.true_a
    right_b = (both.prob_dog_b >= 0.5).astype(int) == both.true_b
    return Paired(
        int((right_a & right_b).sum()),
        int((right_a & ~right_b).sum()),
        int((~right_a & right_b).sum()),
        int((~right_a & ~right_b).sum()),
    )
