"""The best preset and the shipped default model: builds, trains, round-trips, and stays accurate."""

from __future__ import annotations

import hashlib
import json

import keras
import numpy as np
import pytest

from core import config
from core.data import Source
from core.model import PRESETS, load_model, model_pipeline
from core.pipeline import PipelineConfig, preprocess
from core.predict import Predictor, evaluate
from core.train import TrainConfig, train


@pytest.fixture(scope="module")
def shipped_meta() -> dict:
    assert config.DEFAULT_MODEL.exists(), "models/default.keras must be committed"
    return json.loads(config.DEFAULT_MODEL_META.read_text())


def test_best_preset_trains_one_epoch_and_round_trips_with_identical_predictions(small_zip, tmp_path):
    result = train(small_zip, TrainConfig.for_preset("best", epochs=1, limit=128), runs_dir=tmp_path)
    assert result.status == "finished"
    assert np.isfinite(result.history.loss.iloc[0])

    saved = load_model(result.run.model_path)
    assert model_pipeline(saved) == PRESETS["best"].pipeline
    x = np.random.default_rng(0).random((8, *PRESETS["best"].pipeline.input_shape), np.float32)
    first = np.asarray(saved(x, training=False))
    again = np.asarray(load_model(result.run.model_path)(x, training=False))
    np.testing.assert_array_equal(first, again)


def test_shipped_model_loads_in_safe_mode_and_its_metadata_matches_the_file(shipped_meta):
    model = keras.models.load_model(config.DEFAULT_MODEL, safe_mode=True, compile=False)
    data = config.DEFAULT_MODEL.read_bytes()
    assert shipped_meta["model_sha256"] == hashlib.sha256(data).hexdigest()
    assert shipped_meta["model_bytes"] == len(data) <= 20 * 2**20
    assert shipped_meta["config"]["preset"] == "best"
    assert PipelineConfig(**{k: shipped_meta["pipeline"][k] for k in ("size", "color_mode")}) == model_pipeline(model)
    assert shipped_meta["metrics"]["best_val_accuracy"] >= 0.9
    for key in ("fingerprint", "source"):
        assert shipped_meta["dataset"][key]
    assert {"tensorflow", "keras", "opencv"} <= set(shipped_meta["versions"])


def test_shipped_model_is_the_default_everywhere():
    from core.runs import default_model_path

    assert default_model_path() == config.DEFAULT_MODEL


def test_shipped_model_is_at_least_90_percent_accurate_on_its_fixed_validation_sample(shipped_meta, train_zip):
    sample = shipped_meta["regression_sample"]
    assert len(sample) == 400
    assert set(sample) <= set(shipped_meta["validation_names"])
    assert shipped_meta["dataset"]["fingerprint"] == Source(train_zip).fingerprint()
    result = evaluate(Predictor(config.DEFAULT_MODEL), train_zip, names=sample)
    assert result.n == 400 and result.skipped == 0
    assert result.accuracy >= 0.90, result.per_class


def test_flip_tta_is_opt_in_and_averages_with_the_mirrored_photo(jpeg):
    plain = Predictor(config.DEFAULT_MODEL)
    assert not plain.flip_tta
    tta = Predictor(config.DEFAULT_MODEL, flip_tta=True)
    x = preprocess(jpeg, tta.pipeline)[None]
    expected = (plain.probabilities(x) + plain.probabilities(x[:, :, ::-1, :].copy())) / 2
    np.testing.assert_allclose(tta.probabilities(x), expected, rtol=1e-5, atol=1e-6)
