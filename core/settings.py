"""One frozen settings tree for a training run, and the presets built from it.

A `TrainConfig` holds every setting of a run, the network and the optimiser included, so that run.json records
what was trained and a preset is nothing but a named TrainConfig. Each setting carries its help text here, once:
the command line's train flags and the Train page's controls are derived from these fields. Importing this module
is cheap (no Keras), so a page can list the presets.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace

from core.errors import SettingsError
from core.hardware import PRECISIONS
from core.pipeline import PipelineConfig

NET_KINDS = ("seed", "vgg_bn")
OPTIMIZERS = ("adam", "adamw", "sgd")
SGD_MOMENTUM = 0.9  # sgd's Nesterov momentum
COLOR_MODES = ("grayscale", "rgb")
FLIPS = ("random", "alternate")


def setting(default, help: str, **interface):
    """A field of the tree with its help text and how the CLI reads it (flag=..., parse=..., metavar=...,
    choices=...); zero_is_none=True: 0 on the CLI and the Train page means None ("none", "all")."""
    return field(default=default, metadata={"help": help, **interface})


def _check_choices(settings_object) -> None:
    # A setting with choices takes one of them: a typo must not train a model nobody asked for.
    for f in fields(settings_object):
        choices, value = f.metadata.get("choices"), getattr(settings_object, f.name)
        if choices and value not in choices:
            raise SettingsError(f"{f.name} {value!r} is not one of {', '.join(choices)}")


def minutes(text: str) -> float:
    """A number of minutes, 0 or more, as typed."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ValueError(f"{text!r} is not a number of minutes (0 or more)")
    return value


def _numbers(text: str, parse: Callable[[str], float], ok: Callable[[float], bool], what: str) -> tuple:
    # Comma-separated numbers as typed, each passing ok; ValueError names what was expected.
    try:
        found = tuple(parse(part) for part in text.split(","))
    except ValueError:
        found = ()
    if not found or not all(ok(value) for value in found):  # also refuses nan
        raise ValueError(f"{text!r} is not a list of {what}")
    return found


def fractions(text: str) -> tuple[float, ...]:
    """Comma-separated fractions of the image size, each in (0, 1], as typed: 0.67,0.83,1."""
    return _numbers(text, float, lambda s: 0 < s <= 1, "fractions of the image size, like 0.67,0.83,1")


def paths(text: str) -> tuple[str, ...]:
    """Comma-separated dataset paths, as typed."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    if not found:
        raise ValueError(f"{text!r} names no dataset")
    return found


def widths(text: str) -> tuple[int, ...]:
    """Comma-separated filter counts, each at least 1, as typed: 32,64,128."""
    return _numbers(text, int, lambda w: w >= 1, "filter counts, like 32,64,128,256")


def conv_counts(text: str) -> tuple[int, ...]:
    """Comma-separated conv counts, each at least 1, as typed: 1,2,3,3."""
    return _numbers(text, int, lambda c: c >= 1, "conv counts, like 1,2,3,3")


@dataclass(frozen=True)
class NetConfig:
    """The network: the seed tutorial's CNN, or conv pairs with batch norm (vgg_bn)."""

    kind: str = setting(
        "seed",
        "the architecture: seed (a conv and a pooling per width, Flatten, Dense 64) or vgg_bn (a conv pair with "
        "batch norm per width, global pooling, dropout)",
        flag="net",
        choices=NET_KINDS,
    )
    widths: tuple[int, ...] = setting(
        (64, 64), "filters of each conv (seed) or conv pair (vgg_bn)", parse=widths, metavar="W1,W2,..."
    )
    stem: int = setting(0, "vgg_bn only: >0 puts a stride-2 conv stem of this width first, halving the resolution")
    se: int = setting(
        0, "vgg_bn only: >0 gates each conv pair's channels by squeeze-and-excitation, its hidden width the pair's / se"
    )
    residual: bool = setting(
        False,
        "vgg_bn only: adds each pair's first conv's output to its second's (an identity shortcut, the second's batch "
        "norm starting at zero so each pair starts as one conv)",
    )
    convs: tuple[int, ...] = setting(
        (),
        "vgg_bn only: convs in each width's stage, one count per width (e.g. 1,2,3,3; empty: a pair each)",
        parse=conv_counts,
        metavar="C1,C2,...",
    )
    whiten: bool = setting(
        False,
        "vgg_bn with an even stem only: the stem conv is frozen as a patch-whitening filter bank (airbench), fitted "
        "before training to the first stage's training photos: the top stem/2 principal directions of their 3x3 "
        "patches, scaled to unit variance, and their negatives",
    )

    def __post_init__(self):
        _check_choices(self)
        if self.convs and (self.kind != "vgg_bn" or len(self.convs) != len(self.widths)):
            raise SettingsError(
                f"convs needs the vgg_bn net and a count per width ({len(self.widths)}), not {self.kind} with "
                f"{len(self.convs)}"
            )
        if self.whiten and (self.kind != "vgg_bn" or self.stem <= 0 or self.stem % 2):
            raise SettingsError(
                f"whiten needs the vgg_bn net with an even stem (a filter per sign of each direction kept), not "
                f"{self.kind} with stem {self.stem}"
            )


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser and the loss it minimises."""

    name: str = setting(
        "adam",
        "adam (the seed's); adamw: AdamW, its rate on a cosine; or sgd: Nesterov SGD (momentum 0.9), its rate "
        "warming up from a fifth over the first fifth of training, then on a cosine",
        flag="optimizer",
        choices=OPTIMIZERS,
    )
    weight_decay: float = setting(
        0.0, "adamw and sgd: decoupled weight decay, scaled by the rate (not of batch norm, biases)"
    )
    label_smoothing: float = setting(0.0, "pulls the training targets from 0 and 1 towards 0.5 by this much")
    # The moving average is what each epoch validates and what the run keeps; training steps the raw weights.
    ema: float = setting(
        0.0,
        "keeps a moving average of the weights (this much of it kept each step, e.g. 0.995) and validates and "
        "saves it instead of the raw weights (0: none)",
    )
    # Stochastic weight averaging (Izmailov et al. 2018): core.callbacks.StochasticWeightAverage.
    swa: float = setting(
        0.0,
        "stochastic weight averaging over this last share of the time budget (e.g. 0.25): the rate holds there, and "
        "each epoch's weights join an equal average that each epoch validates, batch norm recomputed (0: off)",
    )
    bias_rate: float = setting(
        1.0,
        "adamw and sgd: batch norm's betas and the biases step at this many times the rate (airbench: 64 with SGD)",
    )
    sam: float = setting(
        0.0,
        "sharpness-aware minimisation: each step's gradient is taken this far (rho, e.g. 0.05) uphill of the weights "
        "and applied at them; twice the compute a step (0: off)",
    )
    mutual: float = setting(
        0.0,
        "deep mutual learning: a second net of the same design trains alongside, each also fitting the other's "
        "P(dog) with this weight (e.g. 1); the run keeps the first; twice the compute a step (0: off)",
    )

    def __post_init__(self):
        _check_choices(self)
        if not 0 <= self.ema < 1:
            raise SettingsError(f"ema {self.ema!r} is the share of the average kept each step: at least 0, below 1")
        if not 0 <= self.swa < 1 or (self.swa and self.ema):
            raise SettingsError(f"swa {self.swa!r} is the last share of the time budget averaged: 0 to below 1, no ema")
        if self.bias_rate <= 0 or (self.bias_rate != 1 and self.name == "adam"):
            raise SettingsError(
                f"bias_rate {self.bias_rate!r} multiplies adamw's or sgd's bias rate: above 0, and 1 with adam"
            )
        if not self.sam >= 0:
            raise SettingsError(f"sam {self.sam!r} is how far uphill each gradient is taken: 0 (off) or more")
        if not self.mutual >= 0 or (self.mutual and self.sam):
            raise SettingsError(f"mutual {self.mutual!r} weighs the fit to a peer net: 0 (off) or more, not with sam")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. The defaults reproduce the seed tutorial."""

    preset: str = setting("seed", "the preset the run starts from", cli=False)
    epochs: int = setting(10, "passes over the training photos (an upper bound with a time budget)")
    batch_size: int = setting(32, "photos per batch, shared by all replicas")
    validation_split: float = setting(0.2, "share of the photos held out to validate and measure the model")
    learning_rate: float = setting(
        1e-3, "the optimiser's learning rate (where a decay starts: SGD's peak, after its warm-up)"
    )
    image_size: int = setting(80, "side of the model's square input, in pixels")
    color_mode: str = setting("grayscale", "the model's input colour", choices=COLOR_MODES)
    augment: bool = setting(False, "random flips, rotation, zoom, shifts and contrast on the training photos")
    erase: float = setting(
        0.0, "with augment: the share of training photos that get a random rectangle replaced with noise (0: none)"
    )
    flip: str = setting(
        "random",
        "with augment: mirror a random half of the training photos each epoch (random), or each photo every other"
        " epoch (alternate)",
        choices=FLIPS,
    )
    cutmix: float = setting(
        0.0,
        "with augment: the share of training photos that get a box of another photo pasted in, the label mixed by"
        " its area (CutMix; 0: none)",
    )
    mixup: float = setting(
        0.0,
        "with augment: the share of training photos blended with another photo, the labels by the same weight"
        " (mixup; 0: none)",
    )
    early_stopping: bool = setting(False, "stop when the validation loss stalls for `patience` epochs")
    patience: int = setting(4, "epochs without a better validation loss before early stopping ends the run")
    seed: int = setting(42, "seed of the split, the shuffles, the augmentation and the initial weights")
    limit: int | None = setting(
        None, "train on a balanced slice of at most N photos (0: all)", metavar="N", zero_is_none=True
    )
    # The learning rate follows a cosine over this wall time, not over steps, and training ends when it runs out
    # (epochs is then an upper bound). None: the cosine runs over the epochs.
    time_budget_min: float | None = setting(
        None,
        "train for this long: the learning rate anneals over the time and epochs becomes an upper bound (0: none)",
        flag="time-budget",
        parse=minutes,
        metavar="MINUTES",
        zero_is_none=True,
    )
    # Progressive resizing: train in equal shares (of the time budget, else of the epochs) at these fractions of
    # image_size, e.g. (2/3, 5/6, 1) for 64, 80 and 96. Small early epochs cost a fraction of full-size ones, so
    # the same time trains more epochs. Validation and the saved model use image_size. (): image_size throughout.
    train_scales: tuple[float, ...] = setting(
        (),
        "progressive resizing: train in equal shares at these fractions of the image size, smallest first",
        parse=fractions,
        metavar="S1,S2,...",
    )
    # Held out of training to fit the calibration (core.calibrate, Platt scaling) folded into the saved model.
    # Never the validation photos, which report the accuracy.
    calibration_split: float = setting(
        0.0, "share of the training photos held out to fit a calibration folded into the model (0: none)"
    )
    # Corrections and extras: relabelled photos train with their new label, excluded ones not at all, and the
    # extras' photos (e.g. My photos) are added; all of those always train, never validate, so validation stays
    # the photos (less the corrected ones) that a run without them validates on (core.corrections).
    corrections: str | None = setting(
        None, "a corrections file (JSON) for the dataset: its relabels and exclusions are applied", metavar="PATH"
    )
    extras: tuple[str, ...] = setting(
        (),
        "more labeled photos that always train, never validate: datasets (zips or folders), comma-separated",
        flag="extra",
        parse=paths,
        metavar="DATASET[,DATASET...]",
    )
    # Mixed bfloat16 (bfloat16 compute, float32 weights) pays only where the CPU has AMX: core.hardware. The saved
    # model is always float32, so it predicts alike on every machine.
    precision: str = setting(
        "float32",
        "compute precision while training: float32, bfloat16 (mixed), or auto (bfloat16 where the CPU has AMX)",
        choices=PRECISIONS,
    )
    net: NetConfig = setting(NetConfig(), "the network")
    optimizer: OptimizerConfig = setting(OptimizerConfig(), "the optimiser")

    def __post_init__(self):
        _check_choices(self)
        for name in ("erase", "cutmix", "mixup"):
            if not 0 <= getattr(self, name) <= 1:
                raise SettingsError(f"{name} {getattr(self, name)!r} is a share of the photos: between 0 and 1")
        if self.optimizer.swa and self.time_budget_min is None:
            raise SettingsError("swa averages the last share of a time budget: set time_budget_min too")

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainConfig:
        """The preset's own settings with overrides by name ("epochs", or "net.stem" inside the tree)."""
        if preset not in PRESETS:
            raise SettingsError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return PRESETS[preset].config.changed(overrides)

    def changed(self, overrides: Mapping[str, object]) -> TrainConfig:
        """This config with settings replaced by name; an unknown name is an error, never silently dropped."""
        top: dict[str, object] = {}
        nested: dict[str, dict[str, object]] = {}
        for name, value in overrides.items():
            head, _, leaf = name.partition(".")
            if head not in _names(TrainConfig) or (leaf and leaf not in _names(type(getattr(self, head)))):
                raise SettingsError(f"unknown setting {name!r}; the settings are {', '.join(leaf_names())}")
            if leaf:
                nested.setdefault(head, {})[leaf] = value
            elif dataclasses.is_dataclass(sub := getattr(self, head)) and not isinstance(value, type(sub)):
                raise SettingsError(f"{name} is a whole {type(sub).__name__}; change one of its settings by name")
            else:
                top[name] = value
        for head, values in nested.items():
            top[head] = replace(top.get(head, getattr(self, head)), **values)
        return replace(self, **top)

    @classmethod
    def from_record(cls, record: Mapping) -> TrainConfig:
        """A config as run.json saved it. One saved before the tree held the network and the optimiser was trained
        with its preset's, which it gets; a setting it lacks has the field's default. SettingsError: not a config."""
        if not isinstance(record, Mapping):
            raise SettingsError("a run's config is a JSON object of settings")
        preset = PRESETS.get(str(record.get("preset")))
        trained = preset.config if preset else cls()
        values = {f.name: getattr(cls(), f.name) for f in fields(cls)} | {
            "net": trained.net,
            "optimizer": trained.optimizer,
        }
        for name in _names(cls) & record.keys():
            value = record[name]
            sub = values[name]
            if dataclasses.is_dataclass(sub):  # a sub-tree: the settings it names, over what the run trained with
                if not isinstance(value, Mapping):
                    raise SettingsError(f"a run's {name} settings are a JSON object, not {type(value).__name__}")
                value = replace(sub, **_tuples({k: v for k, v in value.items() if k in _names(type(sub))}))
            values[name] = value
        return cls(**_tuples(values))

    def value(self, name: str):
        """A setting's value by its dotted name: "epochs", "net.stem"."""
        return functools.reduce(getattr, name.split("."), self)

    @property
    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(self.image_size, self.color_mode)

    @property
    def stages(self) -> tuple[int, ...]:
        """The input size of each training stage (one stage, at image_size, without progressive resizing)."""
        return tuple(max(8, round(self.image_size * s)) for s in self.train_scales) or (self.image_size,)


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _tuples(values: dict) -> dict:
    # JSON turns tuples into lists; the tree is frozen and hashable, so they become tuples again.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


@dataclass(frozen=True)
class Setting:
    """One leaf of the tree as an interface shows it: its dotted name, type, help and how it is typed in."""

    name: str  # "epochs", "net.stem"
    type: type
    help: str
    flag: str  # the command line's --flag
    parse: Callable[[str], object] | None
    choices: tuple[str, ...] | None
    metavar: str | None
    zero_is_none: bool


def settings(cls: type = TrainConfig, prefix: str = "") -> Iterator[Setting]:
    """Every leaf setting of the tree in field order, the network's and the optimiser's included."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        meta, hint = f.metadata, hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from settings(hint, f"{prefix}{f.name}.")
            continue
        if meta.get("cli") is False:
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        plain = hint if not args or typing.get_origin(hint) is tuple else args[0]
        flag = meta.get("flag", f.name.replace("_", "-"))
        yield Setting(
            f"{prefix}{f.name}",
            typing.get_origin(plain) or plain,
            meta["help"],
            flag,
            meta.get("parse"),
            meta.get("choices"),
            meta.get("metavar"),
            meta.get("zero_is_none", False),
        )


def leaf_names() -> list[str]:
    """The dotted names of every setting that an override may change."""
    return ["preset", *(s.name for s in settings())]


def help_of(name: str) -> str:
    """A setting's help text, as the CLI and the Train page show it."""
    return next(s.help for s in settings() if s.name == name)


@dataclass(frozen=True)
class Preset:
    """A named TrainConfig: an architecture with the input pipeline and optimiser settings it was chosen with."""

    name: str
    description: str
    config: TrainConfig


IMPROVED = TrainConfig(
    preset="improved",
    epochs=20,
    batch_size=64,
    learning_rate=2e-3,
    image_size=96,
    color_mode="rgb",
    augment=True,
    early_stopping=True,
    net=NetConfig("vgg_bn", (16, 32, 64, 128)),
    optimizer=OptimizerConfig("adamw", weight_decay=1e-4),
)

PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "seed",
        "The 2013 Kaggle tutorial exactly: 80x80 grayscale, two 64-filter convs, Dense 64, Adam.",
        TrainConfig(),
    ),
    "improved": Preset(
        "improved",
        "VGG-style: four conv pairs with batch norm, global pooling, dropout, trained with augmentation.",
        IMPROVED,
    ),
    "best": Preset(
        "best",
        "The shipped model: a stride-2 stem and four conv pairs (32 to 256 filters) with label smoothing and "
        "weight decay, trained at 64, 88, then 112 px on 86% of train.zip for 57 minutes (in bfloat16 where the "
        "CPU has AMX), then calibrated on 4% held out of training.",
        replace(
            IMPROVED,
            preset="best",
            # An upper bound: the budget should end training, not this. It also splits the stages (a third of the
            # epochs each) where that comes first: at 50 a CPU with AMX ended its 64 px stage at 9 of its 19 minutes,
            # and at 100, training through the fused batch norm, at 14 (33 / 33 / 30 epochs in 14 / 19 / 24 minutes).
            epochs=100,
            validation_split=0.1,
            early_stopping=False,  # the cosine over the budget is the schedule; the best epoch is kept anyway
            time_budget_min=57,  # with decoding, validation and saving: under the hour from a cold start
            image_size=112,  # 96 px called small cats in the frame dogs; 112 px: +1.3 points one look (docs/model.md)
            train_scales=(0.5714, 0.7857, 1),  # 64, 88 and 112 pixels, a third of the budget each
            calibration_split=0.04,  # 720 training photos fit the Platt scaling folded into the saved model
            precision="auto",
            net=NetConfig("vgg_bn", (32, 64, 128, 256), stem=16),
            optimizer=OptimizerConfig("adamw", weight_decay=0.05, label_smoothing=0.05),
        ),
    ),
}


# The most epochs the Train page's slider offers: 50, or a preset's own bound where that is larger.
MAX_EPOCHS = max(50, *(p.config.epochs for p in PRESETS.values()))
