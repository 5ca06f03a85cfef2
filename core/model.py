"""The Keras models: the seed tutorial's CNN and our stronger presets, plus safe save and load."""

from __future__ import annotations

import itertools
import os
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.config import atomic_write
from core.errors import ModelError, SettingsError
from core.optimizers import BiasRateAdamW, BiasRateSGD
from core.pipeline import PipelineConfig
from core.settings import SGD_MOMENTUM, TrainConfig

BN_MOMENTUM = 0.9
FUSED_NORM_DTYPES = ("float32", "bfloat16")  # the compute dtypes TensorFlow's fused batch norm takes on a CPU
SGD_WARMUP = 0.2  # SGD's warm-up: this share of the run, from this share of the rate up to the rate


def build_seed(pipeline: PipelineConfig, widths: tuple[int, ...] = (64, 64), name: str = "seed") -> keras.Model:
    """The tutorial's CNN: a 3x3 conv and a 2x2 pooling per width (64, 64), Flatten, Dense 64, sigmoid."""
    convs = [
        layer
        for width in widths
        for layer in (layers.Conv2D(width, (3, 3), activation="relu"), layers.MaxPooling2D(pool_size=(2, 2)))
    ]
    return keras.Sequential(
        [
            keras.Input(pipeline.input_shape, name="image"),
            *convs,
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(1, activation="sigmoid", name="prob_dog"),
        ],
        name=name,
    )


class FusedBatchNorm(layers.BatchNormalization):
    """Keras's batch norm computing the same function, but training through TensorFlow's fused kernel: training only.

    Keras's own layer upcasts bfloat16 to float32 and normalises in separate moment, scale and shift ops, forward and
    backward: half of the best net's training time on a 2-core CPU went there. FusedBatchNormV3 (oneDNN's kernel)
    does it in one pass, in the compute dtype, with a fused gradient: 1.1-1.6x the training throughput
    (`benchmarks/throughput.py --fused`), 1.58x over a full run of the best preset. Its moving variance is kept
    biased, as Keras keeps it.
    Inference, and anything the fused kernel does not take, runs Keras's own code. Never saved: `fixed_size` turns
    a net that trained with it back into Keras's own layers, weight for weight, so a saved model needs no code of ours.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the Keras backend here; _fusable checked it

        x = tf.cast(inputs, self.compute_dtype)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma.value, self.beta.value, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
        variance *= (count - 1) / tf.maximum(count, 1)  # the kernel returns it Bessel-corrected; Keras keeps it biased
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return y

    def _fusable(self, inputs, mask) -> bool:
        plain = self.center and self.scale and not self.renorm and not self.synchronized and mask is None
        channels_last = len(inputs.shape) == 4 and self.axis in (-1, 3)
        fused_kernel = keras.backend.backend() == "tensorflow" and self.compute_dtype in FUSED_NORM_DTYPES
        return plain and channels_last and fused_kernel


class SharpnessAware(keras.Model):
    """A net training by sharpness-aware minimisation (SAM, Foret et al. 2021): training only, never saved.

    Each step first takes the loss's gradient at the weights w, moves them to w + e, e = rho * g / |g| (to first
    order the worst point within rho), and lets Keras's own step take the gradient there and apply it; then takes e
    back off. Since the optimiser's update is added to the weights, that is its update of w by the gradient at
    w + e (weight decay sees w + e: a difference of rate x decay x rho). Twice the compute a step; the batch norms'
    moving statistics see both passes. TensorFlow backend, one replica. `fixed_size` saves the plain net.
    """

    def __init__(self, *args, rho: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = rho

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_weights
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sample_weight)
        grads = tape.gradient(loss, weights)
        scale = self.rho / (tf.linalg.global_norm([g for g in grads if g is not None]) + 1e-12)
        moves = [(w, g * scale) for w, g in zip(weights, grads, strict=True) if g is not None]
        for w, e in moves:
            w.assign_add(e)
        logs = super().train_step(data)
        for w, e in moves:
            w.assign_sub(e)
        return logs


def sharpness_aware(model: keras.Model, rho: float) -> keras.Model:
    """The same net (the same layers and weights) as a `SharpnessAware` model that trains by SAM at rho."""
    return SharpnessAware(model.inputs, model.outputs, rho=rho, name=model.name)


class MutualPair(keras.Model):
    """Two nets training together by deep mutual learning (Zhang et al. 2018): training only, never saved.

    Each net fits the labels and, with `weight`, the other's P(dog): its loss adds the Bernoulli KL divergence from
    the other's prediction (held fixed) to its own. Training minimises the mean of the two nets' losses, which is
    the loss the run logs; the pair predicts, validates and is kept as the first net alone (`fixed_size` saves
    that). Twice the compute a step. One replica: the KL terms are plain batch means.
    """

    def __init__(self, first: keras.Model, second: keras.Model, weight: float = 1.0, **kwargs):
        super().__init__(name=first.name, **kwargs)
        self.first, self.second, self.weight = first, second, weight

    def call(self, inputs, training=None):
        return self.first(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        own = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not training:
            return own
        peer = self.second(x, training=True)
        theirs = super().compute_loss(x=x, y=y, y_pred=peer, sample_weight=sample_weight, training=training)
        fixed = keras.ops.stop_gradient
        mutual = bernoulli_kl(fixed(peer), y_pred) + bernoulli_kl(fixed(y_pred), peer)
        return (own + theirs + self.weight * mutual) / 2


def bernoulli_kl(target, pred, eps: float = 1e-7):
    """The batch mean of KL(target || pred) between the Bernoulli distributions of two P(dog)s: 0 where they agree."""
    ops = keras.ops
    p, q = (ops.clip(ops.cast(t, "float32"), eps, 1 - eps) for t in (target, pred))
    return ops.mean(p * ops.log(p / q) + (1 - p) * ops.log((1 - p) / (1 - q)))


def trained_nets(model: keras.Model) -> tuple[keras.Model, ...]:
    """The nets a training model trains: a mutual pair's two, or the model itself."""
    return (model.first, model.second) if isinstance(model, MutualPair) else (model,)


def build_vgg_bn(
    pipeline: PipelineConfig,
    widths: tuple[int, ...] = (16, 32, 64, 128),
    stem: int = 0,
    se: int = 0,
    residual: bool = False,
    whiten: bool = False,
    name: str = "improved",
    any_size: bool = False,
    dtype: str = "float32",
    fused_norm: bool = False,
    convs: tuple[int, ...] = (),
) -> keras.Model:
    """Conv pairs with batch norm and max-pooling, global average pooling, dropout 0.3, sigmoid.

    Batch norm uses momentum 0.9: with 0.99 the moving statistics trailed the weights by ~100 steps, and
    validation accuracy sat near chance for the first epochs while training accuracy climbed.
    With any_size the input takes photos of any size (progressive resizing trains on several); global pooling
    makes the net itself size-agnostic. se > 0 adds a squeeze-and-excitation gate after each conv pair (Hu et al.
    2018): its channels rescaled by a sigmoid of two dense layers over their global means. residual adds an identity
    shortcut around each pair's second conv, whose batch norm starts at zero (a zero-initialised residual, Goyal et al.
    2017), so each pair starts as its first conv alone. whiten freezes the stem conv, for `whiten_stem` to set it to
    a patch-whitening filter bank before training. dtype is each layer's Keras dtype policy (e.g.
    "mixed_bfloat16"), given to the layers rather than set globally, so a run training in a thread changes no other
    model; the sigmoid stays float32. fused_norm: the batch norms are `FusedBatchNorm`, the same function trained
    faster, for a net to train (never to save). convs, one count per width, makes each "pair" that many convs (a
    depth per stage; two each without it); with residual, each conv after a stage's first gets a shortcut.
    """
    norm = FusedBatchNorm if fused_norm else layers.BatchNormalization
    shape = (None, None, pipeline.channels) if any_size else pipeline.input_shape
    inputs = keras.Input(shape, name="image")
    x = inputs
    if stem:
        conv = layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, name="stem_conv", dtype=dtype)
        conv.trainable = not whiten
        x = conv(x)
        x = norm(momentum=BN_MOMENTUM, name="stem_bn", dtype=dtype)(x)
        x = layers.Activation("relu", name="stem_relu", dtype=dtype)(x)
    for i, width in enumerate(widths):
        x = _conv_stage(x, width, f"{i + 1}", residual, dtype, norm, convs[i] if convs else 2)
        if se:
            x = _squeeze_excite(x, width, se, f"se{i + 1}", dtype)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(name=f"pool{i + 1}", dtype=dtype)(x)
    x = layers.GlobalAveragePooling2D(name="gap", dtype=dtype)(x)
    x = layers.Dropout(0.3, name="dropout", dtype=dtype)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="prob_dog")(x)
    return keras.Model(inputs, outputs, name=name)


def _conv_stage(x, width: int, name: str, residual: bool, dtype: str, norm: type, count: int = 2):
    """count 3x3 convs (a pair by default), each with batch norm and relu; with residual, each conv after the first
    adds its input to its normalised output before its relu, its batch norm starting at zero."""
    for j in range(1, count + 1):
        shortcut, added = x, residual and j > 1
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{name}_{j}", dtype=dtype)(x)
        start = "zeros" if added else "ones"
        normalise = norm(momentum=BN_MOMENTUM, gamma_initializer=start, name=f"bn{name}_{j}", dtype=dtype)
        add = f"add{name}" if j == 2 else f"add{name}_{j}"  # a pair's one shortcut keeps its earlier name
        x = layers.Add(name=add, dtype=dtype)([shortcut, normalise(x)]) if added else normalise(x)
        x = layers.Activation("relu", name=f"relu{name}_{j}", dtype=dtype)(x)
    return x


def _squeeze_excite(x, width: int, ratio: int, name: str, dtype: str):
    # Dense layers, not 1x1 convolutions, so that Grad-CAM's last convolution is still the last conv pair's.
    gate = layers.GlobalAveragePooling2D(name=f"{name}_squeeze", dtype=dtype)(x)
    gate = layers.Dense(max(4, width // ratio), activation="relu", name=f"{name}_reduce", dtype=dtype)(gate)
    gate = layers.Dense(width, activation="sigmoid", name=f"{name}_gate", dtype=dtype)(gate)
    gate = layers.Reshape((1, 1, width), name=f"{name}_shape", dtype=dtype)(gate)
    return layers.Multiply(name=f"{name}_excite", dtype=dtype)([x, gate])


def build_model(
    config: TrainConfig, any_size: bool = False, precision: str = "float32", to_train: bool = False
) -> keras.Model:
    """Build the uncompiled net of a run's settings (config.net) for its input (config.pipeline), named after its
    preset.

    Augmentation is not part of the model: `core.augment` applies it to training batches. any_size builds it to
    take photos of any size, for training at several; precision "bfloat16" builds it to train in mixed bfloat16
    (float32 weights); to_train builds the net to train, with `FusedBatchNorm`. `fixed_size` makes the model to save
    from any of them.
    """
    net = config.net
    if net.kind == "seed":
        if any_size or precision != "float32":
            raise SettingsError("the seed net trains as the tutorial did: at one size, in float32")
        return build_seed(config.pipeline, net.widths, name=config.preset)
    dtype = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    return build_vgg_bn(
        config.pipeline,
        net.widths,
        net.stem,
        net.se,
        net.residual,
        net.whiten,
        name=config.preset,
        any_size=any_size,
        dtype=dtype,
        fused_norm=to_train,
        convs=net.convs,
    )


def whitening_kernel(images: np.ndarray, filters: int, eps: float = 5e-4) -> np.ndarray:
    """A 3x3 conv kernel (3, 3, channels, filters) that whitens the patches of images (airbench, Jordan 2024).

    images: model input (n, h, w, channels), float in [0, 1]. The top filters/2 principal directions of their 3x3
    patches, each divided by the square root of its variance (plus eps), so that it responds to those patches with
    unit variance, uncorrelated with the others; then the same negated, so that both signs pass the relu after it.
    """
    channels, kept = images.shape[-1], filters // 2
    if filters % 2 or not 0 < kept <= 9 * channels:
        raise SettingsError(f"a whitening stem has an even number of filters, 2 to {18 * channels}: not {filters}")
    windows = np.lib.stride_tricks.sliding_window_view(images, (3, 3), axis=(1, 2))  # (n, h-2, w-2, c, 3, 3)
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 9 * channels)  # (kh, kw, c): the kernel's order
    variances, directions = np.linalg.eigh(np.cov(patches, rowvar=False))  # ascending
    top = np.argsort(variances)[::-1][:kept]
    kernel = (directions[:, top] / np.sqrt(variances[top] + eps)).reshape(3, 3, channels, kept)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


def whiten_stem(model: keras.Model, images: np.ndarray) -> None:
    """Set a whitening net's frozen stem conv (`build_vgg_bn(whiten=True)`) to whiten the patches of images; both
    nets' of a mutual pair."""
    for net in trained_nets(model):
        stem = net.get_layer("stem_conv")
        if stem.trainable:
            raise SettingsError(f"{net.name}: its stem trains; only a net built with whiten has one to whiten")
        stem.kernel.assign(whitening_kernel(images, stem.filters))


def recompute_batch_norm(model: keras.Model, batches: list[np.ndarray]) -> None:
    """Every batch norm's moving statistics set to the mean of its statistics over these batches, in training-mode
    passes of each net (SWA's update of batch norm for averaged weights, whose own statistics no step saw; PyTorch's
    `update_bn` averages alike). A batch at a time, so memory stays a training step's. Nothing else changes."""
    for net in trained_nets(model):
        norms = [layer for layer in net.layers if isinstance(layer, layers.BatchNormalization)]
        momenta = [norm.momentum for norm in norms]
        try:
            for seen, batch in enumerate(batches):
                for norm in norms:
                    norm.momentum = seen / (seen + 1)  # a running mean: the first batch replaces the old statistics
                net(batch, training=True)
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum


def fixed_size(model: keras.Model, config: TrainConfig) -> keras.Model:
    """The model at the run's input size in float32, with Keras's own layers only, so that a saved model says what
    input it expects, loads without this project's code and predicts alike on every CPU, whatever the run trained in."""
    model = trained_nets(model)[0]  # a mutual pair keeps its first net
    in_float32 = all(layer.dtype_policy.name == "float32" for layer in model.layers)
    keras_own = type(model) is not SharpnessAware and not any(isinstance(lr, FusedBatchNorm) for lr in model.layers)
    if model.input_shape[1:] == config.pipeline.input_shape and in_float32 and keras_own:
        return model
    fixed = build_model(config)
    fixed.set_weights(model.get_weights())
    return fixed


def inference_model(model: keras.Model) -> keras.Model:
    """The same function with each batch norm folded into the convolution before it, for prediction only.

    At inference a batch norm is a per-channel scale and shift, which the convolution's kernel and bias can
    carry: kernel * s and beta - mean * s with s = gamma / sqrt(var + eps). The folded net computes the same
    P(dog) (to float rounding) ~1.2x faster on CPU, since it skips a pass over every activation map.
    """
    chain = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    if any(b.input is not a.output for a, b in itertools.pairwise(chain)):
        return model  # only a plain chain of layers is rewritten
    folds = {
        conv.name: norm
        for conv, norm in itertools.pairwise(chain)
        if isinstance(conv, layers.Conv2D)
        and isinstance(norm, layers.BatchNormalization)
        and not conv.use_bias
        and conv.get_config()["activation"] == "linear"
        and norm.axis in (-1, len(norm.input.shape) - 1)
    }
    if not folds:
        return model
    folded_norms = {norm.name for norm in folds.values()}
    x = inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    for layer in chain:
        if layer.name in folded_norms:
            continue
        if layer.name not in folds:
            twin = layer.__class__.from_config(layer.get_config())
            x = twin(x)
            twin.set_weights(layer.get_weights())
            continue
        norm = folds[layer.name]
        mean, var = np.asarray(norm.moving_mean), np.asarray(norm.moving_variance)
        gamma = np.asarray(norm.gamma) if norm.scale else np.ones_like(mean)
        beta = np.asarray(norm.beta) if norm.center else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + norm.epsilon)
        twin = layers.Conv2D.from_config({**layer.get_config(), "use_bias": True})
        x = twin(x)
        twin.set_weights([np.asarray(layer.kernel) * scale, beta - mean * scale])
    return keras.Model(inputs, x, name=f"{model.name}_folded")


@keras.saving.register_keras_serializable(package="core")
class MajorityAccuracy(keras.metrics.BinaryAccuracy):
    """Binary accuracy against each photo's larger label share: a CutMix photo that is 70% dog counts as a dog, where
    plain binary accuracy would count it wrong whatever the net said. Hard labels (every photo without CutMix, and
    all validation photos) score exactly as with plain binary accuracy. Only CutMix runs compile with it: the others
    (the seed tutorial's among them) keep Keras's own "accuracy"."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        majority = keras.ops.cast(keras.ops.greater(y_true, 0.5), "float32")
        return super().update_state(majority, y_pred, sample_weight)


def rate_schedule(optimizer: str, rate: float, length: float) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate over a run of `length` steps (or seconds): a cosine down to 1% of the rate; for SGD, after
    a linear warm-up from a fifth of the rate over the first fifth (Keras's own cosine with warm-up)."""
    length = max(length, 1e-6)
    if optimizer != "sgd":
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=length, alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        rate * SGD_WARMUP,
        decay_steps=length * (1 - SGD_WARMUP),
        alpha=0.01,
        warmup_target=rate,
        warmup_steps=length * SGD_WARMUP,
    )


def _decaying_optimizer(settings, decay: dict) -> keras.optimizers.Optimizer:
    """AdamW or Nesterov SGD with these keyword arguments; with a bias_rate, the kind that steps batch norm's betas
    and the biases faster (core.optimizers)."""
    extra = {"momentum": SGD_MOMENTUM, "nesterov": True} if settings.name == "sgd" else {}
    if settings.bias_rate == 1:
        kind = keras.optimizers.AdamW if settings.name == "adamw" else keras.optimizers.SGD
        return kind(**decay, **extra)
    kind = BiasRateAdamW if settings.name == "adamw" else BiasRateSGD
    return kind(bias_rate=settings.bias_rate, **decay, **extra)


def compile_model(model: keras.Model, config: TrainConfig, total_steps: int | None) -> keras.Model:
    """Compile with the run's optimiser and loss, with keyword arguments (positional metrics would land in
    loss_weights).

    AdamW and SGD follow `rate_schedule` over total_steps; with total_steps None the rate is a plain variable that
    a `core.callbacks.TimeBudget` drives along the same schedule over wall time instead. With `optimizer.ema` the
    optimiser also keeps a moving average of the weights, which `core.callbacks.WeightAverage` swaps in to validate
    and keep.
    """
    settings = config.optimizer
    average = {"use_ema": True, "ema_momentum": settings.ema} if settings.ema else {}  # see core.callbacks
    mixed = config.augment and (config.cutmix > 0 or config.mixup > 0)  # soft training labels
    if settings.name == "adam":  # the seed's: a constant rate
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, **average)
    else:
        rate = config.learning_rate
        if total_steps is not None:
            rate = rate_schedule(settings.name, rate, max(total_steps, 1))
        decay = {"learning_rate": rate, "weight_decay": settings.weight_decay, **average}
        optimizer = _decaying_optimizer(settings, decay)
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=settings.label_smoothing),
        metrics=[MajorityAccuracy(name="accuracy") if mixed else "accuracy"],  # one name: history keeps its keys
    )
    return model


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save atomically, so a crash never leaves half a model; a failed save removes its temp file and raises a
    `core.config.WriteError` naming the model file and what happened (disk full, permission denied, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, model.save)


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a .keras file we wrote, with safe_mode on; never call this on a user's upload."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise ModelError(f"{path}: not a Keras model (a .keras file is a zip archive)")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, KeyError, OSError) as err:  # Keras's refusals: safe_mode, an archive it cannot read
        raise ModelError(f"{path}: not a model this project can load: {err}") from err


def model_pipeline(model: keras.Model) -> PipelineConfig:
    """The preprocessing a saved model expects, read from the model itself."""
    return PipelineConfig.from_input_shape(model.input_shape)
