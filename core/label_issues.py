"""The label-issue finder: photos scored by models that never trained on them, ranked by cleanlab.

How it works, in four steps (each a function below):
1. The photos are split into k stratified folds. For each fold a fast model (the `best` preset's net at 64 px,
   trained at 48 then 64 px) trains on the other folds under a share of the time budget, its learning rate
   annealed to the end of that share (`core.callbacks.TimeBudget`), in a temporary runs folder that is deleted.
2. That model, and only that one, scores the fold's photos: P(dog), averaged with the mirror image, and the net's
   features (the feature maps at the end of each block, average-pooled, each block scaled to unit length).
3. cleanlab ranks the labels: `cleanlab.rank.get_label_quality_scores` (self-confidence: the out-of-fold P(given
   label)) and `cleanlab.filter.find_label_issues` (confident learning) flag the labels the models doubt.
   `cleanlab.outlier.OutOfDistribution`, fitted on each fold's own out-of-fold features, scores how atypical each
   photo is among the other photos of its fold; a photo past Tukey's far-out fence (Q3 + 3 IQR of that fold's
   mean distances to the nearest photos) is an outlier: likely neither a cat nor a dog.
   A second outlier view needs no model: the distribution of each photo's edge strengths (a histogram of its grey
   image's gradient magnitudes), scored by the same `OutOfDistribution` among all photos. A photograph has edges of
   every strength; a text card, logo or drawing is flat areas and a few hard edges, far from every photograph.
4. Rank and kind. Each photo has three percentiles: its label quality's among all photos, its outlier score's among
   its fold's and its edge-outlier score's among all photos (low: suspect). Fisher's method
   (`scipy.stats.combine_pvalues`) combines the two outlier views into one "atypical" p-value, then that with the
   label's, so a photo doubtful on both questions outranks one extreme on a single view; `score` is the percentile
   of that combined evidence among all photos (0.999: more suspect than 99.9% of them).
   A suspect is a cleanlab label issue or an outlier of either view. Its `kind` is `neither` when it is an outlier
   and either cleanlab did not flag its label or it is more atypical than its label is doubtful (an outlier
   percentile is the lower); otherwise it is `other-class`, and the suggestion is the other class.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from core.config import CLASS_NAMES, atomic_write
from core.corrections import corrections_path
from core.data import LoadedDataset, Source, load_dataset
from core.errors import DatasetError, SettingsError
from core.pipeline import ImageError, PipelineConfig, decode_preview, to_model_input
from core.settings import TrainConfig
from core.train import train

KINDS = ("other-class", "neither")
EXCLUDE = "exclude"  # the suggestion for a photo that is neither a cat nor a dog
CSV_COLUMNS = ["file", "given_label", "suggested", "score", "kind"]
PHASES = ("load", "train", "score", "rank")
_CHUNK = 512  # photos per inference call: big enough to keep both cores busy, small enough for memory
# Priors for the budget split, replaced by what the first fold measures: seconds to score one photo (two looks and
# its share of the nearest-neighbour search) and the fixed cost of one fold (building, saving and reloading its
# model), on this 2-core CPU when busy. Erring high costs nothing: what the first fold leaves, the next one gets.
_SCORE_S_PER_PHOTO = 0.005
_FOLD_OVERHEAD_S = 30.0
_RANK_RESERVE_S = 10.0
_MIN_FOLD_S = 5.0
_MIN_PER_CLASS_AND_FOLD = 5  # each fold scores at least this many photos of each class


class Cancelled(Exception):
    """The finder was cancelled through its cancel event; nothing it made is kept."""


@dataclass(frozen=True)
class FinderConfig:
    """How the finder trains and scores. The defaults fit all 20,000 photos of train.zip in 25 min on 2 CPU cores."""

    time_budget_min: float = 25.0  # the whole finder, loading to ranking; the folds train in what is left
    folds: int = 2  # a model per fold; each photo is scored by the one model that did not train on it
    preset: str = "best"  # the net, optimiser and augmentation
    image_size: int = 64
    train_scales: tuple[float, ...] = (0.75, 1.0)  # progressive resizing: half the budget at 48 px, then 64
    batch_size: int = 64
    seed: int = 0
    limit: int | None = None  # a balanced slice of at most this many photos
    tta: bool = True  # average P(dog) and the features with the mirror image's
    outlier_fence: float = 3.0  # Tukey's far-out fence: Q3 + this many IQRs of the fold's neighbour distances
    # Train each fold for exactly this many epochs (the cosine over them) instead of a share of the time budget:
    # the same work on any machine, for tests and reproducible runs. None: the time budget decides.
    epochs: int | None = None

    @property
    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(self.image_size, "rgb")

    def train_config(self, minutes: float, fold: int) -> TrainConfig:
        """The TrainConfig of one fold's model: all its photos train (no validation split) for `minutes`."""
        return TrainConfig.for_preset(
            self.preset,
            epochs=self.epochs or 10_000,  # without epochs, an upper bound: the time budget ends training
            batch_size=self.batch_size,
            validation_split=0.0,
            image_size=self.image_size,
            color_mode="rgb",
            early_stopping=False,
            seed=self.seed + fold,
            train_scales=self.train_scales,
            # With fixed epochs the cosine runs over them, not over the preset's own time budget.
            time_budget_min=None if self.epochs else minutes,
            calibration_split=0.0,  # every photo of the fold trains; the scores are ranked, not read as chances
        )


@dataclass(frozen=True)
class FinderProgress:
    """One progress report: phase is load, train, score or rank.

    done/total count photos while loading and scoring, and seconds of the fold's share of the budget while training
    (batches, with fixed epochs).
    """

    phase: str
    done: int
    total: int
    fold: int = 0  # 1-based; 0 outside the folds
    folds: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None  # seconds left of the finder's time budget; None with fixed epochs


ProgressFn = Callable[[FinderProgress], None]


@dataclass
class LabelIssues:
    """The finder's verdict on every photo, the fold assignment that proves no model scored its own photos."""

    photos: pd.DataFrame  # one row per photo, most suspect first (see `_rank` for the columns)
    trained_on: list[np.ndarray]  # trained_on[f]: the names model f trained on; it scored the photos of fold f
    fold_accuracy: list[float]  # each model's accuracy on the photos it scored, against their given labels
    fold_minutes: list[float]  # each model's training, wall time (building, training and saving it)
    source: str
    fingerprint: str
    skipped: pd.DataFrame
    config: FinderConfig
    wall_time_s: float = 0.0

    def suspects(self) -> pd.DataFrame:
        """The suspects, most suspect first, with the CSV's columns: file,given_label,suggested,score,kind."""
        return self.photos.loc[self.photos.suspect, CSV_COLUMNS].reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        """How many suspects of each kind."""
        kinds = self.photos.loc[self.photos.suspect, "kind"]
        return {kind: int((kinds == kind).sum()) for kind in KINDS}

    @property
    def accuracy(self) -> float:
        """Out-of-fold accuracy on all photos against their given labels."""
        photos = self.photos
        return float(((photos.p_dog >= 0.5).astype(int) == photos.given_label.map(CLASS_NAMES.index)).mean())

    def summary(self) -> str:
        """One line: suspects of each kind, of how many photos, the models' accuracy and the time taken."""
        counts = self.counts()
        return (
            f"{counts['other-class']} other-class and {counts['neither']} neither suspects among {len(self.photos)} "
            f"photos of {self.source} ({self.config.folds} folds, out-of-fold accuracy {self.accuracy:.1%} on "
            f"those {len(self.photos)} photos) in {self.wall_time_s / 60:.1f} min"
        )

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the suspects CSV atomically (temp file, then os.replace); WriteError names path if it fails."""
        return atomic_write(path, lambda tmp: self.suspects().to_csv(tmp, index=False, float_format="%.6f"))


class _Clock:
    # Splits what is left of the time budget among the folds still to train, holding back what scoring them and
    # ranking will take; what the first fold measures replaces the priors, so a slow machine still finishes on time.
    def __init__(self, budget_s: float | None, emit: ProgressFn, folds: int):
        self.started = time.time()
        self.deadline = None if budget_s is None else self.started + budget_s
        self.emit, self.folds = emit, folds
        self.score_s_per_photo = _SCORE_S_PER_PHOTO
        self.overhead_s = _FOLD_OVERHEAD_S

    def fold_budget_s(self, folds_left: int, photos_left: int) -> float:
        if self.deadline is None:
            return 0.0
        reserve = photos_left * self.score_s_per_photo + folds_left * self.overhead_s + _RANK_RESERVE_S
        return max((self.deadline - time.time() - reserve) / folds_left, _MIN_FOLD_S)

    def report(self, phase: str, done: int, total: int, fold: int = 0) -> None:
        now = time.time()
        eta = None if self.deadline is None else max(self.deadline - now, 0.0)
        self.emit(FinderProgress(phase, done, total, fold, self.folds, now - self.started, eta))


def find_label_issues(
    source: str | os.PathLike | LoadedDataset,
    config: FinderConfig = FinderConfig(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    cache_dir: Path | None | bool = None,
    scratch_dir: Path | None = None,
) -> LabelIssues:
    """Score every photo with a model that did not train on it, and rank the labels most likely wrong first.

    The fold models train in a temporary runs folder (under scratch_dir, else the system's temp folder) that is
    deleted at the end, cancelled or not; cancel (checked every batch) raises Cancelled.
    """
    budget_s = None if config.epochs else config.time_budget_min * 60
    finder = _Finder(config, _Clock(budget_s, progress or (lambda event: None), config.folds), cancel)
    dataset = finder.load(source, cache_dir)
    folds = _fold_indices(dataset.y, config.folds, config.seed)
    with tempfile.TemporaryDirectory(prefix="cvd-label-issues-", dir=scratch_dir, ignore_cleanup_errors=True) as runs:
        for f, (train_idx, test_idx) in enumerate(folds):
            photos_left = sum(len(scored) for _, scored in folds[f:])
            finder.run_fold(dataset, f, train_idx, test_idx, photos_left, Path(runs))
    finder.clock.report("rank", 0, 1)
    photos = _rank(dataset, finder, config.folds)
    finder.clock.report("rank", 1, 1)
    return LabelIssues(
        photos=photos,
        trained_on=finder.trained_on,
        fold_accuracy=finder.accuracy,
        fold_minutes=finder.minutes,
        source=dataset.source,
        fingerprint=dataset.fingerprint,
        skipped=dataset.skipped,
        config=config,
        wall_time_s=time.time() - finder.clock.started,
    )


def _fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds: (training indices, scored indices) for each model, every photo scored exactly once."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise SettingsError(f"the finder needs at least 2 folds, not {folds}")
    counts = np.bincount(labels.astype(int), minlength=2)
    if counts.min() < _MIN_PER_CLASS_AND_FOLD * folds:
        raise DatasetError(
            f"finding label issues with {folds} folds needs at least {_MIN_PER_CLASS_AND_FOLD * folds} photos of "
            f"each class; this dataset has {counts[0]} cats and {counts[1]} dogs"
        )
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(split.split(np.zeros(len(labels)), labels))


class _Finder:
    # Trains and scores the folds one by one. Each photo's row is written once, by the one model that left it out;
    # trained_on keeps what each model trained on, so that anyone can check it.
    def __init__(self, config: FinderConfig, clock: _Clock, cancel: threading.Event | None):
        self.config, self.clock = config, clock
        self.cancel = cancel or threading.Event()
        self.fold = self.p_dog = self.ood = self.outlier = self.edge_ood = self.edge_outlier = np.zeros(0)
        self.trained_on: list[np.ndarray] = []
        self.accuracy: list[float] = []
        self.minutes: list[float] = []

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("label-issue search cancelled")

    def load(self, source: str | os.PathLike | LoadedDataset, cache_dir) -> LoadedDataset:
        """The photos at the finder's input size, decoded (and cached) by core.data."""
        pipeline = self.config.pipeline
        if isinstance(source, LoadedDataset):
            if source.pipeline.input_shape != pipeline.input_shape:
                raise ValueError(f"the photos were loaded at {source.pipeline.input_shape}, not {pipeline.input_shape}")
            dataset = source
        else:
            report = lambda done, total: self.clock.report("load", done, total)  # noqa: E731
            dataset = load_dataset(source, pipeline, self.config.limit, self.config.seed, report, cache_dir)
        n = len(dataset)
        self.fold, self.p_dog, self.ood = np.full(n, -1), np.full(n, np.nan), np.full(n, np.nan)
        self.outlier = np.zeros(n, bool)
        # The edge view needs no model, so it compares every photo with all the others.
        self.edge_ood, self.edge_outlier = _outliers(_edge_strengths(dataset.x), self.config.outlier_fence)
        self.check()
        return dataset

    def run_fold(self, dataset, f: int, train_idx, test_idx, photos_left: int, runs: Path) -> None:
        """Train fold f's model on train_idx (its share of the budget) and score the photos of test_idx with it."""
        from core.model import load_model

        started = time.time()
        budget_s = self.clock.fold_budget_s(self.config.folds - f, photos_left)
        subset = _subset(dataset, train_idx, f"fold {f + 1} of {self.config.folds}")
        config = self.config.train_config(budget_s / 60, f)
        result = train(subset, config, progress=self._on_train(f, budget_s), cancel=self.cancel, runs_dir=runs)
        self.check()
        if not result.run.has_model:
            raise SettingsError(f"fold {f + 1}'s model trained no whole epoch in {budget_s:.0f} s: give it more time")
        model = load_model(result.run.model_path)
        shutil.rmtree(result.run.path, ignore_errors=True)
        scoring = time.time()
        report = lambda done, total: self.clock.report("score", done, total, f + 1)  # noqa: E731
        p_dog, features = _score(model, dataset.x[test_idx], self.config.tta, self.check, report)
        self.ood[test_idx], self.outlier[test_idx] = _outliers(features, self.config.outlier_fence)
        self.fold[test_idx], self.p_dog[test_idx] = f, p_dog
        self.trained_on.append(subset.names.copy())
        self.accuracy.append(float(((p_dog >= 0.5) == (dataset.y[test_idx] == 1)).mean()))
        self.minutes.append((scoring - started) / 60)
        # What this fold took replaces the priors in the budget split for the folds still to come.
        self.clock.score_s_per_photo = (time.time() - scoring) / max(len(test_idx), 1)
        self.clock.overhead_s = max(scoring - started - budget_s, 0.0)

    def _on_train(self, f: int, budget_s: float):
        def on_train(event) -> None:
            if event.kind != "batch":
                return
            if self.config.epochs:  # batches of the fixed epochs
                done, total = (event.epoch - 1) * event.batches + event.batch, event.epochs * event.batches
            else:  # seconds of the fold's budget
                done, total = int(min(event.elapsed, budget_s)), int(budget_s)
            self.clock.report("train", done, total, f + 1)

        return on_train


def _subset(dataset: LoadedDataset, idx: np.ndarray, part: str) -> LoadedDataset:
    return LoadedDataset(
        dataset.x[idx],
        dataset.y[idx],
        dataset.names[idx],
        dataset.skipped.iloc[:0],
        f"{dataset.fingerprint}-{part}",
        dataset.pipeline,
        f"{dataset.source} ({part})",
    )


def _embedder(model):
    """A function of a float32 batch: P(dog) and the feature maps ending each block, average-pooled."""
    import keras
    import tensorflow as tf

    from core.model import inference_model

    net = inference_model(model)  # batch norm folded: the same outputs, faster
    layers = [layer for layer in net.layers if not isinstance(layer, keras.layers.InputLayer)]
    pools = (keras.layers.MaxPooling2D, keras.layers.GlobalAveragePooling2D)
    ends = [a.output for a, b in itertools.pairwise(layers) if isinstance(b, pools)]
    pooled = [keras.ops.mean(end, axis=(1, 2)) for end in ends]
    both = keras.Model(net.inputs, [net.outputs[0], *pooled])
    spec = tf.TensorSpec((None, *net.input_shape[1:]), tf.float32)
    return tf.function(lambda x: both(x, training=False), input_signature=[spec])


def _score(model, x: np.ndarray, tta: bool, check: Callable[[], None], report) -> tuple[np.ndarray, np.ndarray]:
    """P(dog) and features for uint8 photos, in chunks, with the mirror image averaged in when tta."""
    embed = _embedder(model)
    probs, features = [], []
    for start in range(0, len(x), _CHUNK):
        batch = to_model_input(x[start : start + _CHUNK])
        outs = [t.numpy() for t in embed(batch)]
        if tta:
            mirrored = [t.numpy() for t in embed(np.ascontiguousarray(batch[:, :, ::-1]))]
            outs = [(a + b) / 2 for a, b in zip(outs, mirrored, strict=True)]
        probs.append(outs[0][:, 0])
        features.append(np.hstack([_unit(block) for block in outs[1:]]))
        check()
        report(min(start + _CHUNK, len(x)), len(x))
    return np.concatenate(probs).astype(float), np.concatenate(features)


def _unit(rows: np.ndarray) -> np.ndarray:
    # Each block's features at unit length, so that every depth weighs alike in the distance between photos.
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


# Bin edges of the gradient magnitudes (3x3 Sobel on 0-255 grey levels; the largest possible is about 1,443): 0 to
# 4 is flat, and each bin after doubles, so the histogram reads the same at any contrast.
_EDGE_BINS = np.array([0, 4, 8, 16, 32, 64, 128, 256, 512, np.inf])


def _edge_strengths(x: np.ndarray) -> np.ndarray:
    """Each uint8 RGB photo's share of pixels in each band of edge strength, square-rooted (Hellinger distances)."""
    rows = np.empty((len(x), len(_EDGE_BINS) - 1))
    for i, img in enumerate(x):
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        magnitude = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        rows[i] = np.histogram(magnitude, _EDGE_BINS)[0] / magnitude.size
    return np.sqrt(rows)


def _outliers(features: np.ndarray, fence: float) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's out-of-distribution score of each photo among the others, and whether it is past the fence."""
    from cleanlab.outlier import OutOfDistribution

    scores = OutOfDistribution().fit_score(features=features, verbose=False)
    # The score is exp(-distance / scale), so -log(score) is the mean distance to the nearest photos, scaled.
    distance = -np.log(np.clip(scores, 1e-300, 1.0))
    q1, q3 = np.percentile(distance, [25, 75])
    return scores, distance > q3 + fence * (q3 - q1)


def _evidence(label_pct: np.ndarray, ood_pct: np.ndarray, edge_pct: np.ndarray) -> np.ndarray:
    """Fisher's statistic of two questions, each one p-value: is the label wrong, and is the photo atypical (the two
    outlier views joined first, so that together they weigh as much as the label's one view). Higher: more suspect."""
    from scipy.stats import combine_pvalues

    atypical = combine_pvalues(np.column_stack([ood_pct, edge_pct]), method="fisher", axis=1).pvalue
    return combine_pvalues(np.column_stack([label_pct, atypical]), method="fisher", axis=1).statistic


def _rank(dataset: LoadedDataset, scored: _Finder, folds: int) -> pd.DataFrame:
    """Every photo with its cleanlab scores, percentiles, suspicion score, kind and suggestion, most suspect first."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores
    from scipy.stats import rankdata

    labels = dataset.y.astype(int)
    pred_probs = np.column_stack([1 - scored.p_dog, scored.p_dog])
    quality = get_label_quality_scores(labels, pred_probs)  # self-confidence: out-of-fold P(given label)
    issue = cleanlab_issues(labels, pred_probs, n_jobs=1)
    label_pct = rankdata(quality, "max") / len(labels)
    ood_pct = np.zeros(len(labels))
    for f in range(folds):  # outlier scores compare photos of one fold, seen by one model
        mine = scored.fold == f
        ood_pct[mine] = rankdata(scored.ood[mine], "max") / mine.sum()
    edge_pct = rankdata(scored.edge_ood, "max") / len(labels)
    evidence = _evidence(label_pct, ood_pct, edge_pct)
    outlier = scored.outlier | scored.edge_outlier
    neither = outlier & (~issue | (np.minimum(ood_pct, edge_pct) <= label_pct))
    other = np.array(CLASS_NAMES)[1 - labels]
    photos = pd.DataFrame(
        {
            "file": dataset.names,
            "given_label": np.array(CLASS_NAMES)[labels],
            "suggested": np.where(neither, EXCLUDE, other),
            "score": rankdata(evidence, "max") / len(labels),
            "kind": np.where(neither, "neither", "other-class"),
            "suspect": issue | outlier,
            "fold": scored.fold,
            "p_dog": scored.p_dog,
            "label_quality": quality,
            "label_issue": issue,
            "ood_score": scored.ood,
            "outlier": scored.outlier,
            "edge_ood_score": scored.edge_ood,
            "edge_outlier": scored.edge_outlier,
        }
    )
    return photos.sort_values(["score", "label_quality"], ascending=[False, True], kind="stable").reset_index(drop=True)


def contact_sheet(
    source: str | os.PathLike, suspects: pd.DataFrame, count: int = 48, columns: int = 8, tile: int = 160
) -> np.ndarray:
    """An RGB picture of the top `count` suspects, each with its file name, given label, suggestion and score."""
    reader = Source(source)
    tiles = []
    for row in suspects.head(count).itertuples():
        try:
            img = decode_preview(reader.read(row.file), max_side=tile)
        except ImageError:
            img = np.full((tile, tile, 3), 200, np.uint8)
        canvas = np.full((tile + 44, tile, 3), 255, np.uint8)
        top, left = (tile - img.shape[0]) // 2, (tile - img.shape[1]) // 2
        canvas[top : top + img.shape[0], left : left + img.shape[1]] = img
        lines = [Path(row.file).name, f"{row.given_label} -> {row.suggested}", f"{row.score:.4f} {row.kind}"]
        for i, text in enumerate(lines):
            at = (3, tile + 12 + 14 * i)
            cv2.putText(canvas, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(cv2.copyMakeBorder(canvas, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255)))
    if not tiles:
        return np.full((tile, tile, 3), 255, np.uint8)
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    return np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])


# The finder's last result per dataset, on disk beside the dataset's corrections, for any session and after a restart.

SAVED_COLUMNS = [*CSV_COLUMNS, "p_dog"]


@dataclass(frozen=True)
class SavedIssues:
    """A finished search as saved: its suspects (most suspect first) and what it was computed on, and when."""

    suspects: pd.DataFrame  # SAVED_COLUMNS
    meta: dict  # finished_at, source, fingerprint, photos, counts, accuracy, fold_accuracy, wall_time_s, config


def issues_paths(fingerprint: str, root: Path | None = None) -> tuple[Path, Path]:
    """The saved suspects CSV and its JSON record of a dataset, beside its corrections file."""
    path = corrections_path(fingerprint, root)
    return path.with_name(f"{fingerprint}.label-issues.csv"), path.with_name(f"{fingerprint}.label-issues.json")


def save_issues(result: LabelIssues, root: Path | None = None) -> Path:
    """Save a finished search (the CSV first, then its record, each atomically); returns the record's path."""
    csv_path, meta_path = issues_paths(result.fingerprint, root)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    suspects = result.photos.loc[result.photos.suspect, SAVED_COLUMNS]
    atomic_write(csv_path, lambda tmp: suspects.to_csv(tmp, index=False, float_format="%.6f"))
    meta = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": result.source,
        "fingerprint": result.fingerprint,
        "photos": len(result.photos),
        "counts": result.counts(),
        "accuracy": result.accuracy,
        "fold_accuracy": result.fold_accuracy,
        "wall_time_s": result.wall_time_s,
        "config": asdict(result.config),
    }
    return atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8"))


def load_issues(fingerprint: str, root: Path | None = None) -> SavedIssues | None:
    """The last saved search of this dataset, or None if there is none (or it cannot be read)."""
    csv_path, meta_path = issues_paths(fingerprint, root)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        suspects = pd.read_csv(csv_path, dtype={"file": str, "given_label": str, "suggested": str, "kind": str})
    except (OSError, ValueError):  # none yet, or damaged: the page offers a new search
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint or list(suspects) != SAVED_COLUMNS:
        return None
    return SavedIssues(suspects, meta)
