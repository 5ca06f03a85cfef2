"""The model presets: plain settings, importable without Keras so that a page can list them cheaply."""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.pipeline import PipelineConfig


@dataclass(frozen=True)
class Preset:
    """An architecture with the input pipeline and optimiser settings it was chosen with."""

    name: str
    description: str
    pipeline: PipelineConfig
    augment: bool = False
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # "adam" (the seed's) or "adamw" (AdamW with cosine decay)
    label_smoothing: float = 0.0
    weight_decay: float = 1e-4  # AdamW's decoupled decay, scaled by the rate; batch norm and biases are exempt
    epochs: int = 10
    batch_size: int = 32
    validation_split: float = 0.2
    early_stopping: bool = False
    widths: tuple[int, ...] = (16, 32, 64, 128)  # conv-pair widths of the VGG-BN presets
    stem: int = 0  # >0: a stride-2 conv stem of this width, halving the resolution the pairs see
    time_budget_min: float | None = None  # train for this many minutes (see TrainConfig.time_budget_min)
    train_scales: tuple[float, ...] = ()  # progressive resizing (see TrainConfig.train_scales)


IMPROVED = Preset(
    "improved",
    "VGG-style: four conv pairs with batch norm, global pooling, dropout, trained with augmentation.",
    PipelineConfig(96, "rgb"),
    augment=True,
    learning_rate=2e-3,
    optimizer="adamw",
    epochs=20,
    batch_size=64,
    early_stopping=True,
)

PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "seed",
        "The 2013 Kaggle tutorial exactly: 80x80 grayscale, two 64-filter convs, Dense 64, Adam.",
        PipelineConfig(80, "grayscale"),
    ),
    "improved": IMPROVED,
    "best": replace(
        IMPROVED,
        name="best",
        description=(
            "The shipped model: a stride-2 stem and four conv pairs (32 to 256 filters) with label smoothing and "
            "weight decay, trained at 64, 80, then 96 px on 90% of train.zip, for 50 minutes."
        ),
        label_smoothing=0.05,
        weight_decay=0.05,
        epochs=50,  # an upper bound: the 50-minute budget ends training first on a 2-core CPU
        validation_split=0.1,
        early_stopping=False,  # the cosine over the budget is the schedule; the best epoch is kept anyway
        time_budget_min=50,
        widths=(32, 64, 128, 256),
        stem=16,
        train_scales=(2 / 3, 5 / 6, 1),  # 64, 80 and 96 pixels, a third of the budget each
    ),
}
