"""The best preset and the shipped default model: builds, trains, round-trips, and stays accurate."""

from __future__ import annotations

import hashlib
import json

import keras
import numpy as np
import pytest

from core import config
from core.data import Source
from core.model import load_model, model_pipeline
from core.pipeline import PipelineConfig, preprocess
from core.predict import Predictor, evaluate
from core.settings import TrainConfig
from core.train import train


@pytest.fixture(scope="module")
def shipped_meta() -> dict:
    assert config.DEFAULT_MODEL.exists(), "models/default.keras must be committed"
    return json.loads(config.DEFAULT_MODEL_META.read_text())


def test_best_preset_trains_one_epoch_and_round_trips_with_identical_predictions(small_zip, tmp_path):
    result = train(small_zip, TrainConfig.for_preset("best", epochs=1, limit=128), runs_dir=tmp_path)
    assert result.status == "finished"
    assert np.isfinite(result.history.loss.iloc[0])

    saved = load_model(result.run.model_path)
    best = TrainConfig.for_preset("best").pipeline
    assert model_pipeline(saved) == best
    x = np.random.default_rng(0).random((8, *best.input_shape), np.float32)
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
    assert shipped_meta["metrics"]["accuracy"] >= 0.95 and shipped_meta["metrics"]["calibration_error"] <= 0.015
    assert shipped_meta["calibration"]["folded"]  # fitted on held-out photos it no longer reports on
    assert not set(shipped_meta["calibration_names"]) & set(shipped_meta["validation_names"])
    for key in ("fingerprint", "source"):
        assert shipped_meta["dataset"][key]
    assert {"tensorflow", "keras", "opencv"} <= set(shipped_meta["versions"])


def test_the_best_preset_is_the_shipped_runs_settings_and_says_what_it_computed_in():
    # `train --preset best --out models/default.keras` is the whole recipe: no flag of the shipped run is missing.
    shipped = json.loads(config.DEFAULT_MODEL_META.read_text())
    assert TrainConfig.from_record(shipped["config"]) == TrainConfig.for_preset("best")
    assert shipped["precision"] in ("float32", "bfloat16")


def test_the_shipped_model_is_the_default_of_the_cli_the_api_and_the_dashboard(tiny_model, monkeypatch):
    from core import registry
    from core.runs import RunStore

    # A runs folder with a trained run in it: the shipped model still comes first, for every front end.
    monkeypatch.setattr(config, "RUNS_DIR", tiny_model.parent.parent)
    assert [run.model_path for run in RunStore().with_models()] == [tiny_model]
    assert registry.default_model().path == config.DEFAULT_MODEL  # the one rule of the CLI, the API and the dashboard


def test_shipped_model_is_at_least_95_percent_accurate_on_its_fixed_validation_sample(shipped_meta, train_zip):
    sample = shipped_meta["regression_sample"]
    assert len(sample) == 400
    assert set(sample) <= set(shipped_meta["validation_names"])
    assert shipped_meta["dataset"]["fingerprint"] == Source(train_zip).fingerprint()
    result = evaluate(Predictor(config.DEFAULT_MODEL), train_zip, names=sample)
    assert result.n == 400 and result.skipped == 0
    # 97.45% on its 2,000 held-out photos and 96.0% on these 400: 95% sits below the 95% interval of 400 photos
    # around 97.45% (about ±1.6 points), so only a real regression fails it.
    assert result.accuracy >= 0.95, result.per_class


def test_predictor_gives_unsure_photos_a_second_mirrored_look_by_default(shipped_meta, train_zip):
    # Real photos the model never trained on; the shipped model is unsure about roughly one in seven of them.
    src = Source(train_zip)
    names = shipped_meta["regression_sample"][::2]
    predictor = Predictor(config.DEFAULT_MODEL)
    assert predictor.tta == "unsure"
    x = np.stack([preprocess(src.read(name), predictor.pipeline) for name in names])
    model = load_model(config.DEFAULT_MODEL)  # the model as saved, batch norm and all
    single = np.asarray(model(x, training=False)).ravel()
    mirrored = np.asarray(model(x[:, :, ::-1, :].copy(), training=False)).ravel()
    averaged = (single + mirrored) / 2

    off = Predictor(config.DEFAULT_MODEL, tta="off").probabilities(x)
    np.testing.assert_allclose(off, single, atol=1e-5)
    np.testing.assert_allclose(Predictor(config.DEFAULT_MODEL, tta="all").probabilities(x), averaged, atol=1e-5)
    unsure = np.abs(off - 0.5) < config.UNSURE_MARGIN
    assert 0 < unsure.sum() < len(names) / 2, "the sample should hold both confident and unsure photos"
    np.testing.assert_allclose(predictor.probabilities(x), np.where(unsure, averaged, single), atol=1e-5)


def test_predictor_refuses_an_unknown_tta_mode():
    with pytest.raises(ValueError, match="tta must be one of off, unsure, all"):
        Predictor(config.DEFAULT_MODEL, tta="sometimes")


def test_shipped_metadata_records_the_accuracy_users_get_and_where_it_was_measured(shipped_meta):
    metrics = shipped_meta["metrics"]
    # The calibration was fitted on photos held out of training, not on the ones that report the accuracy.
    assert shipped_meta["n_val"] == len(shipped_meta["validation_names"]) == 2000
    assert shipped_meta["n_calibration"] == len(shipped_meta["calibration_names"]) == 720
    assert metrics["accuracy"] >= metrics["best_val_accuracy"] - 0.01
    assert metrics["measured_on"] == f"the {shipped_meta['n_val']:,} photos of train.zip held out from training"
    assert metrics["accuracy_n"] == shipped_meta["n_val"] == sum(map(sum, metrics["confusion"]))
    assert metrics["predicted"].startswith("as the app predicts") and "TTA" not in metrics["predicted"]
