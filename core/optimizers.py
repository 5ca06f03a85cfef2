"""Optimisers with a higher learning rate for batch norm's betas and the biases (airbench, Jordan 2024: 64x with
SGD), on the list of #17. Saved models never carry them: `core.model.load_model` loads without compiling."""

from __future__ import annotations

import keras

BIAS_NAMES = ("beta", "bias")  # batch norm's shift and the convs' and dense layers' biases


class _BiasRate:
    """Steps the variables named in BIAS_NAMES at bias_rate times the rate the schedule gives, the rest at it."""

    def __init__(self, *args, bias_rate: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias_rate = bias_rate

    def update_step(self, gradient, variable, learning_rate):
        # The TensorFlow backend passes the raw tf.Variable ("beta:0"): the Keras variable it stands for is named.
        if self._trainable_variables[self._get_variable_index(variable)].name in BIAS_NAMES:
            learning_rate = learning_rate * self.bias_rate
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "bias_rate": self.bias_rate}


@keras.saving.register_keras_serializable(package="cvd")
class BiasRateAdamW(_BiasRate, keras.optimizers.AdamW):
    """AdamW with `bias_rate` for batch norm's betas and the biases."""


@keras.saving.register_keras_serializable(package="cvd")
class BiasRateSGD(_BiasRate, keras.optimizers.SGD):
    """SGD with `bias_rate` for batch norm's betas and the biases."""
