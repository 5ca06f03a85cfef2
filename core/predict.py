"""Prediction: a Predictor that loads a model once and labels bytes, files, folders and zips."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CLASS_NAMES, TTA_MODES, UNSURE_MARGIN
from core.data import iter_inputs
from core.pipeline import ImageError, decode, preprocess, to_model_input

# Below this many images one direct call beats model.predict()'s per-call iterator setup.
_DIRECT_CALL_MAX = 256


@dataclass(frozen=True)
class Prediction:
    """One file's outcome: a label and P(dog), or the reason it could not be predicted."""

    file: str
    label: str | None
    prob_dog: float | None
    error: str | None = None


class Predictor:
    """A loaded, warmed-up model that is safe to call from several threads.

    tta is the flip test-time augmentation: "off" predicts each photo once; "all" averages every photo with its
    mirror image (twice the inference); "unsure", the default, averages only the photos the first look is unsure
    about (P(dog) between 0.1 and 0.9). On the shipped model's validation split "unsure" mirrors about one photo
    in eight and scores what "all" scores (benchmarks/robustness.py): a confident first look is hardly ever
    overturned by its mirror image.
    """

    def __init__(self, model_path: str | os.PathLike, tta: str = "unsure"):
        import tensorflow as tf

        from core.model import inference_model, load_model, model_pipeline

        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
        self.path = Path(model_path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such model file")
        self.model = load_model(self.path)
        self.pipeline = model_pipeline(self.model)
        self.tta = tta
        net = inference_model(self.model)  # batch norm folded into the convolutions: same output, ~1.2x faster
        spec = tf.TensorSpec((None, *self.pipeline.input_shape), tf.float32)
        self._infer = tf.function(lambda x: net(x, training=False), input_signature=[spec])
        self._infer_mirrored = tf.function(
            lambda x: net(tf.reverse(x, axis=[2]), training=False), input_signature=[spec]
        )
        # Trace once here: concurrent first calls would otherwise race to build the functions.
        blank = np.zeros((1, *self.pipeline.input_shape), np.float32)
        self._infer(blank)
        if tta != "off":
            self._infer_mirrored(blank)
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return self.path.parent.name if self.path.name == "model.keras" else self.path.stem

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """P(dog) for a float32 batch already preprocessed to the model's input shape, with the predictor's TTA."""
        prob = self._run(self._infer, batch)
        second = np.abs(prob - 0.5) < UNSURE_MARGIN if self.tta == "unsure" else np.full(len(prob), self.tta == "all")
        if second.any():
            prob[second] = (prob[second] + self._run(self._infer_mirrored, batch[second])) / 2
        return prob

    @staticmethod
    def _run(infer, batch: np.ndarray) -> np.ndarray:
        out = [
            np.asarray(infer(batch[i : i + _DIRECT_CALL_MAX])).reshape(-1)
            for i in range(0, len(batch), _DIRECT_CALL_MAX)
        ]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _labelled(self, file: str, prob: float) -> Prediction:
        return Prediction(file, CLASS_NAMES[int(prob >= 0.5)], float(prob))

    def predict_bytes(self, data: bytes, file: str = "") -> Prediction:
        """Label one image given as bytes; a bad file gives an error, never an exception."""
        try:
            x = preprocess(data, self.pipeline)
        except ImageError as err:
            return Prediction(file, None, None, str(err))
        return self._labelled(file, self.probabilities(x[None])[0])

    def predict_path(self, path: str | os.PathLike) -> Prediction:
        """Label one image file."""
        return self.predict_many(iter_inputs([path]))[0]

    def _decoder_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2))
            return self._pool

    def predict_many(
        self,
        items: Iterable[tuple[str, Callable[[], bytes] | bytes | None, str | None]],
        batch_size: int = 128,
        progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Label many images: decode in parallel threads, infer in batches, per-file errors kept in order."""
        pool = self._decoder_pool()

        def prepare(item) -> np.ndarray | str:
            _, reader, refusal = item
            if refusal:
                return refusal
            try:  # uint8 here, scaled per batch below: a quarter of the bytes to copy into the batch
                return decode(reader() if callable(reader) else reader, self.pipeline)
            except ImageError as err:
                return str(err)

        results: list[Prediction] = []

        def finish(chunk: list, futures: list) -> None:
            prepared = [future.result() for future in futures]
            good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
            probs = self.probabilities(to_model_input(np.stack([prepared[i] for i in good]))) if good else []
            by_index = dict(zip(good, probs, strict=True))
            for i, (file, _, _) in enumerate(chunk):
                if i in by_index:
                    results.append(self._labelled(file, by_index[i]))
                else:
                    results.append(Prediction(file, None, None, prepared[i]))
            if progress:
                progress(len(results))

        # Decoding of one chunk overlaps inference on the one before it.
        pending: tuple[list, list] | None = None
        chunk: list = []
        for item in itertools.chain(items, [None]):
            if item is not None:
                chunk.append(item)
            if chunk and (len(chunk) >= batch_size or item is None):
                submitted = (chunk, [pool.submit(prepare, it) for it in chunk])
                if pending:
                    finish(*pending)
                pending, chunk = submitted, []
        if pending:
            finish(*pending)
        return results


def predictions_frame(predictions: list[Prediction]) -> pd.DataFrame:
    """Predictions as the CSV columns file,label,prob_dog,error."""
    return pd.DataFrame([asdict(p) for p in predictions], columns=["file", "label", "prob_dog", "error"])


def submission_frame(predictions: list[Prediction], fallback_label: int = 1) -> pd.DataFrame:
    """Kaggle's id,label (label = P(dog) rounded to 0/1), ids from names like test1/123.jpg.

    Kaggle rejects a submission that lacks an id, so a file that cannot be decoded still gets a row, with
    fallback_label; callers report those files.
    """
    rows = []
    for p in predictions:
        stem = Path(p.file).stem
        if stem.isdigit():
            label = fallback_label if p.error else int(p.prob_dog >= 0.5)
            rows.append({"id": int(stem), "label": label})
    return pd.DataFrame(rows, columns=["id", "label"]).sort_values("id").reset_index(drop=True)


@dataclass
class Evaluation:
    """Accuracy of a model on a labeled source."""

    accuracy: float
    n: int
    per_class: dict
    confusion: list  # rows: true cat, true dog; columns: predicted cat, predicted dog
    skipped: int
    predictions: pd.DataFrame


def evaluate(predictor: Predictor, source: str | os.PathLike, names: Iterable[str] | None = None) -> Evaluation:
    """Evaluate on every labeled image of a source (or only the given names)."""
    from core.data import Source, label_from_name

    src = Source(source)
    wanted = set(names) if names is not None else None
    items = [
        (it.name, (lambda n=it.name: src.read(n)), it.refusal)
        for it in src.listing
        if label_from_name(it.name) is not None and (wanted is None or it.name in wanted)
    ]
    preds = predictor.predict_many(items)
    frame = predictions_frame(preds)
    frame["true"] = [label_from_name(p.file) for p in preds]
    ok = frame[frame.error.isna()].copy()
    ok["pred"] = (ok.prob_dog >= 0.5).astype(int)
    confusion = [[int(((ok.true == t) & (ok.pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    per_class = {
        CLASS_NAMES[t]: float((ok[ok.true == t].pred == t).mean()) if (ok.true == t).any() else None for t in (0, 1)
    }
    accuracy = float((ok.pred == ok.true).mean()) if len(ok) else 0.0
    return Evaluation(accuracy, len(ok), per_class, confusion, int(frame.error.notna().sum()), frame)
