"""The label-issue finder on train.zip with its default time budget: time, peak memory, suspects of each kind.

Usage:
    python benchmarks/label_issues.py --csv OUT.csv --sheet OUT.png [--source ZIP] [--limit N] [--time-budget MIN]
        [--review docs/known-bad-photos.json]

It runs `core.label_issues.find_label_issues` as `python -m core label-issues` does (defaults: all 20,000 photos
of train.zip, 2 folds, 25 minutes), decoding the photos afresh (no cache), and reports beside each other the time
each phase took against the budget and the 30-minute target, the peak RSS, each fold model's out-of-fold accuracy
and the suspects of each kind. It writes the suspects CSV and a contact sheet of the top 48 (file name, given
label, suggestion and score under each photo) for a person to judge. With --review (a JSON object of photo name
to cat, dog, exclude or keep, as `python -m core corrections` reads), it also says how many of the photos reviewed
as wrong (any verdict but keep) the finder ranks in its top 100 and in its top 1%, beside what a random order would
find. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

from core import config
from core.label_issues import FinderConfig, contact_sheet, find_label_issues

TARGET_MIN = 30.0  # the issue's bound for all of train.zip on this 2-core CPU


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default=str(config.KAGGLE_TRAIN_ZIP))
    parser.add_argument("--csv", required=True, help="where to write the suspects CSV")
    parser.add_argument("--sheet", required=True, help="where to write the contact sheet of the top 48 (PNG)")
    parser.add_argument("--limit", type=int, help="a balanced slice of at most N photos (a quick check)")
    parser.add_argument("--time-budget", type=float, help=f"minutes (default {FinderConfig().time_budget_min:g})")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--review", help="a JSON review (photo name: cat, dog, exclude or keep) to score the ranking")
    args = parser.parse_args()
    finder = replace(FinderConfig(), limit=args.limit)
    if args.time_budget:
        finder = replace(finder, time_budget_min=args.time_budget)
    if args.folds:
        finder = replace(finder, folds=args.folds)

    phases: dict[str, list[float]] = {}  # first and last time each phase (per fold) reported

    def progress(event) -> None:
        key = f"{event.phase} {event.fold}" if event.fold else event.phase
        phases.setdefault(key, [event.elapsed_s, event.elapsed_s])[1] = event.elapsed_s

    started = time.time()
    result = find_label_issues(args.source, finder, progress=progress, cache_dir=False)
    wall = time.time() - started
    result.to_csv(args.csv)
    import cv2

    sheet = contact_sheet(args.source, result.suspects(), count=48)
    cv2.imwrite(args.sheet, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    report(result, finder, phases, wall, args)


def recall(suspects, review_path: str, photos: int) -> dict:
    """How many of the photos a review calls wrong are in the top 100 and the top 1% of the suspects."""
    review = json.loads(Path(review_path).read_text(encoding="utf-8"))
    wrong = {name for name, verdict in review.items() if verdict != "keep"}
    ranked = list(suspects.file)
    found = {k: len(wrong & set(ranked[:k])) for k in (100, photos // 100)}
    for k, hits in found.items():
        chance = len(wrong) * k / photos
        print(f"  {hits} of the {len(wrong)} photos the review calls wrong are in the top {k} ({chance:.1f} by chance)")
    print(f"  {len(wrong & set(ranked))} of them are suspects at all ({len(ranked)} suspects)")
    return {"review": review_path, "wrong": len(wrong), "in_top": found, "suspects": len(wrong & set(ranked))}


def report(result, finder: FinderConfig, phases: dict, wall: float, args) -> None:
    """Print the measurements, then one JSON line."""
    n = len(result.photos)
    counts = result.counts()
    print(f"label issues on {n} photos of {result.source} ({len(result.skipped)} skipped), {finder.folds} folds")
    budget = finder.time_budget_min
    print(f"  wall time {wall / 60:.1f} min; budget {budget:g} min ({wall / 60 / budget:.2f}x)")
    print(f"  against the {TARGET_MIN:g}-minute target: {wall / 60 / TARGET_MIN:.2f}x")
    for key, (first, last) in phases.items():
        print(f"    {key:<8} {first:7.1f} s to {last:7.1f} s ({last - first:6.1f} s)")
    print(f"  peak RSS {peak_rss_mb():.0f} MB")
    for fold, (acc, minutes) in enumerate(zip(result.fold_accuracy, result.fold_minutes, strict=True)):
        scored = int((result.photos.fold == fold).sum())
        print(f"  fold {fold + 1}: trained {minutes:.1f} min, accuracy {acc:.2%} on the {scored} photos it scored")
    print(f"  out-of-fold accuracy {result.accuracy:.2%} on all {n} photos (given labels)")
    print(f"  suspects: {counts['other-class']} other-class, {counts['neither']} neither; top 1% = {n // 100} photos")
    print(result.suspects().head(20).to_string(index=False))
    print(f"wrote {args.csv} and {args.sheet}")
    found = recall(result.suspects(), args.review, n) if args.review else None
    record = {
        "photos": n,
        "wall_time_s": round(wall, 1),
        "budget_min": finder.time_budget_min,
        "peak_rss_mb": round(peak_rss_mb()),
        "fold_accuracy": [round(a, 4) for a in result.fold_accuracy],
        "accuracy": round(result.accuracy, 4),
        "counts": counts,
        "source": str(args.source),
        "limit": args.limit,
        "review": found,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
