"""Prediction: a Predictor that loads a model once and labels bytes, files, folders and zips."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CLASS_NAMES, TTA_MODES, UNSURE_MARGIN
from core.data import Input, Source, label_from_name
from core.errors import ModelMissing, SettingsError
from core.metrics import AS_THE_APP_PREDICTS, Accuracy, expected_calibration_error, held_out, reliability_bins
from core.pipeline import ImageError, PipelineConfig, decode, to_model_input

# Below this many images one direct call beats model.predict()'s per-call iterator setup.
_DIRECT_CALL_MAX = 256


@dataclass(frozen=True)
class Prediction:
    """One file's outcome: a label and P(dog), or the reason it could not be predicted."""

    file: str
    label: str | None
    prob_dog: float | None
    error: str | None = None


class BasePredictor:
    """What every predictor shares: bytes, files, folders and zips to labels, decoded in threads, errors per file.

    A subclass sets path, pipeline, tta and engine and gives P(dog) of uint8 pixels (pixel_probabilities):
    Predictor runs the Keras model on TensorFlow, core.fastpath.FastPredictor its ONNX export on ONNX Runtime.
    """

    path: Path
    pipeline: PipelineConfig
    tta: str
    engine: str

    def __init__(self) -> None:
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return self.path.parent.name if self.path.name == "model.keras" else self.path.stem

    def pixel_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """P(dog) with the predictor's TTA for a uint8 batch decoded by core.pipeline.decode."""
        raise NotImplementedError

    def _labelled(self, file: str, prob: float) -> Prediction:
        return Prediction(file, CLASS_NAMES[int(prob >= 0.5)], float(prob))

    def predict_bytes(self, data: bytes, file: str = "") -> Prediction:
        """Label one image given as bytes; a bad file gives an error, never an exception."""
        try:
            x = decode(data, self.pipeline)
        except ImageError as err:
            return Prediction(file, None, None, str(err))
        return self._labelled(file, self.pixel_probabilities(x[None])[0])

    def _decoder_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2))
            return self._pool

    def predict_many(
        self,
        items: Iterable[Input],
        batch_size: int = 128,
        progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Label many images: decode in parallel threads, infer in batches, per-file errors kept in order."""
        pool = self._decoder_pool()
        results: list[Prediction] = []
        pending: tuple[list[Input], list] | None = None  # decoding of one chunk overlaps inference on the one before
        for chunk in itertools.chain(_chunks(items, batch_size), [None]):
            if pending:
                results += self._finish(*pending)
                if progress:
                    progress(len(results))
            pending = (chunk, [pool.submit(self._prepare, it) for it in chunk]) if chunk else None
        return results

    def _prepare(self, item: Input) -> np.ndarray | str:
        if item.refusal:
            return item.refusal
        try:  # uint8 here, scaled per batch in _finish: a quarter of the bytes to copy into the batch
            return decode(item.read(), self.pipeline)
        except ImageError as err:
            return str(err)

    def _finish(self, chunk: list[Input], futures: list) -> list[Prediction]:
        """One chunk's predictions, in order: its decoded photos inferred as one batch, the rest with their reason."""
        prepared = [future.result() for future in futures]
        good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        probs = self.pixel_probabilities(np.stack([prepared[i] for i in good])) if good else []
        by_index = dict(zip(good, probs, strict=True))
        return [
            self._labelled(item.name, by_index[i]) if i in by_index else Prediction(item.name, None, None, prepared[i])
            for i, item in enumerate(chunk)
        ]


def _chunks(items: Iterable[Input], size: int) -> Iterator[list[Input]]:
    chunk: list[Input] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Predictor(BasePredictor):
    """A loaded, warmed-up model that is safe to call from several threads.

    tta is the flip test-time augmentation: "off" predicts each photo once; "all" averages every photo with its
    mirror image (twice the inference); "unsure", the default, averages only the photos the first look is unsure
    about (P(dog) between 0.1 and 0.9). On the shipped model's validation split "unsure" mirrors about one photo
    in eight and scores what "all" scores (benchmarks/robustness.py): a confident first look is hardly ever
    overturned by its mirror image.
    """

    engine = "tensorflow"

    def __init__(self, model_path: str | os.PathLike, tta: str = "unsure"):
        import tensorflow as tf

        from core.model import inference_model, load_model, model_pipeline

        if tta not in TTA_MODES:
            raise SettingsError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
        self.path = Path(model_path)
        if not self.path.exists():
            raise ModelMissing(f"{self.path}: no such model file")
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
        super().__init__()

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

    def pixel_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """P(dog) with the predictor's TTA for a uint8 batch: scaled by core.pipeline.to_model_input, then run."""
        return self.probabilities(to_model_input(pixels))


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
    predictions: pd.DataFrame  # file, label, prob_dog, error, true

    @property
    def correct(self) -> int:
        return self.confusion[0][0] + self.confusion[1][1]

    def score(self, on: str) -> Accuracy:
        """The accuracy as the app predicts, with its interval, saying which photos it was measured on."""
        return Accuracy(self.correct, self.n, on)

    def class_scores(self) -> dict[str, Accuracy]:
        """Per class: how many of its photos were named right, out of how many."""
        return {
            name: Accuracy(self.confusion[t][t], sum(self.confusion[t]), f"the {sum(self.confusion[t]):,} {name}s")
            for t, name in enumerate(CLASS_NAMES)
        }

    @property
    def _scored(self) -> pd.DataFrame:
        return self.predictions[self.predictions.error.isna()]

    def calibration(self, n_bins: int = 5) -> pd.DataFrame:
        """Reliability bins: how confident the model was against how often it was right (core.metrics)."""
        return reliability_bins(self._scored.prob_dog, self._scored.true, n_bins)

    def calibration_error(self, n_bins: int = 5) -> float:
        """The expected calibration error over the reliability bins, from 0 (calibrated) up."""
        return expected_calibration_error(self._scored.prob_dog, self._scored.true, n_bins)

    def record(self, on: str) -> dict:
        """The fields a saved model's metrics keep about this evaluation (see core.metrics.recorded_accuracies)."""
        return {
            "accuracy": self.accuracy,
            "accuracy_n": self.n,
            "measured_on": on,
            "predicted": AS_THE_APP_PREDICTS,
            "confusion": self.confusion,
            "per_class": self.per_class,
            "calibration_error": self.calibration_error(),
        }


def scored(frame: pd.DataFrame) -> Evaluation:
    """An Evaluation from predictions (file, label, prob_dog, error) with each photo's true label (0 or 1)."""
    ok = frame[frame.error.isna()]
    pred, true = (ok.prob_dog.to_numpy(float) >= 0.5).astype(int), ok.true.to_numpy(int)
    confusion = [[int(((true == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    per_class = {
        name: confusion[t][t] / sum(confusion[t]) if sum(confusion[t]) else None for t, name in enumerate(CLASS_NAMES)
    }
    accuracy = float((pred == true).mean()) if len(ok) else 0.0
    return Evaluation(accuracy, len(ok), per_class, confusion, int(frame.error.notna().sum()), frame)


def evaluate(
    predictor: BasePredictor,
    source: str | os.PathLike,
    names: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluate on every labeled image of a source (or only the given names); progress(done, total) as it goes."""
    src = Source(source)
    wanted = set(names) if names is not None else None
    labeled = (it for it in src.listing if label_from_name(it.name) is not None)
    items = list(src.inputs(it for it in labeled if wanted is None or it.name in wanted))
    report = (lambda done: progress(done, len(items))) if progress else None
    preds = predictor.predict_many(items, progress=report)
    frame = predictions_frame(preds)
    frame["true"] = [label_from_name(p.file) for p in preds]
    return scored(frame)


def evaluate_pixels(
    predictor: BasePredictor, pixels: np.ndarray, labels: np.ndarray, names: Iterable[str]
) -> Evaluation:
    """Evaluate on photos already decoded by the pipeline (uint8, the model's input shape), e.g. a held-out split."""
    prob = predictor.pixel_probabilities(pixels) if len(pixels) else np.zeros(0, np.float32)
    frame = pd.DataFrame(
        {
            "file": list(names),
            "label": [CLASS_NAMES[int(p >= 0.5)] for p in prob],
            "prob_dog": prob.astype(float),
            "error": None,
            "true": np.asarray(labels, int),
        }
    )
    return scored(frame)


def held_out_record(
    model_path: str | os.PathLike, pixels: np.ndarray, labels: np.ndarray, names: Iterable[str], source: str
) -> dict:
    """A new model measured as the app predicts on the photos its training held out, as its metrics keep it."""
    result = evaluate_pixels(Predictor(model_path), pixels, labels, names)
    return result.record(held_out(result.n, Path(source).name))
