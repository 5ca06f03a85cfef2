"""The dashboard's charts: Vega-Lite specs written with Altair once, then fed a fresh frame on every redraw.

The Train page redraws its charts every second while a run trains in the same process. Building and validating
Altair objects each time costs tens of milliseconds of interpreter time that the training thread then waits for,
so each spec is built once (without data) and `st.vega_lite_chart(frame, spec)` sends only the new data.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import pandas as pd

from core.config import CLASS_NAMES

# Altair is imported inside the spec builders: it costs a noticeable slice of the first page's start-up.
CLASS_COLORS = {"domain": [*CLASS_NAMES, "unlabeled"], "range": ["#F28E2B", "#4E79A7", "#BAB0AC"]}
SPLIT_COLORS = {"domain": ["train", "validation"], "range": ["#4E79A7", "#E15759"]}
# Browsers choke on tens of thousands of points redrawn every second; a stride keeps the shape.
MAX_POINTS = 1500


def _template(chart) -> dict:
    """The chart's spec without Altair's placeholder dataset, so the frame given at draw time is what is drawn."""
    spec = chart.to_dict()
    spec.pop("datasets", None)

    def drop_placeholder(node) -> None:
        if isinstance(node, dict):
            if node.get("data") == {"name": "empty"}:
                del node["data"]
            for value in node.values():
                drop_placeholder(value)
        elif isinstance(node, list):
            for value in node:
                drop_placeholder(value)

    drop_placeholder(spec)
    return spec


class VegaChart(NamedTuple):
    """Data and a data-less spec, drawn with st.vega_lite_chart(*chart)."""

    data: pd.DataFrame
    spec: dict


@cache
def _class_counts_spec() -> dict:
    import altair as alt

    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=alt.X("class:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("images:Q", title="images", axis=alt.Axis(format="~s")),
            color=alt.Color("class:N", scale=alt.Scale(**CLASS_COLORS), legend=None),
            tooltip=["class:N", alt.Tooltip("images:Q", format=",")],
        )
    )
    labels = bars.mark_text(dy=-8).encode(text=alt.Text("images:Q", format=","))
    return _template(alt.layer(bars, labels).properties(height=260))


def class_counts(counts: dict) -> VegaChart:
    """Images per class as bars, unlabeled included when there are any."""
    rows = [{"class": "cat", "images": counts["cats"]}, {"class": "dog", "images": counts["dogs"]}]
    if counts.get("unlabeled"):
        rows.append({"class": "unlabeled", "images": counts["unlabeled"]})
    return VegaChart(pd.DataFrame(rows), _class_counts_spec())


@cache
def _image_sizes_spec() -> dict:
    import altair as alt

    x = alt.X("width:Q", title="width (px)", scale=alt.Scale(zero=True), axis=alt.Axis(format="d"))
    y = alt.Y("height:Q", title="height (px)", scale=alt.Scale(zero=True), axis=alt.Axis(format="d"))
    circles = (
        alt.Chart()
        .mark_circle(opacity=0.6, color="#4E79A7")
        .encode(
            x=x,
            y=y,
            size=alt.Size("images:Q", legend=None, scale=alt.Scale(range=[30, 400])),
            tooltip=["width:Q", "height:Q", alt.Tooltip("images:Q", format=",")],
        )
    )
    # Invisible points a little beyond each size stretch the axes, so no circle sits clipped on their ends
    # (Kaggle's train.zip copy here is one 200x200 point).
    room = alt.Chart().mark_point(opacity=0).encode(x="x_room:Q", y="y_room:Q")
    return _template(alt.layer(circles, room).properties(height=260))


def image_sizes(manifest: pd.DataFrame) -> VegaChart:
    """Width against height of every readable image; a point's size is how many images share it."""
    sizes = (
        manifest.dropna(subset=["width", "height"])
        .astype({"width": int, "height": int})
        .groupby(["width", "height"])
        .size()
        .reset_index(name="images")
    )
    return VegaChart(sizes.assign(x_room=sizes.width * 1.12, y_room=sizes.height * 1.12), _image_sizes_spec())


@cache
def _epoch_curves_spec() -> dict:
    import altair as alt

    panels = []
    for metric in ("loss", "accuracy"):
        base = (
            alt.Chart()
            .transform_filter(alt.datum.metric == metric)
            .encode(
                x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
                y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3~f")),
                color=alt.Color("split:N", scale=alt.Scale(**SPLIT_COLORS), title=None),
            )
        )
        points = base.mark_point(filled=True, size=60).encode(
            tooltip=["epoch:Q", "split:N", alt.Tooltip("value:Q", title=metric, format=".4f")]
        )
        panels.append(alt.layer(base.mark_line(), points).properties(title=f"{metric} per epoch", height=260))
    return _template(alt.hconcat(*panels).resolve_scale(color="shared"))


def epoch_curves(history: pd.DataFrame) -> VegaChart:
    """Loss and accuracy per epoch, train against validation, with a tooltip on every point."""
    cols = [c for c in ("loss", "accuracy", "val_loss", "val_accuracy") if c in history]
    long = history.melt(id_vars="epoch", value_vars=cols, var_name="key", value_name="value").dropna()
    long["split"] = ["validation" if k.startswith("val_") else "train" for k in long.key]
    long["metric"] = long.key.str.removeprefix("val_")
    return VegaChart(long.drop(columns="key"), _epoch_curves_spec())


LOSS_SERIES = {"domain": ["this batch", "smoothed"], "range": ["#A0CBE8", "#1F5A96"]}
_EPOCH_AXIS = {"title": "epoch", "format": "~g", "tickMinStep": 0.1}  # ~g: 0.05, 0.1, 0.15, never "0.1 0.1 0.1"


@cache
def _batch_loss_spec(log_scale: bool) -> dict:
    import altair as alt

    chart = (
        alt.Chart()
        .mark_line(strokeWidth=1.5, point=alt.OverlayMarkDef(size=12, opacity=0.5))  # a lone batch still shows
        .encode(
            x=alt.X("progress:Q", scale=alt.Scale(domainMin=0), axis=alt.Axis(**_EPOCH_AXIS)),
            y=alt.Y(
                "loss:Q",
                title="training loss",
                scale=alt.Scale(type="log") if log_scale else alt.Scale(zero=False),
                axis=alt.Axis(format=".3~f"),
            ),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(**LOSS_SERIES),
                title=None,
                legend=alt.Legend(orient="top", direction="horizontal"),
            ),
            tooltip=["epoch:Q", "batch:Q", "series:N", alt.Tooltip("loss:Q", format=".4f")],
        )
        .properties(height=340)  # Streamlit fits a stretched single view, axes and legend included, into this
    )
    return _template(chart)


def _stride(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:: max(1, len(frame) // MAX_POINTS)]


def _progress(batches: pd.DataFrame, batches_per_epoch: int | None = None) -> pd.Series:
    # Batches as fractions of an epoch, so the axis reads in epochs and grows as one runs. Without the epoch's
    # length, the longest epoch logged sets it (wrong only while the first epoch is still running).
    per_epoch = batches_per_epoch or (max(int(batches.batch.max()), 1) if len(batches) else 1)
    return batches.epoch - 1 + batches.batch / per_epoch


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard's smoothing: a debiased exponential moving average; weight 0 keeps the values, 0.99 flattens."""
    return values.ewm(alpha=1 - min(max(weight, 0.0), 0.999), adjust=True).mean()


def batch_loss(
    batches: pd.DataFrame, smoothing: float = 0.6, log_scale: bool = False, batches_per_epoch: int | None = None
) -> VegaChart:
    """Every batch's own training loss, faint, under its smoothed curve, on an epoch axis (log scale on request)."""
    raw = batches["batch_loss"] if "batch_loss" in batches else batches["loss"]  # runs logged before batch_loss
    if log_scale:
        raw = raw.clip(lower=1e-6)  # a difference of running means can round to zero or just below
    frame = pd.DataFrame(
        {"progress": _progress(batches, batches_per_epoch), "epoch": batches.epoch, "batch": batches.batch, "raw": raw}
    ).assign(smoothed=smooth(raw, smoothing))
    long = _stride(frame).melt(
        id_vars=["progress", "epoch", "batch"], value_vars=["raw", "smoothed"], var_name="series", value_name="loss"
    )
    long["series"] = long.series.map({"raw": "this batch", "smoothed": "smoothed"})
    return VegaChart(long, _batch_loss_spec(log_scale))


@cache
def _learning_rate_spec() -> dict:
    import altair as alt

    chart = (
        alt.Chart()
        .mark_line(color="#59A14F")
        .encode(
            x=alt.X("progress:Q", scale=alt.Scale(domainMin=0), axis=alt.Axis(**_EPOCH_AXIS)),
            y=alt.Y("learning_rate:Q", title="learning rate", axis=alt.Axis(format="~g")),
            tooltip=["epoch:Q", "batch:Q", alt.Tooltip("learning_rate:Q", format=".3~e")],
        )
        .properties(height=200)
    )
    return _template(chart)


def learning_rate(batches: pd.DataFrame, batches_per_epoch: int | None = None) -> VegaChart:
    """The learning rate each batch trained at: a cosine for the improved and best presets."""
    frame = batches.assign(progress=_progress(batches, batches_per_epoch))
    frame = frame[["progress", "epoch", "batch", "learning_rate"]]
    return VegaChart(_stride(frame.dropna()), _learning_rate_spec())


@cache
def _runs_overlay_spec(metric: str, title: str) -> dict:
    import altair as alt

    chart = (
        alt.Chart()
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3~f")),
            color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=1, labelLimit=0)),  # whole ids
            tooltip=["run:N", "epoch:Q", alt.Tooltip("value:Q", title=metric, format=".4f")],
        )
        .properties(height=320)
    )
    return _template(chart)


def runs_overlay(histories: dict[str, pd.DataFrame], metric: str, title: str) -> VegaChart:
    """One metric per epoch for several runs in one chart, a colour per run."""
    frames = [h[["epoch", metric]].assign(run=run_id) for run_id, h in histories.items() if metric in h]
    data = pd.concat(frames) if frames else pd.DataFrame({"epoch": [], metric: [], "run": []})
    return VegaChart(data.rename(columns={metric: "value"}), _runs_overlay_spec(metric, title))


@cache
def _confusion_spec() -> dict:
    import altair as alt

    base = alt.Chart().encode(x=alt.X("predicted:N", title="predicted"), y=alt.Y("true:N", title="true"))
    heat = base.mark_rect().encode(
        color=alt.Color("images:Q", scale=alt.Scale(scheme="blues", domainMin=0), legend=None),  # 0 is white
        tooltip=["true:N", "predicted:N", alt.Tooltip("images:Q", format=",")],
    )
    text = base.mark_text(fontSize=18).encode(
        text=alt.Text("images:Q", format=","),
        color=alt.condition(alt.datum.dark, alt.value("white"), alt.value("black")),
    )
    return _template(alt.layer(heat, text).properties(width=260, height=220))


def confusion(matrix: list[list[int]]) -> VegaChart:
    """The confusion matrix as a heatmap with counts: rows are the truth, columns the prediction."""
    peak = max(max(row) for row in matrix)
    rows = [
        {"true": CLASS_NAMES[t], "predicted": CLASS_NAMES[p], "images": matrix[t][p], "dark": matrix[t][p] > peak / 2}
        for t in (0, 1)
        for p in (0, 1)
    ]
    return VegaChart(pd.DataFrame(rows), _confusion_spec())


@cache
def _reliability_spec() -> dict:
    import altair as alt

    x = alt.Scale(domain=[0.5, 1])
    y = alt.Scale(domain=[0, 1])
    tooltip = [
        alt.Tooltip("low:Q", title="from", format=".1f"),
        alt.Tooltip("high:Q", title="to", format=".1f"),
        alt.Tooltip("photos:Q", format=","),
        alt.Tooltip("confidence:Q", title="mean confidence", format=".1%"),
        alt.Tooltip("accuracy:Q", title="right", format=".1%"),
    ]
    bars = (
        alt.Chart()
        .mark_bar(opacity=0.35, color="#4E79A7", binSpacing=1)
        .encode(
            x=alt.X("low:Q", scale=x, title="confidence in its answer", axis=alt.Axis(format=".0%")),
            x2="high:Q",
            y=alt.Y("accuracy:Q", scale=y, title="share right", axis=alt.Axis(format=".0%")),
            tooltip=tooltip,
        )
    )
    points = bars.mark_circle(color="#1F5A96", opacity=1).encode(
        x=alt.X("confidence:Q", scale=x),
        y=alt.Y("accuracy:Q", scale=y),
        size=alt.Size("photos:Q", legend=None, scale=alt.Scale(range=[30, 300])),
    )
    diagonal = (
        alt.Chart()
        .mark_rule(strokeDash=[4, 4], color="#888")
        .encode(x=alt.datum(0.5), y=alt.datum(0.5), x2=alt.datum(1), y2=alt.datum(1))
    )
    return _template(alt.layer(bars, diagonal, points).properties(width=300, height=240))


def reliability(bins: pd.DataFrame) -> VegaChart:
    """A reliability diagram: per confidence bin, the share right (bar, dot at the bin's mean confidence).

    On the dashed diagonal the model is as often right as it is sure; below it, over-confident.
    """
    return VegaChart(bins, _reliability_spec())
