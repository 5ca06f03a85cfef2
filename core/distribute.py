"""Training on several devices with tf.distribute: the strategy, the batch arithmetic it needs, and the one
workaround for Keras's multi-worker fit (keras-team/keras#20585), which depends on the keras pin in
requirements.txt (>=3.15.1,<4). Re-check `multi_worker_fit` whenever that pin moves."""

from __future__ import annotations

import os

from core.errors import DatasetError


def distribution_strategy():
    """MultiWorkerMirrored with TF_CONFIG, Mirrored over several GPUs, else the default strategy."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def batch_sizes(n: int, batch_size: int, replicas: int = 1) -> list[int]:
    """The sizes of the batches that cover n images, each one splittable across the replicas."""
    # With R replicas tf.distribute splits every global batch R ways, and:
    # - a batch of fewer than R images leaves a replica empty, which fails (AddN shape mismatch);
    # - Keras builds the model by averaging the first distributed batch across replicas, so that batch must
    #   split evenly (keras 3.15 TF trainer, _maybe_symbolic_build).
    # So every batch but the last is a multiple of R, and the last holds at least R images.
    if n < replicas or (n < 2 * replicas and n % replicas):
        raise DatasetError(f"{n} images cannot be split evenly across {replicas} replicas; use more images")
    whole = n - n % replicas
    sizes = [batch_size] * (whole // batch_size) + ([whole % batch_size] if whole % batch_size else [])
    if n % replicas:
        if len(sizes) == 1:
            sizes = [sizes[0] - replicas, replicas]
        sizes[-1] += n % replicas
    return sizes


def fit(model, strategy, train_data, **kwargs) -> None:
    """model.fit(train_data, **kwargs), under a MultiWorkerMirroredStrategy through `multi_worker_fit`."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        multi_worker_fit(model, strategy, train_data, **kwargs)
    else:
        model.fit(train_data, **kwargs)


def multi_worker_fit(model, strategy, train_data, **kwargs) -> None:
    """fit() under MultiWorkerMirroredStrategy, around keras-team/keras#20585 (open in Keras 3.15).

    Keras fails twice in fit() under this strategy:
    - fit() starts by averaging the first distributed batch with strategy.reduce() to learn its shapes, which
      this strategy cannot do for an (x, y) pair. So the model, loss, metrics and optimizer are built here from
      one batch's shapes, and fit() finds the strategy through the scope instead of the model, skipping that.
    - each step averages its logs across workers over axis 0, which scalars lack. So the steps return them
      with one axis. Epoch logs are read from the metrics themselves, summed over all replicas.
    Both touch Keras privates (_symbolic_build, _distribute_strategy): this is the only place that does.
    """
    import tensorflow as tf

    def with_axis(step):
        return lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    train_step, test_step = model.train_step, model.test_step
    with strategy.scope():
        model._symbolic_build(data_batch=train_data[0])
        model._distribute_strategy = None
        model.train_step, model.test_step = with_axis(train_step), with_axis(test_step)
        try:
            model.fit(train_data, **kwargs)
        finally:
            model._distribute_strategy = strategy
            del model.train_step, model.test_step
