"""The dashboard's charts: each spec draws the frame it is given, and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest

from core.metrics import reliability_bins
from ui import charts

HISTORY = pd.DataFrame(
    {"epoch": [1, 2], "loss": [0.7, 0.6], "accuracy": [0.5, 0.6], "val_loss": [0.69, 0.65], "val_accuracy": [0.5, 0.55]}
)
BATCHES = pd.DataFrame(
    {
        "step": range(1, 7),
        "epoch": [1, 1, 1, 2, 2, 2],
        "batch": [1, 2, 3] * 2,
        "loss": [0.7] * 6,
        "accuracy": [0.5] * 6,
        "batch_loss": [0.8, 0.6, 0.7, 0.5, 0.6, 0.4],
        "learning_rate": [1e-3, 1e-3, 9e-4, 8e-4, 6e-4, 5e-4],
    }
)
MANIFEST = pd.DataFrame({"width": [200, 200, 500, None], "height": [200, 200, 375, None]}, dtype="Int64")


def fields(spec) -> set[str]:
    """Every data field the spec encodes or filters on."""
    found = set()
    if isinstance(spec, dict):
        if isinstance(spec.get("field"), str):
            found.add(spec["field"])
        for key, value in spec.items():
            if key == "filter" and isinstance(value, str):  # datum.metric === 'loss'
                found |= {part.split(" ")[0] for part in value.split("datum.")[1:]}
            else:
                found |= fields(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= fields(value)
    return found


CHARTS = {
    "class counts": lambda: charts.class_counts({"cats": 3, "dogs": 4, "unlabeled": 1}),
    "image sizes": lambda: charts.image_sizes(MANIFEST),
    "epoch curves": lambda: charts.epoch_curves(HISTORY),
    "batch loss": lambda: charts.batch_loss(BATCHES),
    "batch loss, log scale": lambda: charts.batch_loss(BATCHES, smoothing=0.9, log_scale=True),
    "learning rate": lambda: charts.learning_rate(BATCHES),
    "reliability": lambda: charts.reliability(reliability_bins([0.95, 0.9, 0.6, 0.3], [1, 0, 1, 0])),
    "runs overlay": lambda: charts.runs_overlay({"a": HISTORY, "b": HISTORY.head(1)}, "val_accuracy", "val. acc."),
    "confusion": lambda: charts.confusion([[5, 1], [2, 4]]),
}


@pytest.mark.parametrize("name", CHARTS)
def test_every_chart_encodes_only_columns_of_its_own_frame(name):
    data, spec = CHARTS[name]()
    assert "datasets" not in spec and "empty" not in str(spec)  # no placeholder row drawn as "undefined"
    assert fields(spec) and fields(spec) <= set(data.columns), (fields(spec), list(data.columns))
    assert len(data)


def test_epoch_curves_put_train_and_validation_of_each_metric_side_by_side():
    data, _ = charts.epoch_curves(HISTORY)
    assert sorted(set(zip(data.metric, data.split, strict=True))) == [
        ("accuracy", "train"),
        ("accuracy", "validation"),
        ("loss", "train"),
        ("loss", "validation"),
    ]


def test_batch_loss_grows_along_an_epoch_axis_and_stays_light():
    data, spec = charts.batch_loss(BATCHES)
    raw = data[data.series == "this batch"]
    assert raw.progress.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert raw.loss.tolist() == BATCHES.batch_loss.tolist()  # each batch's own loss, not the running mean
    assert spec["encoding"]["x"]["axis"]["format"] == "~g"  # 0.05, 0.1, 0.15: never "0.1 0.1 0.1"
    many = pd.concat([BATCHES] * 2000, ignore_index=True)
    assert len(charts.batch_loss(many).data) <= 2 * 2 * charts.MAX_POINTS  # two series


def test_smoothing_is_tensorboards_debiased_moving_average_and_log_scale_is_a_log_axis():
    values = pd.Series([1.0, 0.0, 0.0])
    # TensorBoard: last = last * w + (1 - w) * v, divided by 1 - w^(i+1) (no pull towards the zero it starts at).
    assert charts.smooth(values, 0.5).tolist() == pytest.approx([1.0, 1 / 3, 1 / 7])
    assert charts.smooth(values, 0.0).tolist() == values.tolist()
    _, spec = charts.batch_loss(BATCHES, smoothing=0.6, log_scale=True)
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    assert "type" not in charts.batch_loss(BATCHES).spec["encoding"]["y"]["scale"]


def test_image_sizes_count_the_photos_sharing_a_size_and_skip_unreadable_ones():
    data, _ = charts.image_sizes(MANIFEST)
    assert data.x_room.tolist() == pytest.approx([224, 560]) and data.y_room.tolist() == pytest.approx([224, 420])
    assert data[["width", "height", "images"]].to_dict("records") == [
        {"width": 200, "height": 200, "images": 2},
        {"width": 500, "height": 375, "images": 1},
    ]
