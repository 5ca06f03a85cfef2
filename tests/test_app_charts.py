"""The dashboard's charts: each spec draws the frame it is given, and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest

from ui import charts

HISTORY = pd.DataFrame(
    {"epoch": [1, 2], "loss": [0.7, 0.6], "accuracy": [0.5, 0.6], "val_loss": [0.69, 0.65], "val_accuracy": [0.5, 0.55]}
)
BATCHES = pd.DataFrame(
    {"step": range(1, 7), "epoch": [1, 1, 1, 2, 2, 2], "batch": [1, 2, 3] * 2, "loss": [0.7] * 6, "accuracy": [0.5] * 6}
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
    data, _ = charts.batch_loss(BATCHES)
    assert data.progress.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    many = pd.concat([BATCHES] * 2000, ignore_index=True)
    assert len(charts.batch_loss(many).data) <= 2 * charts.MAX_POINTS


def test_image_sizes_count_the_photos_sharing_a_size_and_skip_unreadable_ones():
    data, _ = charts.image_sizes(MANIFEST)
    assert data.to_dict("records") == [
        {"width": 200, "height": 200, "images": 2},
        {"width": 500, "height": 375, "images": 1},
    ]
