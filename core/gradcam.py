"""Grad-CAM: where in a photo the model looked, from the gradients at its last convolutional layer."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from core.config import CLASS_NAMES
from core.pipeline import decode_original, preprocess

if TYPE_CHECKING:  # keras and TensorFlow load lazily, as in core.predict
    import keras

    from core.predict import Predictor

# The overlay's colour scale, low to high. Jet is what Grad-CAM papers use, so readers know it already.
COLORMAP = cv2.COLORMAP_JET
LEGEND = "blue: little influence, through green and yellow, to red: where the model looked most"
OVERLAY_ALPHA = 0.45

_cams: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_cams_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class Explanation:
    """A photo with its Grad-CAM heatmap blended in, both at the photo's original size, and the prediction."""

    overlay: np.ndarray  # RGB uint8, (height, width, 3)
    heatmap: np.ndarray  # float32 in [0, 1], (height, width); 1 = where the model looked most
    prob_dog: float
    label: str


def last_conv_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's last 2-D convolution, found by type: layer names differ between presets."""
    from keras import layers

    conv_types = (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D)
    for layer in reversed(model.layers):
        if isinstance(layer, conv_types):
            return layer
    raise ValueError(f"model {model.name!r} has no convolutional layer to explain")


class _CamFunction:
    # One traced gradient function per model: building and tracing it costs far more than running it.
    def __init__(self, model):
        import keras
        import tensorflow as tf

        conv = last_conv_layer(model)
        head = model.layers[-1]
        # Differentiate the logit, not the probability: a confident sigmoid rounds to 1.0 in float32 and its
        # gradient vanishes, which would leave an empty heatmap exactly for the clearest photos.
        from_logit = isinstance(head, keras.layers.Dense) and getattr(head.activation, "__name__", "") == "sigmoid"
        if isinstance(model, keras.Sequential):
            # A Sequential rebuilds its graph on every add(), loading included, so a layer's first output may
            # belong to a stale graph that never reaches the head. Replaying the layers gives one connected graph.
            inputs = keras.Input(model.input_shape[1:])
            y, maps, head_input = inputs, None, None
            for layer in model.layers:
                head_input = y if layer is head else head_input
                y = layer(y)
                maps = y if layer is conv else maps
            outputs = [maps, head_input if from_logit else y]
        else:
            inputs, outputs = model.inputs, [conv.output, head.input if from_logit else model.outputs[0]]
        # A sub-model sharing the model's layers: its call with training=False keeps augmentation, dropout and
        # batch-norm statistics in inference mode, exactly as in prediction.
        grad_model = keras.Model(inputs, outputs)
        spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)

        @tf.function(input_signature=[spec])
        def maps_and_grads(x):
            with tf.GradientTape() as tape:
                maps, out = grad_model(x, training=False)
                if from_logit:
                    logit = tf.matmul(out, head.kernel) + head.bias
                else:
                    p = tf.clip_by_value(tf.cast(out, tf.float32), 1e-7, 1 - 1e-7)
                    logit = tf.math.log(p) - tf.math.log(1 - p)
                logit = tf.reshape(logit, [-1])[0]
                # Explain the predicted class: the dog score for a dog, the cat score (-logit) for a cat.
                score = tf.where(logit >= 0, logit, -logit)
            return maps[0], tape.gradient(score, maps)[0]

        self.fn = maps_and_grads
        self.input_shape = tuple(model.input_shape[1:])
        after = model.layers[model.layers.index(conv) + 1 :]
        self.per_position = any(isinstance(layer, keras.layers.Flatten) for layer in after)
        self.fn(np.zeros((1, *self.input_shape), np.float32))  # trace now, not in racing first calls


def _cam_function(model: keras.Model) -> _CamFunction:
    with _cams_lock:
        cam = _cams.get(model)
        if cam is None:
            cam = _cams[model] = _CamFunction(model)
        return cam


def gradcam(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Grad-CAM heatmap for one preprocessed input (H, W, C): float32 (H, W) in [0, 1], 1 = most important."""
    cam_fn = _cam_function(model)
    x = np.asarray(x, np.float32)
    if x.shape != cam_fn.input_shape:
        raise ValueError(f"input shape {x.shape} does not match the model's {cam_fn.input_shape}")
    maps, grads = (np.asarray(t, np.float64) for t in cam_fn.fn(x[None]))
    # Grad-CAM weighs each channel by its gradient averaged over the map. A Flatten + Dense head (the seed)
    # weighs every position separately, and that average mixes those weights until they can cancel to nothing,
    # so there the gradient is kept per position (HiResCAM, Draelos & Carin 2020), which for a head that
    # globally pools the last conv gives the same map as Grad-CAM.
    weights = grads if cam_fn.per_position else grads.mean(axis=(0, 1), keepdims=True)
    cam = np.maximum((maps * weights).sum(axis=-1), 0.0)  # only evidence *for* the class counts
    cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    height, width = x.shape[:2]
    return _resize_unit(cam, width, height)


def _resize_unit(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    # Scale after resizing, so the peak is exactly 1 at the size shown. All-zero gradients (a dead or saturated
    # net) mean no evidence anywhere: an all-zero map, not 0/0.
    cam = np.maximum(cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR), 0.0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] heatmap as RGB uint8 in the overlay's colours."""
    levels = np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAP), cv2.COLOR_BGR2RGB)


def legend(width: int = 256, height: int = 16) -> np.ndarray:
    """The colour scale as an RGB strip, little influence (left) to most (right); see LEGEND."""
    return colorize(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)))


def overlay(photo: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a colourised heatmap into an RGB photo of the same size."""
    return cv2.addWeighted(colorize(heatmap), alpha, photo, 1.0 - alpha, 0.0)


def explain(predictor: Predictor, data: bytes) -> Explanation:
    """Predict one photo and show where the model looked, at the photo's original size; ImageError if bad."""
    x = preprocess(data, predictor.pipeline)
    photo = decode_original(data, predictor.pipeline.max_pixels)
    cam = gradcam(predictor.model, x)
    prob = float(predictor.probabilities(x[None])[0])
    heatmap = _resize_unit(cam, photo.shape[1], photo.shape[0])
    return Explanation(overlay(photo, heatmap), heatmap, prob, CLASS_NAMES[int(prob >= 0.5)])
