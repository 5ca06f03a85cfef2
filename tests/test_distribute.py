"""Training under tf.distribute: the CPU split into 2 logical devices, one epoch under MirroredStrategy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.config import ROOT
from core.distribute import batch_sizes

# Logical devices can only be configured before TensorFlow initialises, so the run happens in a fresh
# interpreter; this test process (and every other test) keeps its single CPU device.
MIRRORED_RUN = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from core.data import load_dataset
    from core.settings import TrainConfig
    from core.train import train

    source, runs_dir = sys.argv[1], sys.argv[2]
    config = TrainConfig(epochs=1, batch_size=36, validation_split=0.3, limit=123, image_size=48)
    dataset = load_dataset(source, config.pipeline, limit=config.limit, seed=config.seed, cache_dir=False)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    starts = []
    result = train(
        dataset, config, progress=lambda e: starts.append(e.logs) if e.kind == "start" else None,
        runs_dir=runs_dir, strategy=strategy,
    )
    print(json.dumps({"start": starts[0], "run": str(result.run.path), "history": result.history.to_dict("records")}))
    """
)


@pytest.fixture(scope="module")
def mirrored_run(small_zip, tmp_path_factory) -> dict:
    """One epoch of the seed preset trained under MirroredStrategy over 2 logical CPUs, in a subprocess."""
    runs_dir = tmp_path_factory.mktemp("mirrored-runs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)  # this test is about MirroredStrategy, not a cluster
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN, str(small_zip), str(runs_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_share_a_global_batch(mirrored_run):
    start = mirrored_run["start"]
    meta = json.loads((Path(mirrored_run["run"]) / "run.json").read_text())
    assert start["replicas"] == 2 and meta["replicas"] == 2
    assert start["global_batch"] == 36 and start["per_replica_batch"] == 18
    assert meta["per_replica_batch"] == 18
    # 123 images, 30% held out per class: 37 validation images, so the old 36 + 1 split would leave a replica empty.
    assert (start["n_train"], start["n_val"]) == (86, 37)


def test_reported_metrics_match_the_saved_model(mirrored_run, small_zip):
    from core.model import load_model
    from core.pipeline import PipelineConfig
    from core.predict import Predictor, evaluate

    history = mirrored_run["history"]
    assert len(history) == 1
    epoch = history[0]
    assert np.isfinite(epoch["loss"]) and np.isfinite(epoch["val_loss"])

    run = Path(mirrored_run["run"])
    names = json.loads((run / "run.json").read_text())["validation_names"]
    assert len(names) == 37
    ev = evaluate(Predictor(run / "model.keras"), small_zip, names=names)
    assert ev.n == 37
    # Keras thresholds with p > 0.5 and the Predictor with p >= 0.5; float noise may flip at most one image.
    assert abs(ev.accuracy - epoch["val_accuracy"]) <= 1 / 37 + 1e-6

    # The loss is averaged over all 37 images across both replicas, not summed nor taken from one replica.
    frame = ev.predictions
    p = np.clip(frame.prob_dog.to_numpy(), 1e-7, 1 - 1e-7)
    y = frame.true.to_numpy()
    bce = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    assert bce == pytest.approx(epoch["val_loss"], rel=1e-3, abs=1e-4)
    assert load_model(run / "model.keras").input_shape[1:] == PipelineConfig(48).input_shape


def test_batches_split_evenly_across_replicas():
    assert batch_sizes(100, 32) == [32, 32, 32, 4]  # one device: the usual batches
    assert batch_sizes(37, 36, 2) == [34, 3]  # first batch splits evenly; none leaves a replica empty
    assert batch_sizes(87, 36, 2) == [36, 36, 15]
    assert batch_sizes(9, 32, 4) == [4, 5]
    for n in [4, *range(8, 300)]:
        sizes = batch_sizes(n, 32, 4)
        assert sum(sizes) == n and sizes[0] % 4 == 0 and min(sizes) >= 4
    with pytest.raises(ValueError, match="replicas"):
        batch_sizes(5, 32, 4)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_a_two_worker_cluster_trains_with_the_same_command(small_zip, tmp_path):
    # Two workers on localhost, each given TF_CONFIG, run the very command a single machine runs.
    workers = [f"localhost:{port}" for port in free_ports(2)]
    command = [sys.executable, "-m", "core", "train", str(small_zip)]
    command += ["--limit", "100", "--epochs", "1", "--batch-size", "16", "--image-size", "48"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": json.dumps(tf_config),
            "CVD_RUNS_DIR": str(tmp_path / f"runs{index}"),
            "CVD_DATA_DIR": str(tmp_path / f"data{index}"),
        }
        procs.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-4000:]
            assert "2 replica(s), global batch 16 (8 per replica)" in err
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    runs = [Path(out.strip().splitlines()[-1]) for out in outputs]
    metas = [json.loads((run / "run.json").read_text()) for run in runs]
    assert [m["replicas"] for m in metas] == [2, 2]
    # One model, trained in step on both workers: the same numbers, and the same measured outcome.
    learned = [
        {k: v for k, v in m["metrics"].items() if isinstance(v, float) and k != "train_images_per_s"} for m in metas
    ]
    assert learned[0] == pytest.approx(learned[1], rel=1e-5)
    assert metas[0]["metrics"]["confusion"] == metas[1]["metrics"]["confusion"]

    from core.predict import Predictor, evaluate

    names = metas[0]["validation_names"]
    ev = evaluate(Predictor(runs[0] / "model.keras"), small_zip, names=names)
    assert ev.n == len(names) == metas[0]["n_val"]
    # Both workers' halves count: the accuracy is over every validation image, not one worker's share.
    assert abs(ev.accuracy - metas[0]["metrics"]["best_val_accuracy"]) <= 1 / ev.n + 1e-6
