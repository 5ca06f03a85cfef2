"""Training: seed defaults, a deterministic split, plain-callable progress, cancellation and the saved run."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest

from core import config
from core.data import load_dataset
from core.errors import SettingsError
from core.model import build_model, load_model, model_pipeline
from core.pipeline import PipelineConfig, to_model_input
from core.settings import NetConfig, TrainConfig
from core.train import ProgressEvent, split_indices, train

SLICE = 120  # images: 96 to train (3 batches of 32) and 24 to validate, so each epoch takes well under a second


@pytest.fixture(scope="module")
def small_slice(small_zip):
    return load_dataset(small_zip, limit=SLICE, seed=42, cache_dir=False)


@pytest.fixture(scope="module")
def finished_run(small_zip, tmp_path_factory):
    """A real 2-epoch seed run from the zip itself (fresh cache, so decoding reports progress too)."""
    events: list[ProgressEvent] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "CACHE_DIR", tmp_path_factory.mktemp("train-cache"))
        result = train(
            small_zip,
            TrainConfig(epochs=2, limit=SLICE),
            progress=events.append,
            runs_dir=tmp_path_factory.mktemp("train-runs"),
        )
    return result, events


# --- configuration and split ------------------------------------------------------------------------------------


def test_train_config_defaults_reproduce_the_seed_tutorial():
    cfg = TrainConfig()
    assert (cfg.preset, cfg.epochs, cfg.batch_size, cfg.validation_split, cfg.learning_rate) == (
        "seed",
        10,
        32,
        0.2,
        1e-3,
    )
    assert cfg.pipeline == PipelineConfig(80, "grayscale")
    assert not cfg.augment and not cfg.early_stopping
    assert TrainConfig.for_preset("seed") == cfg


def test_for_preset_takes_the_presets_settings_and_applies_overrides():
    improved = TrainConfig.for_preset("improved")
    assert (improved.image_size, improved.color_mode, improved.augment, improved.early_stopping) == (
        96,
        "rgb",
        True,
        True,
    )
    assert improved.net == NetConfig("vgg_bn", (16, 32, 64, 128)) and improved.optimizer.name == "adamw"
    tuned = TrainConfig.for_preset("best", epochs=3, limit=500, time_budget_min=None, **{"net.stem": 0})
    assert (tuned.epochs, tuned.limit, tuned.time_budget_min, tuned.net.stem) == (3, 500, None, 0)
    assert tuned.net.widths == (32, 64, 128, 256) and tuned.optimizer.weight_decay == 0.05  # the rest: the preset's
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.for_preset("enormous")


@pytest.mark.parametrize("name", ["not_a_field", "net.depth", "optimizer.momentum", "widths"])
def test_an_unknown_override_is_an_error_not_silently_dropped(name):
    with pytest.raises(SettingsError, match=f"unknown setting '{name}'"):
        TrainConfig.for_preset("seed", **{name: 1})
    with pytest.raises(SettingsError, match="optimizer is a whole OptimizerConfig"):
        TrainConfig.for_preset("seed", optimizer="adamw")


def test_a_setting_outside_its_choices_is_refused():
    with pytest.raises(SettingsError, match="color_mode 'sepia' is not one of grayscale, rgb"):
        TrainConfig(color_mode="sepia")
    for ema in (1.0, -0.1):  # an average that never moves, or one that overshoots
        with pytest.raises(SettingsError, match=f"ema {ema!r} is the share of the average kept each step"):
            TrainConfig.for_preset("best", **{"optimizer.ema": ema})
    with pytest.raises(SettingsError, match="kind 'resnet'"):
        TrainConfig.for_preset("best", **{"net.kind": "resnet"})
    with pytest.raises(SettingsError, match=r"a count per width \(4\), not vgg_bn with 3"):
        TrainConfig.for_preset("best", **{"net.convs": (2, 2, 3)})
    with pytest.raises(SettingsError, match="sam -0.05 is how far uphill"):
        TrainConfig.for_preset("best", **{"optimizer.sam": -0.05})
    for mutual in ({"optimizer.mutual": -1.0}, {"optimizer.mutual": 1.0, "optimizer.sam": 0.05}):
        with pytest.raises(SettingsError, match="weighs the fit to a peer net: 0 .off. or more, not with sam"):
            TrainConfig.for_preset("best", **mutual)
    for swa in ({"optimizer.swa": 1.0}, {"optimizer.swa": -0.25}, {"optimizer.swa": 0.25, "optimizer.ema": 0.99}):
        with pytest.raises(SettingsError, match="the last share of the time budget averaged: 0 to below 1, no ema"):
            TrainConfig.for_preset("best", **swa)
    with pytest.raises(SettingsError, match="swa averages the last share of a time budget"):
        TrainConfig.for_preset("improved", **{"optimizer.swa": 0.25})
    with pytest.raises(SettingsError, match="convs needs the vgg_bn net"):
        TrainConfig.for_preset("seed", **{"net.convs": (1, 1)})


def test_a_run_json_saved_before_the_tree_held_the_net_loads_with_its_presets():
    # The config of the default.json shipped until 2026-12-02, which predates the embedded settings: it was trained
    # with the best preset's net and optimiser, and with the defaults of the settings added since.
    old = {
        "preset": "best",
        "epochs": 50,
        "batch_size": 64,
        "validation_split": 0.1,
        "learning_rate": 0.002,
        "image_size": 96,
        "color_mode": "rgb",
        "augment": True,
        "early_stopping": False,
        "patience": 4,
        "seed": 42,
        "limit": None,
        "time_budget_min": 50,
        "train_scales": [2 / 3, 5 / 6, 1],
    }
    best = TrainConfig.for_preset("best")
    assert TrainConfig.from_record(old) == best.changed(
        {
            "epochs": 50,
            "time_budget_min": 50,
            "calibration_split": 0.0,
            "precision": "float32",
            "image_size": 96,  # the best preset of the day: 96 px last (112 since the evening of 2026-12-02)
            "train_scales": (2 / 3, 5 / 6, 1),
        }
    )
    assert TrainConfig.from_record({"preset": "seed", "epochs": 3}) == TrainConfig(epochs=3)
    record = json.loads(json.dumps(dataclasses.asdict(TrainConfig.for_preset("best", **{"net.stem": 8}))))
    assert TrainConfig.from_record(record).net.stem == 8  # a whole tree comes back as it was saved


def test_split_is_stratified_disjoint_and_the_same_for_the_same_seed():
    labels = np.array([0] * 70 + [1] * 30)
    train_idx, val_idx = split_indices(labels, 0.2, seed=7)
    assert len(set(train_idx) & set(val_idx)) == 0
    assert sorted([*train_idx, *val_idx]) == list(range(100))
    assert np.bincount(labels[val_idx]).tolist() == [14, 6]  # 20% of each class
    again_train, again_val = split_indices(labels, 0.2, seed=7)
    np.testing.assert_array_equal(again_val, val_idx)
    np.testing.assert_array_equal(again_train, train_idx)
    _, other_val = split_indices(labels, 0.2, seed=8)
    assert set(other_val) != set(val_idx)


def test_a_validation_split_of_zero_trains_on_everything():
    train_idx, val_idx = split_indices(np.array([0, 1] * 10), 0.0, seed=0)
    assert len(train_idx) == 20 and len(val_idx) == 0


# --- a finished run -----------------------------------------------------------------------------------------------


def test_progress_reaches_a_plain_callable_as_load_start_batch_epoch_end(finished_run):
    result, events = finished_run
    kinds = [kind for kind, _ in itertools.groupby(e.kind for e in events)]
    assert kinds == ["load", "start", "batch", "epoch", "batch", "epoch", "end"]

    load = [e for e in events if e.kind == "load"]
    assert load[-1].batch == load[-1].batches == SLICE
    start = next(e for e in events if e.kind == "start")
    assert (start.logs["n_train"], start.logs["n_val"], start.epochs, start.batches) == (96, 24, 2, 3)
    batches = [(e.epoch, e.batch, e.batches) for e in events if e.kind == "batch"]
    assert batches == [(epoch, b, 3) for epoch in (1, 2) for b in (1, 2, 3)]
    assert all("loss" in e.logs for e in events if e.kind == "batch")
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(epochs[0].logs)
    end = events[-1]
    assert end.logs["run"] == str(result.run.path)
    elapsed = [e.elapsed for e in events if e.kind != "load"]
    assert elapsed == sorted(elapsed)


def test_a_run_folder_holds_the_model_history_and_metadata(finished_run, small_zip):
    result, _ = finished_run
    assert result.status == "finished"
    assert sorted(p.name for p in result.run.path.iterdir()) == [
        *("batches.csv", "history.csv", "model.keras", "run.json")
    ]

    history = pd.read_csv(result.run.path / "history.csv")
    assert history.epoch.tolist() == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.columns)

    meta = json.loads((result.run.path / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["config"] == json.loads(json.dumps(dataclasses.asdict(TrainConfig(epochs=2, limit=SLICE))))
    assert meta["config"]["net"] == {
        "kind": "seed",
        "widths": [64, 64],
        "stem": 0,
        "se": 0,
        "residual": False,
        "convs": [],
        "whiten": False,
    }  # the whole settings tree
    assert meta["config"]["optimizer"] == {
        "name": "adam",
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "ema": 0.0,
        "swa": 0.0,
        "bias_rate": 1.0,
        "sam": 0.0,
        "mutual": 0.0,
    }
    assert meta["dataset"]["fingerprint"] == load_dataset(small_zip, limit=SLICE, seed=42, cache_dir=False).fingerprint
    assert (meta["n_images"], meta["n_train"], meta["n_val"]) == (SLICE, 96, 24)
    assert meta["class_names"] == ["cat", "dog"]
    assert meta["pipeline"]["size"] == 80 and meta["pipeline"]["color_mode"] == "grayscale"
    metrics = meta["metrics"]
    assert 0.0 <= metrics["best_val_accuracy"] <= 1.0
    assert metrics["best_val_loss"] == pytest.approx(history.val_loss.min())
    assert metrics["epochs_completed"] == 2
    assert metrics["train_images_per_s"] > 0
    assert meta["wall_time_s"] > 0
    assert set(meta["versions"]) >= {"python", "tensorflow", "keras", "opencv", "numpy"}
    assert tuple(int(v) for v in meta["versions"]["keras"].split(".")[:3]) >= (3, 15, 1)


def test_a_run_records_the_accuracy_the_app_gets_on_its_held_out_photos(finished_run, small_slice):
    from core.predict import Predictor

    result, _ = finished_run
    metrics = result.run.meta["metrics"]
    _, val_idx = split_indices(small_slice.y, 0.2, 42)
    # Measured again here, as the app predicts (its second, mirrored look at unsure photos included).
    prob = Predictor(result.run.model_path).probabilities(to_model_input(small_slice.x[val_idx]))
    right = (prob >= 0.5).astype(int) == small_slice.y[val_idx]
    assert metrics["accuracy"] == pytest.approx(right.mean()) and metrics["accuracy_n"] == 24
    assert metrics["measured_on"] == "the 24 photos of small-train.zip held out from training"
    assert sum(map(sum, metrics["confusion"])) == 24 and 0 <= metrics["calibration_error"] <= 1


def test_every_batch_keeps_its_own_loss_and_learning_rate(finished_run):
    result, events = finished_run
    batches = result.run.batches
    assert len(batches) == 2 * 3 and batches.epoch.tolist() == [1, 1, 1, 2, 2, 2]  # 96 photos in batches of 32
    assert (batches.learning_rate > 0).all() and batches.learning_rate.iloc[-1] <= batches.learning_rate.iloc[0]
    # Keras logs the epoch's running mean; the mean of the batches' own losses is that epoch's last running mean.
    for _, epoch in batches.groupby("epoch"):
        assert epoch.batch_loss.mean() == pytest.approx(epoch.loss.iloc[-1], rel=1e-4)
        assert epoch.batch_loss.iloc[0] == pytest.approx(epoch.loss.iloc[0])
    logged = [e.logs["batch_loss"] for e in events if e.kind == "batch"]
    assert logged == pytest.approx(batches.batch_loss.tolist())  # what the live chart drew is what was saved


def test_the_saved_model_is_the_best_epoch_by_validation_loss_and_carries_its_pipeline(finished_run, small_slice):
    result, _ = finished_run
    model = load_model(result.run.model_path)
    assert model_pipeline(model) == PipelineConfig()
    meta = result.run.meta
    assert meta["metrics"]["best_epoch"] == int(result.history.val_loss.idxmin()) + 1
    # The validation images are the seed's deterministic split, recorded by name.
    _, val_idx = split_indices(small_slice.y, 0.2, 42)
    assert sorted(meta["validation_names"]) == sorted(small_slice.names[val_idx].tolist())


def _epoch_end_weights(small_slice, ema: float):
    """Two real epochs of the seed net on the slice's photos: the weights each epoch's end saw, those fit() left,
    the logged validation losses, and the model."""
    from core.callbacks import WeightAverage
    from core.model import build_model, compile_model

    keras = pytest.importorskip("keras")
    cfg = TrainConfig(optimizer=dataclasses.replace(TrainConfig().optimizer, ema=ema))
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(cfg), cfg, total_steps=None)
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: seen.append(model.get_weights()))
    callbacks = [WeightAverage(), record] if ema else [record]
    x, y = to_model_input(small_slice.x), small_slice.y.astype("float32")
    history = model.fit(x[:96], y[:96], validation_data=(x[96:], y[96:]), epochs=2, callbacks=callbacks, verbose=0)
    return seen, model.get_weights(), history.history["val_loss"], model, (x[96:], y[96:])


def test_a_weight_average_is_what_each_epoch_validates_and_keeps_while_the_raw_weights_train_on(small_slice):
    seen, raw, val_loss, model, (x_val, y_val) = _epoch_end_weights(small_slice, ema=0.9)
    assert not all(np.array_equal(a, b) for a, b in zip(seen[-1], raw, strict=True))  # fit() ends on the raw weights
    for weights, logged in zip(seen, val_loss, strict=True):  # what the checkpoint saw is what was validated
        model.set_weights(weights)
        assert model.evaluate(x_val, y_val, verbose=0)[0] == pytest.approx(logged, rel=1e-5)
    model.set_weights(raw)
    assert model.evaluate(x_val, y_val, verbose=0)[0] != pytest.approx(val_loss[-1], rel=1e-5)
    # Without the setting, the epoch's end sees the very weights that train on.
    seen, raw, *_ = _epoch_end_weights(small_slice, ema=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(seen[-1], raw, strict=True))


@pytest.mark.slow
def test_a_run_with_a_weight_average_saves_the_average_it_validated_across_stages(small_zip, tmp_path):
    cfg = TrainConfig.for_preset(
        "improved", epochs=3, image_size=32, limit=SLICE, batch_size=16, train_scales=(0.5, 0.75, 1)
    ).changed({"optimizer.ema": 0.9, "early_stopping": False})
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "finished" and result.history["train_size"].tolist() == [16, 24, 32]
    assert _validation_loss(load_model(result.run.model_path), small_zip, cfg) == pytest.approx(
        result.run.meta["metrics"]["best_val_loss"], rel=1e-3
    )


def _validation_loss(model, small_zip, cfg: TrainConfig) -> float:
    """The model's plain cross-entropy on the slice's validation photos, as a run's split holds them out."""
    data = load_dataset(small_zip, cfg.pipeline, limit=SLICE, seed=42, cache_dir=False)
    _, val = split_indices(data.y, 0.2, 42)
    prob = model.predict(to_model_input(data.x[val]), verbose=0).reshape(-1).clip(1e-7, 1 - 1e-7)
    return float(-np.mean(data.y[val] * np.log(prob) + (1 - data.y[val]) * np.log(1 - prob)))


def _two_stage_run(small_zip, tmp_path, setting: str, value: float):
    """A short two-stage run of the improved preset with one optimizer setting; its config, result and saved model,
    checked to be Keras's own plain net at the run's size."""
    cfg = TrainConfig.for_preset(
        "improved", epochs=2, image_size=32, limit=SLICE, batch_size=16, train_scales=(0.5, 1)
    ).changed({f"optimizer.{setting}": value, "early_stopping": False})
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "finished" and result.history["train_size"].tolist() == [16, 32]
    assert result.run.meta["config"]["optimizer"][setting] == value
    model = load_model(result.run.model_path)  # safe mode: Keras's own classes only
    assert type(model).__name__ == "Functional" and model_pipeline(model) == PipelineConfig(32, "rgb")
    return cfg, result, model


@pytest.mark.slow
def test_a_sharpness_aware_run_trains_across_stages_and_saves_the_plain_net(small_zip, tmp_path):
    _two_stage_run(small_zip, tmp_path, "sam", 0.05)


@pytest.mark.slow
def test_a_mutual_learning_run_trains_two_nets_across_stages_and_saves_the_first(small_zip, tmp_path):
    cfg, result, model = _two_stage_run(small_zip, tmp_path, "mutual", 1.0)
    assert model.count_params() == build_model(cfg).count_params()  # one net's weights
    # The run validated the net it saved: the saved model's loss on the validation photos is the best epoch's.
    best = result.run.meta["metrics"]["best_val_loss"]
    assert _validation_loss(model, small_zip, cfg) == pytest.approx(best, rel=1e-3)


def _net_with_batch_norm():
    """A conv, a batch norm, global pooling and a sigmoid; its conv and its batch norm."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    conv = layers.Conv2D(4, 3, use_bias=False)(inputs)
    norm = layers.BatchNormalization(momentum=0.9)
    pooled = layers.GlobalAveragePooling2D()(layers.ReLU()(norm(conv)))
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(pooled)), keras.Model(inputs, conv), norm


def test_weight_averaging_validates_the_mean_of_the_epochs_begun_past_its_start_with_batch_norm_recomputed():
    from core.callbacks import StochasticWeightAverage, TimeBudget

    model, conv, norm = _net_with_batch_norm()
    rng = np.random.default_rng(0)
    photos = rng.random((40, 16, 16, 3), dtype=np.float32)
    budget = TimeBudget(100, 2e-3, hold_from=0.75)
    average = StochasticWeightAverage(budget, start=0.75)
    average.set_model(model)
    average.feeder = [(photos[:20], None), (photos[20:], None)]  # the stage's batches: (photos, labels)

    def epoch(spent: float) -> list:
        """An epoch begun this share into the budget that trains to random weights, then validates."""
        budget.started = time.time() - spent * budget.budget_s
        average.on_epoch_begin(0)
        trained = [rng.normal(size=variable.shape).astype("float32") for variable in model.trainable_variables]
        for variable, value in zip(model.trainable_variables, trained, strict=True):
            variable.assign(value)
        average.on_test_begin()
        return trained

    def trainable() -> list:
        return [variable.numpy() for variable in model.trainable_variables]

    untouched = epoch(0.5)  # begun before the start: validates its own weights and batch norm
    assert all(np.array_equal(a, b) for a, b in zip(trainable(), untouched, strict=True))
    assert np.array_equal(norm.moving_mean.numpy(), np.zeros(4))
    joined = [epoch(0.8), epoch(0.85), epoch(0.9)]
    mean = [sum(weights) / 3 for weights in zip(*joined, strict=True)]
    assert all(np.allclose(a, b) for a, b in zip(trainable(), mean, strict=True))
    # Batch norm's statistics are the mean over the two batches of their statistics under the averaged conv.
    features = [conv(photos[:20]).numpy(), conv(photos[20:]).numpy()]
    means, variances = ([getattr(f, stat)(axis=(0, 1, 2)) for f in features] for stat in ("mean", "var"))
    assert np.allclose(norm.moving_mean.numpy(), np.mean(means, axis=0), atol=1e-5)
    assert np.allclose(norm.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-4)
    assert norm.momentum == 0.9
    average.on_train_end()  # the raw weights, and their batch norm, train on
    assert all(np.array_equal(a, b) for a, b in zip(trainable(), joined[-1], strict=True))
    assert np.array_equal(norm.moving_mean.numpy(), np.zeros(4))


@pytest.mark.slow
def test_a_run_with_weight_averaging_holds_the_rate_and_saves_the_average_it_validated(small_zip, tmp_path):
    # A share of the budget that every epoch after the first begins past, whatever this machine's speed.
    cfg = TrainConfig.for_preset(
        "improved", epochs=3, image_size=32, limit=SLICE, batch_size=16, train_scales=(0.5, 1), time_budget_min=60
    ).changed({"optimizer.swa": 0.9999999, "early_stopping": False})
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "finished" and result.history["train_size"].tolist() == [16, 32, 32]
    assert result.history["learning_rate"].iloc[1] == result.history["learning_rate"].iloc[2]
    assert _validation_loss(load_model(result.run.model_path), small_zip, cfg) == pytest.approx(
        result.run.meta["metrics"]["best_val_loss"], rel=1e-3
    )


def test_training_needs_both_classes(small_slice, tmp_path):
    cats = dataclasses.replace(small_slice, x=small_slice.x[small_slice.y == 0], y=small_slice.y[small_slice.y == 0])
    with pytest.raises(ValueError, match="both cats and dogs"):
        train(cats, TrainConfig(epochs=1), runs_dir=tmp_path)


@pytest.mark.slow
def test_the_improved_preset_trains_at_a_small_size(small_slice, small_zip, tmp_path):
    cfg = TrainConfig.for_preset("improved", epochs=1, image_size=32, limit=64, batch_size=16)
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "finished"
    assert model_pipeline(load_model(result.run.model_path)) == PipelineConfig(32, "rgb")
    assert result.run.meta["config"]["preset"] == "improved"


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_amx():
    from core.hardware import training_precision

    assert training_precision("auto", frozenset({"avx512f", "amx_tile", "amx_bf16"})) == "bfloat16"
    # AVX-512 BF16 without AMX, or nothing: TensorFlow would emulate bfloat16, slower than float32
    assert training_precision("auto", frozenset({"avx512f", "avx512_bf16"})) == "float32"
    assert training_precision("auto", frozenset()) == "float32"
    assert training_precision("bfloat16", frozenset()) == "bfloat16"  # asked for by name: taken as asked
    assert TrainConfig().precision == "float32"  # the seed trains as the tutorial did


def test_a_bfloat16_run_trains_in_mixed_precision_and_saves_a_float32_model(small_zip, tmp_path):
    from core.model import build_model

    cfg = TrainConfig.for_preset("improved", epochs=1, image_size=32, limit=64, batch_size=16, precision="bfloat16")
    net = build_model(cfg, any_size=True, precision="bfloat16")
    computes = {layer.name: layer.compute_dtype for layer in net.layers}
    assert computes["conv1_1"] == "bfloat16" and computes["prob_dog"] == "float32"
    assert {w.dtype for w in net.weights} == {"float32"}  # mixed: the weights themselves stay float32
    events: list[ProgressEvent] = []
    result = train(small_zip, cfg, progress=events.append, runs_dir=tmp_path)
    assert result.status == "finished"
    assert result.run.meta["precision"] == "bfloat16"
    assert next(e for e in events if e.kind == "start").logs["precision"] == "bfloat16"
    saved = load_model(result.run.model_path)
    assert {layer.compute_dtype for layer in saved.layers} == {"float32"}  # predicts alike on every CPU
    with pytest.raises(SettingsError, match="float32"):
        build_model(TrainConfig(), precision="bfloat16")


@pytest.mark.slow
def test_a_time_budget_anneals_the_rate_over_wall_time_and_ends_training(small_zip, tmp_path):
    cfg = TrainConfig.for_preset(
        "improved", epochs=200, image_size=32, batch_size=16, limit=SLICE, early_stopping=False, time_budget_min=0.1
    )
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "time-budget"
    assert 1 <= result.metrics["epochs_completed"] < 200
    epoch_rates = result.history["learning_rate"].to_numpy()
    assert (np.diff(epoch_rates) <= 0).all()
    # Every batch trains at the rate of its moment: however few epochs this machine fits into the budget, the
    # batches run down the cosine.
    rates = pd.read_csv(result.run.batches_path)["learning_rate"].to_numpy()
    assert (np.diff(rates) <= 0).all() and rates[-1] < rates[0]
    assert rates[-1] < cfg.learning_rate * 0.2  # near the end of the cosine
    assert result.run.meta["status"] == "time-budget"
    assert load_model(result.run.model_path) is not None


@pytest.mark.slow
def test_progressive_resizing_trains_in_stages_and_saves_a_model_at_the_full_size(small_zip, tmp_path):
    cfg = TrainConfig.for_preset(
        "improved", epochs=3, image_size=32, limit=SLICE, batch_size=16, train_scales=(0.5, 0.75, 1)
    )
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "finished"
    assert result.history["train_size"].tolist() == [16, 24, 32]  # one epoch per stage, smallest first
    assert result.history["epoch"].tolist() == [1, 2, 3]
    model = load_model(result.run.model_path)
    assert model.input_shape == (None, 32, 32, 3)
    assert model_pipeline(model) == PipelineConfig(32, "rgb")
    assert result.run.meta["config"]["train_scales"] == [0.5, 0.75, 1]


def test_a_whitened_stem_is_fitted_before_training_and_stays_frozen_through_it(small_zip, tmp_path):
    cfg = TrainConfig.for_preset(
        "best", epochs=2, image_size=32, limit=SLICE, batch_size=16, train_scales=(0.5, 1), time_budget_min=None
    ).changed({"net.whiten": True, "calibration_split": 0})
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "finished" and result.history["train_size"].tolist() == [16, 32]
    model = load_model(result.run.model_path)
    stem, kernel = model.get_layer("stem_conv"), np.asarray(model.get_layer("stem_conv").kernel)
    assert not stem.trainable
    # The whitening bank's two signs of each direction, as fitted: a random or a trained kernel is never so.
    np.testing.assert_array_equal(kernel[..., 8:], -kernel[..., :8])
    assert not np.allclose(np.asarray(model.get_layer("stem_bn").gamma), 1)  # the batch norm after it trained
    assert result.run.meta["config"]["net"]["whiten"] is True


@pytest.mark.slow
def test_progressive_resizing_shares_a_time_budget_between_stages(small_zip, tmp_path):
    cfg = TrainConfig.for_preset(
        "improved",
        epochs=500,
        image_size=32,
        batch_size=16,
        limit=SLICE,
        early_stopping=False,
        time_budget_min=0.25,
        train_scales=(0.5, 1),
    )
    result = train(small_zip, cfg, runs_dir=tmp_path)
    assert result.status == "time-budget"
    sizes = result.history["train_size"].tolist()
    assert sizes == sorted(sizes) and set(sizes) == {16, 32}  # the small stage first, then the full size
    halfway = result.history["elapsed_s"][result.history["train_size"] == 16].max()
    assert halfway < result.history["elapsed_s"].max()
    rates = result.history["learning_rate"].to_numpy()
    assert (np.diff(rates) <= 0).all()  # one cosine across both stages
    assert load_model(result.run.model_path).input_shape == (None, 32, 32, 3)


def test_the_seed_net_cannot_train_at_several_sizes(small_slice, tmp_path):
    with pytest.raises(ValueError, match="one size"):
        train(small_slice, TrainConfig(epochs=2, train_scales=(0.5, 1)), runs_dir=tmp_path)


def test_the_time_budget_rate_is_a_cosine_from_the_rate_to_one_percent_of_it():
    from core.callbacks import TimeBudget

    budget = TimeBudget(100, 2e-3)
    assert budget.rate(0) == pytest.approx(2e-3)
    assert budget.rate(50) == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5))
    assert budget.rate(100) == budget.rate(1e6) == pytest.approx(2e-5)


def test_the_time_budget_rate_holds_from_where_weight_averaging_starts():
    from core.callbacks import TimeBudget

    held, plain = TimeBudget(100, 2e-3, hold_from=0.75), TimeBudget(100, 2e-3)
    assert held.rate(0) == plain.rate(0) and held.rate(50) == plain.rate(50)
    assert held.rate(75) == held.rate(90) == held.rate(1e6) == pytest.approx(plain.rate(75))
    assert plain.rate(90) < plain.rate(75)


def test_the_time_budget_warms_sgd_up_over_the_first_fifth_of_the_time():
    from core.callbacks import TimeBudget

    budget = TimeBudget(100, 0.05, "sgd")
    assert [budget.rate(t) for t in (0, 10, 20)] == pytest.approx([0.01, 0.03, 0.05])
    assert budget.rate(100) == budget.rate(1e6) == pytest.approx(5e-4)


def test_the_best_preset_trains_to_a_budget_under_the_hour():
    cfg = TrainConfig.for_preset("best")
    assert cfg.time_budget_min is not None and cfg.time_budget_min <= 57  # decode, validation and saving: < 60 min
    assert cfg.augment and cfg.pipeline == PipelineConfig(112, "rgb")  # 64, 88, then 112 px
    assert TrainConfig.for_preset("seed").time_budget_min is None


# --- cancellation -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stop_from_another_thread_keeps_the_best_model_so_far(small_slice, tmp_path):
    cancel = threading.Event()
    first_epoch_done = threading.Event()
    events: list[ProgressEvent] = []
    checkpoint_after_epoch_1 = tmp_path / "epoch1.keras"
    runs = tmp_path / "runs"

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "epoch" and event.epoch == 1:
            shutil.copy(next(runs.glob("*/model.keras")), checkpoint_after_epoch_1)
            first_epoch_done.set()
            assert cancel.wait(60)  # hold training here until the "UI" thread presses Stop

    outcome: dict = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            result=train(small_slice, TrainConfig(epochs=5), progress=progress, cancel=cancel, runs_dir=runs)
        )
    )
    worker.start()
    assert first_epoch_done.wait(120)
    cancel.set()
    worker.join(120)
    result = outcome["result"]  # trained from an already-loaded dataset

    assert result.status == "stopped"
    assert result.run.meta["n_images"] == SLICE
    assert result.run.meta["status"] == "stopped"
    assert len(result.history) == 1 and result.metrics["epochs_completed"] == 1
    assert [e.epoch for e in events if e.kind == "batch" and e.epoch > 1] == [2]  # stopped after one more batch
    assert not any(e.kind == "epoch" and e.epoch > 1 for e in events)
    kept, best = load_model(result.run.model_path), load_model(checkpoint_after_epoch_1)
    for a, b in zip(kept.get_weights(), best.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_stop_during_the_first_epoch_keeps_the_run_but_saves_no_model(small_slice, tmp_path, monkeypatch):
    from core.registry import choices
    from core.runs import RunStore, promote_run

    cancel = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.kind == "batch":
            cancel.set()

    result = train(small_slice, TrainConfig(epochs=3), progress=progress, cancel=cancel, runs_dir=tmp_path)
    assert result.status == "stopped"
    assert len(result.history) == 0 and result.metrics["epochs_completed"] == 0
    assert not result.run.model_path.exists() and not result.run.has_model
    assert len(result.run.batches) >= 1 and {"batch_loss", "learning_rate"} <= set(result.run.batches.columns)
    store = RunStore(tmp_path)
    assert [r.id for r in store.runs()] == [result.run.id]  # listed, with its settings
    assert store.with_models() == []  # but never offered as a model
    with pytest.raises(ValueError, match="before its first epoch"):
        promote_run(result.run, tmp_path / "default.keras")
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path)
    assert result.run.id not in [choice.key for choice in choices()]  # no front end offers or defaults to it
