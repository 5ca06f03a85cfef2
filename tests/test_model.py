"""The Keras presets (seed and improved): architecture, compile settings, atomic save and safe load."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from core.errors import SettingsError
from core.gradcam import last_conv_layer
from core.model import (
    FusedBatchNorm,
    build_model,
    compile_model,
    fixed_size,
    inference_model,
    load_model,
    model_pipeline,
    save_model,
)
from core.pipeline import PipelineConfig
from core.settings import NetConfig, OptimizerConfig, TrainConfig

SEED, IMPROVED, BEST = (TrainConfig.for_preset(name) for name in ("seed", "improved", "best"))


def at(config: TrainConfig, pipeline: PipelineConfig) -> TrainConfig:
    return config.changed({"image_size": pipeline.size, "color_mode": pipeline.color_mode})


def layer_summary(model: keras.Model) -> list[tuple]:
    rows = []
    for layer in model.layers:
        cfg = layer.get_config()
        rows.append(
            (
                type(layer).__name__,
                cfg.get("filters") or cfg.get("units"),
                tuple(cfg["kernel_size"]) if "kernel_size" in cfg else tuple(cfg.get("pool_size") or ()),
                cfg.get("activation"),
            )
        )
    return rows


# --- seed ------------------------------------------------------------------------------------------------------


def test_seed_preset_is_exactly_the_tutorials_cnn():
    model = build_model(SEED)
    assert model.input_shape == (None, 80, 80, 1)
    assert layer_summary(model) == [
        ("Conv2D", 64, (3, 3), "relu"),
        ("MaxPooling2D", None, (2, 2), None),
        ("Conv2D", 64, (3, 3), "relu"),
        ("MaxPooling2D", None, (2, 2), None),
        ("Flatten", None, (), None),
        ("Dense", 64, (), "relu"),
        ("Dense", 1, (), "sigmoid"),
    ]
    # 640 + 36,928 (convs) + 18*18*64*64 + 64 (Dense 64) + 65 (Dense 1): the tutorial's own count at 80x80x1.
    assert model.count_params() == 1_364_801
    assert model.output_shape == (None, 1)


def test_seed_preset_keeps_the_tutorials_training_settings():
    assert SEED.pipeline == PipelineConfig(80, "grayscale")
    assert (SEED.epochs, SEED.batch_size, SEED.validation_split, SEED.learning_rate) == (10, 32, 0.2, 1e-3)
    assert (SEED.augment, SEED.early_stopping) == (False, False)
    assert SEED.net == NetConfig("seed", (64, 64)) and SEED.optimizer == OptimizerConfig("adam", 0.0, 0.0)


def test_seed_compiles_with_adam_binary_crossentropy_and_accuracy_passed_by_keyword():
    model = compile_model(build_model(SEED), SEED, total_steps=10)
    compiled = model.get_compile_config()
    assert compiled["optimizer"]["class_name"] == "Adam"
    assert compiled["optimizer"]["config"]["learning_rate"] == pytest.approx(1e-3)
    assert compiled["loss"]["class_name"] == "BinaryCrossentropy"
    assert compiled["loss"]["config"]["label_smoothing"] == 0.0
    assert compiled["metrics"] == ["accuracy"]
    assert compiled["loss_weights"] is None  # where a positional metrics list would have landed

    x = np.random.default_rng(0).random((8, 80, 80, 1), dtype=np.float32)
    y = np.array([0, 1] * 4, np.float32)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert set(history) == {"loss", "accuracy"}


def test_seed_builds_at_other_sizes_and_colors():
    model = build_model(at(SEED, PipelineConfig(64, "rgb")))
    assert model.input_shape == (None, 64, 64, 3)
    assert model(np.zeros((2, 64, 64, 3), np.float32)).shape == (2, 1)


# --- improved --------------------------------------------------------------------------------------------------


def test_improved_preset_has_batch_norm_global_pooling_dropout_and_no_augmentation_layers():
    model = build_model(IMPROVED)
    assert model.input_shape == (None, 96, 96, 3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") >= 4
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    assert "GlobalAveragePooling2D" in kinds and "Flatten" not in kinds
    assert "Dropout" in kinds
    assert not [kind for kind in kinds if kind.startswith("Random")]  # core.augment does it, outside the model
    assert model.layers[-1].get_config()["activation"] == "sigmoid"


def test_improved_dropout_acts_only_while_training():
    model = build_model(IMPROVED)
    x = np.random.default_rng(0).random((4, 96, 96, 3), dtype=np.float32)
    inference = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(inference, np.asarray(model(x, training=False)))
    assert not np.allclose(inference, np.asarray(model(x, training=True)))
    assert ((inference >= 0) & (inference <= 1)).all()


def test_improved_builds_at_other_pipelines():
    assert build_model(at(IMPROVED, PipelineConfig(64, "grayscale"))).input_shape == (None, 64, 64, 1)


def test_improved_compiles_with_adamw_and_a_cosine_decaying_learning_rate():
    preset = IMPROVED
    model = compile_model(build_model(preset), preset, total_steps=100)
    compiled = model.get_compile_config()
    assert compiled["optimizer"]["class_name"] == "AdamW"
    schedule = keras.optimizers.schedules.deserialize(compiled["optimizer"]["config"]["learning_rate"])
    assert float(schedule(0)) == pytest.approx(preset.learning_rate)
    assert float(schedule(100)) < preset.learning_rate / 10
    assert compiled["metrics"] == ["accuracy"]
    assert compiled["loss_weights"] is None


def test_sgd_is_nesterov_with_a_warm_up_to_the_rate_then_a_cosine_down():
    preset = BEST.changed({"optimizer.name": "sgd", "learning_rate": 0.05, "optimizer.weight_decay": 5e-4})
    compiled = compile_model(build_model(preset), preset, total_steps=100).get_compile_config()
    assert compiled["optimizer"]["class_name"] == "SGD"
    assert compiled["optimizer"]["config"]["nesterov"] and compiled["optimizer"]["config"]["momentum"] == 0.9
    schedule = keras.optimizers.schedules.deserialize(compiled["optimizer"]["config"]["learning_rate"])
    rates = [float(schedule(step)) for step in (0, 10, 20, 60, 100)]
    assert rates[:3] == pytest.approx([0.01, 0.03, 0.05])  # linear from a fifth of the rate over the first fifth
    assert rates[3] == pytest.approx(0.05 * (0.01 + 0.99 * 0.5)) and rates[4] == pytest.approx(0.0005)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_best_decays_conv_and_dense_kernels_but_not_batch_norm_or_biases(name):
    preset = BEST.changed({"optimizer.name": name})
    model = compile_model(build_model(preset), preset, total_steps=None)
    for variable in model.trainable_variables:  # no zeros, so that a decay would show
        variable.assign(np.full(variable.shape, 0.5, np.float32))
    # A zero gradient moves nothing through Adam or SGD (no momentum yet); only the weight decay changes a variable.
    model.optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
    factor = 1 - preset.learning_rate * preset.optimizer.weight_decay
    kinds = {variable.path.split("/")[-1] for variable in model.trainable_variables}
    assert kinds == {"kernel", "gamma", "beta", "bias"}
    for variable in model.trainable_variables:
        expected = 0.5 * factor if variable.path.endswith("/kernel") else 0.5
        np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-6, err_msg=variable.path)


def test_without_a_step_count_adamw_gets_a_plain_rate_for_a_time_budget_to_drive():
    preset = BEST
    model = compile_model(build_model(preset), preset, total_steps=None)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(preset.learning_rate)
    model.optimizer.learning_rate.assign(1e-5)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-5)


def test_inference_model_folds_batch_norm_into_the_convolutions_with_the_same_output():
    preset = BEST
    model = build_model(preset)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking statistics, so that folding has something to carry
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.2, 3, c)]
            )
    x = rng.random((4, *preset.pipeline.input_shape), dtype=np.float32)
    folded = inference_model(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert folded.count_params() < model.count_params()
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-5)


def _ops_of(norm: layers.BatchNormalization, x) -> set[str]:
    import tensorflow as tf

    traced = tf.function(lambda v: norm(v, training=True)).get_concrete_function(tf.TensorSpec(x.shape, x.dtype))
    return {op.type for op in traced.graph.get_operations()}


def _one_training_step(norm: layers.BatchNormalization, x) -> list[np.ndarray]:
    # Output, gradients (to the input, gamma and beta) of a loss that weighs every value apart (a sum of squares
    # would give the input none: batch norm makes it constant), then the moving statistics after the step:
    # everything a training step takes from a batch norm.
    import tensorflow as tf

    weights = np.random.default_rng(2).normal(0, 1, x.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = norm(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * weights)
    grads = tape.gradient(loss, [x, norm.gamma.value, norm.beta.value])
    return [np.asarray(tf.cast(v, "float32")) for v in (y, *grads, norm.moving_mean, norm.moving_variance)]


@pytest.mark.parametrize(("policy", "tolerance"), [("float32", 1e-4), ("mixed_bfloat16", 2e-2)])
def test_the_fused_batch_norm_trains_exactly_as_keras_own_batch_norm_does(small_zip, policy, tolerance):
    from core.data import load_dataset
    from core.pipeline import to_model_input

    photos = to_model_input(load_dataset(small_zip, PipelineConfig(32, "rgb"), limit=16, seed=0, cache_dir=False).x)
    kernel = np.random.default_rng(0).normal(0, 1, (3, 3, 3, 8)).astype(np.float32)
    maps = keras.ops.cast(keras.ops.conv(photos, kernel, padding="same") * 3 + 1, policy.removeprefix("mixed_"))
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 2, 8), rng.normal(0, 0.5, 8)
    steps = []
    for kind in (layers.BatchNormalization, FusedBatchNorm):
        norm = kind(momentum=0.9, dtype=policy)
        norm.build(maps.shape)
        norm.gamma.assign(gamma)
        norm.beta.assign(beta)
        steps.append(_one_training_step(norm, maps))
        # the fused kernel really ran (no silent fall back to Keras's own code), and only there
        assert ("FusedBatchNormV3" in _ops_of(norm, maps)) == (kind is FusedBatchNorm)
    names = ("output", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance")
    for name, keras_own, fused in zip(names, *steps, strict=True):
        scale = np.abs(keras_own).max()
        np.testing.assert_allclose(fused, keras_own, atol=tolerance * scale, rtol=0, err_msg=name)


def test_a_net_built_to_train_has_fused_batch_norms_and_is_saved_with_keras_own(tmp_path):
    config = BEST.changed({"image_size": 32})
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    for any_size, precision in ((True, "bfloat16"), (False, "float32")):  # the second trains as it is saved
        trained = build_model(config, any_size=any_size, precision=precision, to_train=True)
        norms = [layer for layer in trained.layers if isinstance(layer, layers.BatchNormalization)]
        assert norms and all(type(norm) is FusedBatchNorm for norm in norms)
        trained.set_weights([w + rng.uniform(0.1, 0.5, w.shape) for w in trained.get_weights()])
        saved = load_model(save_model(fixed_size(trained, config), tmp_path / f"{precision}.keras"))
        assert all(type(layer).__module__.startswith("keras.") for layer in saved.layers)  # no code of ours
        assert [layer.name for layer in saved.layers] == [layer.name for layer in trained.layers]
        for mine, theirs in zip(trained.get_weights(), saved.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
        if precision == "float32":
            np.testing.assert_allclose(np.asarray(saved(x)), np.asarray(trained(x)), rtol=1e-5, atol=1e-6)


def test_inference_model_leaves_a_net_without_batch_norm_as_it_is():
    seed = build_model(SEED)
    assert inference_model(seed) is seed


# --- save and load -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, pipeline", [("seed", PipelineConfig()), ("improved", PipelineConfig(64, "rgb"))])
def test_a_saved_model_loads_with_the_same_weights_and_its_pipeline(tmp_path, preset, pipeline):
    model = build_model(at(TrainConfig.for_preset(preset), pipeline))
    x = np.random.default_rng(0).random((3, *pipeline.input_shape), dtype=np.float32)
    path = save_model(model, tmp_path / "sub" / "model.keras")
    assert zipfile.is_zipfile(path)
    loaded = load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6)
    assert model_pipeline(loaded) == pipeline


def test_model_pipeline_reads_size_and_color_from_the_model_itself(tmp_path):
    path = save_model(build_model(at(SEED, PipelineConfig(48, "rgb"))), tmp_path / "m.keras")
    assert model_pipeline(load_model(path)) == PipelineConfig(48, "rgb")
    assert model_pipeline(build_model(SEED)) == PipelineConfig()


class _FailsMidSave(layers.Layer):
    # Keras has already opened the target file when it asks layers for their variables.
    def call(self, x):
        return x

    def save_own_variables(self, store):
        raise OSError("disk full")


def test_a_failed_save_leaves_the_previous_model_intact_and_no_temp_file(tmp_path):
    good = build_model(SEED)
    path = save_model(good, tmp_path / "model.keras")
    before = path.read_bytes()
    broken = keras.Sequential([keras.Input((80, 80, 1)), _FailsMidSave(), layers.Flatten(), layers.Dense(1)])

    with pytest.raises(OSError, match="disk full"):
        save_model(broken, path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    assert load_model(path).count_params() == good.count_params()


def test_the_net_is_built_from_the_settings_tree_not_from_the_preset_name():
    # A run records its network in run.json; building from that record gives back the very same net.
    record = {
        "preset": "best",
        "net": {"kind": "vgg_bn", "widths": [8, 16], "stem": 0},
        "image_size": 32,
        "color_mode": "rgb",
    }
    model = build_model(TrainConfig.from_record(record))
    convs = [layer.filters for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert convs == [8, 8, 16, 16] and model.input_shape == (None, 32, 32, 3) and model.name == "best"
    seed = build_model(SEED.changed({"net.widths": (32, 16, 8)}))
    assert [layer.filters for layer in seed.layers if isinstance(layer, layers.Conv2D)] == [32, 16, 8]


def test_squeeze_excitation_gates_each_conv_pair_at_any_size_and_saves(tmp_path):
    config = BEST.changed({"net.widths": (8, 16), "net.stem": 0, "net.se": 4, "image_size": 32})
    model = build_model(config, any_size=True)
    assert [layer.units for layer in model.layers if layer.name.endswith("_gate")] == [8, 16]
    assert [layer.units for layer in model.layers if layer.name.endswith("_reduce")] == [4, 4]  # never under 4
    rng = np.random.default_rng(0)
    model(rng.random((2, 48, 48, 3), dtype=np.float32), training=True)  # progressive resizing trains at others
    fixed = fixed_size(model, config)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    loaded = load_model(save_model(fixed, tmp_path / "se.keras"))
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(fixed(x)), atol=1e-6)
    assert last_conv_layer(loaded).name == "conv2_2"  # Grad-CAM still explains the last conv pair
    # The gate acts: closed (sigmoid of -50), it zeroes the features, and every photo gets the same P(dog).
    gate = loaded.get_layer("se2_gate")
    gate.set_weights([np.zeros_like(gate.kernel), np.full(16, -50.0, np.float32)])
    closed = np.asarray(loaded(x))
    assert closed[0, 0] == pytest.approx(closed[1, 0]) and not np.allclose(np.asarray(fixed(x))[:, 0], closed[0, 0])


def test_a_net_with_gates_says_so_where_a_run_is_described():
    from ui.status import net_text

    assert net_text(BEST.net) == "VGG-BN, pairs 32-64-128-256, stem 16"
    assert net_text(BEST.changed({"net.se": 8}).net) == "VGG-BN, pairs 32-64-128-256, stem 16, SE /8"
    both = BEST.changed({"net.se": 8, "net.residual": True, "net.stem": 0}).net
    assert net_text(both) == "VGG-BN, pairs 32-64-128-256, SE /8, residual"
    whitened = BEST.changed({"net.whiten": True}).net
    assert net_text(whitened) == "VGG-BN, pairs 32-64-128-256, stem 16, whitened"
    deeper = BEST.changed({"net.convs": (2, 2, 3, 3)}).net
    assert net_text(deeper) == "VGG-BN, pairs 32-64-128-256, stem 16, convs 2-2-3-3"


def test_each_stage_has_the_convs_asked_for_and_with_residual_each_later_conv_adds_a_shortcut(tmp_path):
    config = BEST.changed({"net.widths": (8, 16, 16), "net.convs": (1, 3, 2), "net.stem": 0, "image_size": 32})
    plain = build_model(config)
    assert [(layer.name, layer.filters) for layer in plain.layers if isinstance(layer, layers.Conv2D)] == [
        ("conv1_1", 8),
        ("conv2_1", 16),
        ("conv2_2", 16),
        ("conv2_3", 16),
        ("conv3_1", 16),
        ("conv3_2", 16),
    ]
    assert last_conv_layer(plain).name == "conv3_2"  # Grad-CAM explains the last stage's last conv
    residual_config = config.changed({"net.residual": True})
    model = build_model(residual_config, any_size=True, to_train=True)
    assert [layer.name for layer in model.layers if isinstance(layer, layers.Add)] == ["add2", "add2_3", "add3"]
    rng = np.random.default_rng(0)
    x = rng.random((4, 48, 48, 3), dtype=np.float32)
    # Each shortcut's batch norm starts at zero: the three-conv stage starts as its first conv.
    stage = keras.Model(model.inputs, [model.get_layer(name).output for name in ("relu2_1", "relu2_3")])(x)
    np.testing.assert_allclose(stage[1], stage[0], atol=1e-6)
    model(x, training=True)  # the fused batch norm trains; the saved net is Keras's own, weight for weight
    fixed = fixed_size(model, residual_config)
    loaded = load_model(save_model(fixed, tmp_path / "deeper.keras"))
    np.testing.assert_allclose(np.asarray(loaded(x[:, :32, :32])), np.asarray(model(x[:, :32, :32])), atol=1e-5)
    assert loaded.count_params() == plain.count_params()


def test_a_residual_pair_starts_as_its_first_conv_and_then_adds_the_second(tmp_path):
    config = BEST.changed({"net.widths": (8, 16), "net.stem": 0, "net.residual": True, "image_size": 32})
    model = build_model(config, any_size=True)
    plain_config = config.changed({"net.residual": False})
    plain = build_model(plain_config, any_size=True)
    assert [layer.name for layer in model.layers if isinstance(layer, layers.Add)] == ["add1", "add2"]
    assert model.count_params() == plain.count_params()  # the shortcut is free
    rng = np.random.default_rng(0)
    x = rng.random((4, 48, 48, 3), dtype=np.float32)  # progressive resizing trains at other sizes
    # The second conv's batch norm starts at zero, so its branch adds nothing yet.
    first_only = keras.Model(model.inputs, model.get_layer("relu2_2").output)(x)
    np.testing.assert_allclose(first_only, keras.Model(model.inputs, model.get_layer("relu2_1").output)(x), atol=1e-6)
    # Once the second conv's batch norm is on, the pair's output is relu(first + second), unlike the plain pair's.
    for layer in (model.get_layer("bn1_2"), model.get_layer("bn2_2")):
        layer.gamma.assign(np.ones(layer.gamma.shape, np.float32))
    plain.set_weights(model.get_weights())
    fixed = fixed_size(model, config)
    loaded = load_model(save_model(fixed, tmp_path / "residual.keras"))
    x = x[:, :32, :32]
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(fixed(x)), atol=1e-6)
    first = keras.Model(loaded.inputs, loaded.get_layer("relu2_1").output)(x)
    second = keras.Model(loaded.inputs, loaded.get_layer("bn2_2").output)(x)
    np.testing.assert_allclose(
        keras.Model(loaded.inputs, loaded.get_layer("relu2_2").output)(x), np.maximum(first + second, 0), atol=1e-5
    )
    assert not np.allclose(np.asarray(loaded(x)), np.asarray(fixed_size(plain, plain_config)(x)), atol=1e-4)


def test_a_run_with_erasing_or_cutmix_says_so_where_a_run_is_described():
    from ui.status import augmentation_text

    assert augmentation_text(BEST) == "on" and augmentation_text(SEED) == "off"
    assert augmentation_text(BEST.changed({"erase": 0.5, "cutmix": 0.25})) == "on, erasing 50%, CutMix 25%"
    assert augmentation_text(BEST.changed({"flip": "alternate"})) == "on, alternating flips"
    assert augmentation_text(BEST.changed({"mixup": 0.5})) == "on, mixup 50%"
    assert augmentation_text(SEED.changed({"cutmix": 0.5})) == "off"  # without augmentation neither is drawn


def test_an_optimiser_with_a_weight_average_keeps_one_and_says_so():
    from ui.status import optimizer_text

    averaged = BEST.changed({"optimizer.ema": 0.995})
    assert compile_model(build_model(averaged), averaged, total_steps=None).optimizer.use_ema
    assert compile_model(build_model(averaged), averaged, total_steps=None).optimizer.ema_momentum == 0.995
    assert not compile_model(build_model(BEST), BEST, total_steps=None).optimizer.use_ema
    assert optimizer_text(averaged.optimizer) == (
        "adamw, weight decay 0.05, label smoothing 0.05, weights averaged (0.995 a step)"
    )


def test_an_optimiser_with_stochastic_weight_averaging_says_over_how_much_of_the_time():
    from ui.status import optimizer_text

    assert optimizer_text(BEST.changed({"optimizer.swa": 0.25}).optimizer) == (
        "adamw, weight decay 0.05, label smoothing 0.05, weights averaged over the last 25% of the time"
    )


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_bias_rate_steps_batch_norm_betas_and_biases_that_many_times_further_and_nothing_else(name):
    steps = {}
    for rate in (1.0, 8.0):
        preset = BEST.changed({"optimizer.name": name, "optimizer.bias_rate": rate})
        model = compile_model(build_model(preset), preset, total_steps=None)
        for variable in model.trainable_variables:  # the same start and gradients for both rates
            variable.assign(np.full(variable.shape, 0.5, np.float32))
        grads = [
            np.random.default_rng(i).normal(size=v.shape).astype(np.float32)
            for i, v in enumerate(model.trainable_variables)
        ]
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        steps[rate] = {v.path: np.asarray(v) - 0.5 for v in model.trainable_variables}
    kinds = {path.split("/")[-1] for path in steps[1.0]}
    assert kinds == {"kernel", "gamma", "beta", "bias"}
    for path, step in steps[1.0].items():
        scale = 8.0 if path.split("/")[-1] in ("beta", "bias") else 1.0
        assert np.abs(step).max() > 0, path
        np.testing.assert_allclose(steps[8.0][path], scale * step, rtol=1e-3, atol=1e-6, err_msg=path)


def test_a_model_compiled_with_a_bias_rate_saves_and_loads_and_the_rate_says_so(tmp_path):
    from ui.status import optimizer_text

    preset = BEST.changed({"optimizer.bias_rate": 4})
    model = compile_model(build_model(preset), preset, total_steps=100)
    loaded = load_model(save_model(model, tmp_path / "m.keras"))
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert optimizer_text(preset.optimizer) == "adamw, weight decay 0.05, label smoothing 0.05, biases at 4x the rate"
    with pytest.raises(SettingsError, match="bias_rate"):
        OptimizerConfig(name="adam", bias_rate=2)
    with pytest.raises(SettingsError, match="bias_rate"):
        OptimizerConfig(name="adamw", bias_rate=0)


def test_training_accuracy_scores_a_cutmix_photo_by_its_larger_label_share():
    mixing = BEST.changed({"cutmix": 0.5})
    model = compile_model(build_model(mixing), mixing, total_steps=None)
    x = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    said_dog = model.predict(x, verbose=0)[:, 0] > 0.5
    soft = np.array([0.7, 0.3, 0.9, 0.1, 0.6, 0.4, 1.0, 0.0], np.float32)  # CutMix labels, and two hard ones
    scores = model.evaluate(x, soft, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(np.mean(said_dog == (soft > 0.5)))
    assert scores["accuracy"] != pytest.approx(np.mean(said_dog == soft))  # plain binary accuracy: only 2 can match


def test_loading_uses_safe_mode_and_refuses_lambda_code(tmp_path):
    lam = keras.Sequential(
        [keras.Input((80, 80, 1)), layers.Lambda(lambda t: t * 2), layers.Flatten(), layers.Dense(1)]
    )
    path = tmp_path / "lambda.keras"
    lam.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(path)


def test_loading_a_file_that_is_not_a_keras_zip_says_so(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("not a model")
    with pytest.raises(ValueError, match="not a Keras model"):
        load_model(fake)


ONEDNN = (
    "import core.model, tensorflow\n"
    "from tensorflow.python.util import _pywrap_util_port as port\n"  # TensorFlow's own record of its kernels
    "print(port.IsMklEnabled())"
)


@pytest.mark.parametrize(("given", "expected"), [(None, "True"), ("0", "False")])
def test_tensorflow_runs_its_onednn_kernels_unless_the_user_says_not(given, expected):
    # TensorFlow enables oneDNN by itself only on newer Intel CPUs: importing core turns it on everywhere, but a
    # TF_ENABLE_ONEDNN_OPTS the user set is theirs.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", ONEDNN], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_a_whitening_kernel_makes_the_patches_of_real_photos_unit_variance_and_uncorrelated(small_zip):
    from core.data import load_dataset
    from core.model import whitening_kernel
    from core.pipeline import to_model_input

    photos = to_model_input(load_dataset(small_zip, PipelineConfig(32, "rgb"), limit=64, seed=0, cache_dir=False).x)
    kernel = whitening_kernel(photos, 16, eps=0)
    assert kernel.shape == (3, 3, 3, 16)
    np.testing.assert_array_equal(kernel[..., 8:], -kernel[..., :8])  # both signs of each direction
    # Through the convolution itself: the kernel's layout is the conv's, so its responses are whitened.
    responses = np.asarray(keras.ops.conv(photos, kernel[..., :8], padding="valid")).reshape(-1, 8)
    np.testing.assert_allclose(np.cov(responses, rowvar=False), np.eye(8), atol=1e-3)
    damped = np.asarray(keras.ops.conv(photos, whitening_kernel(photos, 16)[..., :8], padding="valid"))
    variances = damped.reshape(-1, 8).var(axis=0)
    assert np.all(variances < 1) and variances[0] > 0.99  # eps damps the faint directions, not the strong ones
    with pytest.raises(SettingsError, match="even number of filters, 2 to 54"):
        whitening_kernel(photos, 56)


def test_a_whitening_stem_is_frozen_and_needs_an_even_stem():
    from core.model import whiten_stem

    for stem in (0, 15):
        with pytest.raises(SettingsError, match="whiten needs the vgg_bn net with an even stem"):
            BEST.changed({"net.whiten": True, "net.stem": stem})
    config = BEST.changed({"net.whiten": True, "image_size": 32})
    model = build_model(config, any_size=True)
    assert not model.get_layer("stem_conv").trainable and model.get_layer("stem_bn").trainable
    with pytest.raises(SettingsError, match="its stem trains"):
        whiten_stem(build_model(BEST), np.zeros((2, 8, 8, 3), np.float32))


def _tiny_batch():
    """Eight random 16x16 photos and labels: the same for every test that calls it."""
    rng = np.random.default_rng(0)
    return rng.random((8, 16, 16, 3), dtype=np.float32), rng.integers(0, 2, (8, 1)).astype(np.float32)


def _tiny_net(seed: int = 1) -> keras.Model:
    """A conv, global pooling and a sigmoid, from seed: deterministic in training (no dropout), so a step by hand
    and a step by Keras see the same function."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    h = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu")(inputs))
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(h))


def _fit_one_step(model: keras.Model, x, y, loss, shuffle: bool = True) -> None:
    """One SGD step (rate 0.1) of the whole batch under this loss."""
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=shuffle, verbose=0)


def _tiny_best(setting: str, value: float) -> TrainConfig:
    """The best preset's net at 16 px, widths 4 and 8 and no stem, with one optimizer setting."""
    return BEST.changed({"net.widths": (4, 8), "net.stem": 0, "image_size": 16, f"optimizer.{setting}": value})


def test_a_sharpness_aware_step_applies_the_gradient_taken_uphill_at_the_weights_themselves(tmp_path):
    import tensorflow as tf

    from core.model import SharpnessAware, sharpness_aware

    x, y = _tiny_batch()
    loss = keras.losses.BinaryCrossentropy()

    def gradient(model):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_weights)

    # By hand: the gradient at w + rho * g / |g|, where g is the gradient at w, then one plain SGD step from w.
    by_hand = _tiny_net()
    start = [np.asarray(w) for w in by_hand.trainable_weights]
    g = gradient(by_hand)
    scale = 0.05 / float(tf.linalg.global_norm(g))
    for w, gw in zip(by_hand.trainable_weights, g, strict=True):
        w.assign_add(gw * scale)
    expected = [w - 0.1 * np.asarray(gw) for w, gw in zip(start, gradient(by_hand), strict=True)]
    plain_step = [w - 0.1 * np.asarray(gw) for w, gw in zip(start, g, strict=True)]

    model = sharpness_aware(_tiny_net(), 0.05)
    _fit_one_step(model, x, y, loss, shuffle=False)
    for after, want, plain in zip(model.trainable_weights, expected, plain_step, strict=True):
        np.testing.assert_allclose(np.asarray(after), want, atol=1e-6)
        assert not np.allclose(want, plain, atol=1e-6)  # and that is not the plain step

    from ui.status import optimizer_text

    sam = BEST.changed({"optimizer.sam": 0.05}).optimizer
    assert optimizer_text(sam) == "adamw, weight decay 0.05, label smoothing 0.05, sharpness-aware (rho 0.05)"
    # A run's net trains by SAM with its fused batch norms; what it saves is the plain net, Keras's own class.
    config = _tiny_best("sam", 0.05)
    model = sharpness_aware(build_model(config, to_train=True), config.optimizer.sam)
    _fit_one_step(model, x, y, loss)
    fixed = fixed_size(model, config)
    assert type(model) is SharpnessAware and not isinstance(fixed, SharpnessAware)
    loaded = load_model(save_model(fixed, tmp_path / "sam.keras"))
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    seed = SEED.changed({"optimizer.sam": 0.05})  # no batch norm to rebuild for: SAM's class alone is rebuilt
    assert not isinstance(fixed_size(sharpness_aware(build_model(seed), 0.05), seed), SharpnessAware)


def test_the_bernoulli_kl_is_kerass_kl_divergence_over_both_outcomes():
    from core.model import bernoulli_kl

    p, q = np.array([[0.9], [0.2], [0.5]], np.float32), np.array([[0.6], [0.3], [0.5]], np.float32)
    two_class = keras.losses.KLDivergence()(np.hstack([p, 1 - p]), np.hstack([q, 1 - q]))
    assert float(bernoulli_kl(p, q)) == pytest.approx(float(two_class), rel=1e-5)
    assert float(bernoulli_kl(p, p)) == pytest.approx(0.0, abs=1e-6) and float(bernoulli_kl(p, q)) > 0


def test_a_mutual_learning_step_moves_each_net_by_its_own_loss_plus_its_fit_to_the_other(tmp_path):
    import tensorflow as tf

    from core.model import MutualPair, bernoulli_kl

    x, y = _tiny_batch()
    loss = keras.losses.BinaryCrossentropy()

    def step(weight):  # by hand: each net's gradient of half its own loss plus its KL from the other, held fixed
        a, b = _tiny_net(1), _tiny_net(2)
        with tf.GradientTape(persistent=True) as tape:
            pa, pb = a(x, training=True), b(x, training=True)
            loss_a = loss(y, pa) + weight * bernoulli_kl(tf.stop_gradient(pb), pa)
            loss_b = loss(y, pb) + weight * bernoulli_kl(tf.stop_gradient(pa), pb)
        return [
            np.asarray(w) - 0.1 * np.asarray(g) / 2
            for own, m in ((loss_a, a), (loss_b, b))
            for w, g in zip(m.trainable_weights, tape.gradient(own, m.trainable_weights), strict=True)
        ]

    expected, apart = step(1.0), step(0.0)
    pair = MutualPair(_tiny_net(1), _tiny_net(2), weight=1.0)
    _fit_one_step(pair, x, y, loss, shuffle=False)
    for after, want in zip(pair.trainable_weights, expected, strict=True):
        np.testing.assert_allclose(np.asarray(after), want, atol=1e-6)
    assert not all(np.allclose(w, a, atol=1e-6) for w, a in zip(expected, apart, strict=True))  # the fit moved them
    # The pair predicts, validates and is saved as its first net: Keras's own class at the run's size.
    np.testing.assert_allclose(np.asarray(pair(x)), np.asarray(pair.first(x)))
    config = _tiny_best("mutual", 1.0)
    pair = MutualPair(build_model(config, to_train=True), build_model(config, to_train=True), weight=1.0)
    _fit_one_step(pair, x, y, loss)
    loaded = load_model(save_model(fixed_size(pair, config), tmp_path / "mutual.keras"))
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(pair.first(x)), atol=1e-5)
    assert not np.allclose(np.asarray(loaded(x)), np.asarray(pair.second(x)), atol=1e-3)

    from ui.status import optimizer_text

    assert optimizer_text(config.optimizer).endswith(", mutual learning with a peer net (weight 1)")
