"""The Keras models: the seed tutorial's CNN and our stronger presets, plus safe save and load."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from core.config import temp_sibling
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
    epochs: int = 10
    batch_size: int = 32
    validation_split: float = 0.2
    early_stopping: bool = False
    widths: tuple[int, ...] = (16, 32, 64, 128)  # conv-pair widths of the VGG-BN presets
    stem: int = 0  # >0: a stride-2 conv stem of this width, halving the resolution the pairs see


PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "seed",
        "The 2013 Kaggle tutorial exactly: 80x80 grayscale, two 64-filter convs, Dense 64, Adam.",
        PipelineConfig(80, "grayscale"),
    ),
    "improved": Preset(
        "improved",
        "VGG-style: four conv pairs with batch norm, global pooling, dropout, in-model augmentation.",
        PipelineConfig(96, "rgb"),
        augment=True,
        learning_rate=2e-3,
        optimizer="adamw",
        epochs=20,
        batch_size=64,
        early_stopping=True,
    ),
    "best": Preset(
        "best",
        "The shipped model: the VGG-BN net at 96x96 RGB with label smoothing, on 90% of train.zip.",
        PipelineConfig(96, "rgb"),
        augment=True,
        learning_rate=2e-3,
        optimizer="adamw",
        label_smoothing=0.05,
        epochs=16,
        batch_size=64,
        validation_split=0.1,
    ),
}


def augmentation(seed: int | None = None) -> keras.Sequential:
    """Random flip, rotation, zoom, translation and contrast; active only while training."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.05, seed=seed),
            layers.RandomZoom(0.15, seed=seed),
            layers.RandomTranslation(0.1, 0.1, seed=seed),
            layers.RandomContrast(0.1, seed=seed),
        ],
        name="augmentation",
    )


def build_seed(pipeline: PipelineConfig) -> keras.Model:
    """The tutorial's CNN: Conv 64, pool, Conv 64, pool, Flatten, Dense 64, sigmoid."""
    return keras.Sequential(
        [
            keras.Input(pipeline.input_shape, name="image"),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(1, activation="sigmoid", name="prob_dog"),
        ],
        name="seed",
    )


def build_vgg_bn(
    pipeline: PipelineConfig,
    augment: bool,
    widths: tuple[int, ...] = (16, 32, 64, 128),
    stem: int = 0,
    seed: int | None = None,
    name: str = "improved",
) -> keras.Model:
    """Conv pairs with batch norm and max-pooling, global average pooling, dropout 0.3, sigmoid."""
    inputs = keras.Input(pipeline.input_shape, name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    if stem:
        x = layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
        x = layers.BatchNormalization(name="stem_bn")(x)
        x = layers.Activation("relu", name="stem_relu")(x)
    for i, width in enumerate(widths):
        for j in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}_{j + 1}")(x)
            x = layers.BatchNormalization(name=f"bn{i + 1}_{j + 1}")(x)
            x = layers.Activation("relu", name=f"relu{i + 1}_{j + 1}")(x)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="prob_dog")(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(
    preset: Preset, pipeline: PipelineConfig | None = None, augment: bool | None = None, seed: int | None = None
) -> keras.Model:
    """Build an uncompiled model for a preset, optionally at another input size or colour mode."""
    pipeline = pipeline or preset.pipeline
    augment = preset.augment if augment is None else augment
    if preset.name == "seed":
        return build_seed(pipeline)
    return build_vgg_bn(pipeline, augment, preset.widths, preset.stem, seed=seed, name=preset.name)


def compile_model(model: keras.Model, preset: Preset, learning_rate: float, total_steps: int) -> keras.Model:
    """Compile with keyword arguments (positional metrics would land in loss_weights)."""
    if preset.optimizer == "adamw":
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1), alpha=0.01)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=preset.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save atomically: a temp file in the same folder, then os.replace, so a crash never leaves half a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a .keras file we wrote, with safe_mode on; never call this on a user's upload."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise ValueError(f"{path}: not a Keras model (a .keras file is a zip archive)")
    return keras.models.load_model(path, compile=False, safe_mode=True)


def model_pipeline(model: keras.Model) -> PipelineConfig:
    """The preprocessing a saved model expects, read from the model itself."""
    return PipelineConfig.from_input_shape(model.input_shape)
