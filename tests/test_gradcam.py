"""Grad-CAM: a heatmap of where the model looked, for every preset, that finds a signal we planted."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import make_jpeg

from core.config import CLASS_NAMES
from core.gradcam import Explanation, explain, gradcam, last_conv_layer, legend
from core.model import build_model, build_seed, build_vgg_bn, load_model, save_model
from core.pipeline import ImageError, PipelineConfig, inspect, preprocess
from core.predict import Predictor
from core.settings import PRESETS, TrainConfig

SIZE = 48  # the corner test's image size: small enough to train in seconds


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_heatmap_has_the_input_shape_values_in_0_1_and_no_nan(preset):
    keras.utils.set_random_seed(0)
    model = build_model(TrainConfig.for_preset(preset))
    x = preprocess(make_jpeg(), TrainConfig.for_preset(preset).pipeline)
    heat = gradcam(model, x)
    assert heat.shape == x.shape[:2]
    assert heat.dtype == np.float32
    assert not np.isnan(heat).any()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0)  # scaled so its peak is 1


def test_the_last_convolution_is_found_by_type_in_every_preset():
    assert isinstance(last_conv_layer(build_model(TrainConfig())), keras.layers.Conv2D)
    assert last_conv_layer(build_model(TrainConfig.for_preset("improved"))).name == "conv4_2"


@pytest.mark.parametrize("preset", ["seed", "improved"])
def test_a_saved_and_reloaded_model_explains_the_same(preset, tmp_path):
    # Loading rebuilds a Sequential's graph several times; the heatmap must come from the graph in use.
    keras.utils.set_random_seed(0)
    model = build_model(TrainConfig.for_preset(preset))
    loaded = load_model(save_model(model, tmp_path / "model.keras"))
    x = preprocess(make_jpeg(seed=5), TrainConfig.for_preset(preset).pipeline)
    np.testing.assert_allclose(gradcam(loaded, x), gradcam(model, x), atol=1e-5)


def test_zero_gradients_give_an_empty_map_not_nan():
    model = build_seed(PipelineConfig(SIZE))
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    heat = gradcam(model, np.full((SIZE, SIZE, 1), 0.5, np.float32))
    assert heat.shape == (SIZE, SIZE)
    assert not np.isnan(heat).any() and heat.max() == 0.0


def test_dropout_is_inactive_while_explaining():
    keras.utils.set_random_seed(0)
    model = build_vgg_bn(PipelineConfig(SIZE, "rgb"), widths=(8, 16))
    x = preprocess(make_jpeg(seed=3), PipelineConfig(SIZE, "rgb"))
    # Dropout in training mode would change the map between calls.
    np.testing.assert_array_equal(gradcam(model, x), gradcam(model, x))


def test_an_input_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        gradcam(build_seed(PipelineConfig(SIZE)), np.zeros((SIZE + 1, SIZE, 1), np.float32))


def corner_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; class 1 alone has a bright 10x10 square, somewhere in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.6, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    for i in np.flatnonzero(y):
        row, col = rng.integers(1, 9, 2)
        x[i, row : row + 10, col : col + 10] = 1.0
    return x, y


def corner_model(preset: str) -> keras.Model:
    if preset == "seed":
        return build_seed(PipelineConfig(SIZE))
    # The improved architecture (conv pairs, batch norm, global pooling) at two narrow widths.
    return build_vgg_bn(PipelineConfig(SIZE), widths=(8, 16))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["seed", "improved"])
def test_the_heatmap_concentrates_on_the_only_signal(preset):
    keras.utils.set_random_seed(0)
    x, y = corner_images(400, seed=0)
    model = corner_model(preset)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=4, verbose=0)

    x_test, y_test = corner_images(40, seed=1)
    prob = np.asarray(model(x_test, training=False)).reshape(-1)
    assert ((prob >= 0.5) == y_test).mean() >= 0.9, "the model did not learn to find the square"

    half = SIZE // 2
    shares = []
    for image in x_test[y_test == 1]:
        heat = gradcam(model, image)
        shares.append(heat[:half, :half].sum() / heat.sum())
        peak_row, peak_col = np.unravel_index(heat.argmax(), heat.shape)
        assert peak_row < half and peak_col < half, "the hottest point is outside the square's corner"
    # A quarter of the image would hold a quarter of a uniform map's mass.
    assert np.mean(shares) > 0.6 and min(shares) > 0.45


def test_explain_overlays_the_heatmap_on_the_photo_at_its_original_size(tiny_model):
    predictor = Predictor(tiny_model)
    data = make_jpeg(width=320, height=240, seed=7)
    result = explain(predictor, data)
    assert isinstance(result, Explanation)
    assert result.overlay.shape == (240, 320, 3) and result.overlay.dtype == np.uint8
    assert result.heatmap.shape == (240, 320) and result.heatmap.dtype == np.float32
    assert not np.isnan(result.heatmap).any()
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    expected = predictor.predict_bytes(data)
    assert result.prob_dog == pytest.approx(expected.prob_dog, abs=1e-5)
    assert result.label == expected.label and result.label in CLASS_NAMES


@pytest.mark.parametrize("name", ["rgba.png", "gray16.png"])
def test_explain_handles_valid_odd_images(tiny_model, bad_inputs, name):
    data = (bad_inputs / name).read_bytes()
    info = inspect(data)
    result = explain(Predictor(tiny_model), data)
    assert result.overlay.shape == (info.height, info.width, 3)
    assert result.heatmap.shape == (info.height, info.width)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero-byte.jpg", "empty"),
        ("text-named.jpg", "not an image"),
        ("truncated.jpg", "truncated"),
        ("bomb-20000x20000.png", "too many pixels"),
    ],
)
def test_explain_refuses_bad_files_with_the_pipelines_reason(tiny_model, bad_inputs, name, reason):
    predictor = Predictor(tiny_model)
    with pytest.raises(ImageError, match=reason):  # the bomb from its header: test_pipeline shows it is not decoded
        explain(predictor, (bad_inputs / name).read_bytes())


def test_the_legend_runs_from_blue_to_red():
    strip = legend(width=100, height=10)
    assert strip.shape == (10, 100, 3) and strip.dtype == np.uint8
    red, blue = 0, 2
    assert strip[0, 0, blue] > strip[0, 0, red]  # little influence
    assert strip[0, -1, red] > strip[0, -1, blue]  # where the model looked most
