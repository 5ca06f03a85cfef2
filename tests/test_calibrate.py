"""Calibration (core.calibrate) and the two data steps of a training run: calibration part and corrections."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.calibrate import cross_fits, fit_calibration, fold_into, logit
from core.corrections import Corrections
from core.data import Source, load_dataset
from core.metrics import expected_calibration_error
from core.model import build_model, load_model
from core.pipeline import PipelineConfig, to_model_input
from core.train import TrainConfig, split_indices, train

SLICE = 160


def _overconfident(n: int, temperature: float, shift: float = 0.0, seed: int = 0):
    """Logits whose true P(dog) is sigmoid((z - shift) / temperature): a model reporting sigmoid(z) is miscalibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    truth = 1 / (1 + np.exp(-(z - shift) / temperature))
    return 1 / (1 + np.exp(-z)), (rng.random(n) < truth).astype(int)


def test_temperature_scaling_recovers_the_temperature_and_removes_the_calibration_error():
    prob, y = _overconfident(20_000, temperature=2.5)
    fit = fit_calibration(prob, y, "synthetic", "temperature")
    assert fit.temperature == pytest.approx(2.5, rel=0.08)
    assert fit.shift == 0.0
    assert fit.ece_before > 0.05 > 0.01 > fit.ece_after
    assert np.array_equal(fit.apply(prob) >= 0.5, prob >= 0.5)  # one scale never changes a label


def test_platt_scaling_also_moves_the_threshold_of_a_biased_model():
    prob, y = _overconfident(20_000, temperature=1.0, shift=1.5)  # the model says "dog" too readily
    fit = fit_calibration(prob, y, "synthetic", "platt")
    assert fit.shift == pytest.approx(-1.5, abs=0.15)
    assert fit.ece_after < fit.ece_before / 3
    calibrated = fit.apply(prob) >= 0.5
    assert (calibrated == y).mean() > ((prob >= 0.5) == y).mean()


def test_cross_fitting_never_scores_a_photo_with_a_fit_that_saw_it():
    prob, y = _overconfident(1_000, temperature=2.0)
    fits = cross_fits(prob, y, "temperature", folds=4)
    parts = [part for part, _ in fits]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1_000))  # each photo in exactly one part
    assert all(fit.n == 1_000 - len(part) for part, fit in fits)


def test_a_calibration_needs_both_classes_and_a_known_method():
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.array([0.9, 0.8]), np.array([1, 1]), "two dogs")
    with pytest.raises(ValueError, match="method"):
        fit_calibration(np.array([0.9, 0.1]), np.array([1, 0]), "x", "isotonic")


def test_logits_of_saturated_probabilities_stay_finite():
    assert np.isfinite(logit(np.array([0.0, 1.0, 0.5]))).all()


def test_folding_makes_the_model_itself_output_the_calibrated_probability(small_zip):
    data = load_dataset(small_zip, PipelineConfig(32, "rgb"), limit=64, seed=1, cache_dir=False)
    model = build_model(TrainConfig.for_preset("best", image_size=32))
    x = to_model_input(data.x)
    before = model.predict(x, verbose=0).reshape(-1)
    fit = fit_calibration(before, data.y, "64 photos", "platt")
    fold_into(model, fit)
    after = model.predict(x, verbose=0).reshape(-1)
    assert np.allclose(after, fit.apply(before), atol=1e-5)


# --- a training run with a calibration part and corrections ------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_run(small_zip, tmp_path_factory):
    """A short seed run on a slice of small_zip that holds a quarter of its training photos out to calibrate."""
    data = load_dataset(small_zip, limit=SLICE, seed=42, cache_dir=False)
    train_idx, _ = split_indices(data.y, 0.2, 42)
    cfg = TrainConfig(epochs=2, limit=SLICE, calibration_split=0.25)
    result = train(small_zip, cfg, runs_dir=tmp_path_factory.mktemp("runs"))
    return result, len(train_idx), data


def test_the_saved_model_is_calibrated_on_photos_it_neither_trained_nor_validated_on(calibrated_run):
    result, n_train, data = calibrated_run
    meta = result.run.meta
    record, names = meta["calibration"], meta["calibration_names"]
    assert record["n"] == meta["n_calibration"] == len(names) == round(n_train * 0.25)
    assert meta["n_train"] + len(names) == n_train
    assert not set(names) & set(meta["validation_names"])
    assert "held out from training for calibration" in record["on"]
    assert record["method"] == "platt"
    # The saved model is the folded one: on the calibration photos its ECE is the fit's "after" (or, when a
    # 2-epoch net carries no signal and nothing is folded, its "before").
    at = {str(n): i for i, n in enumerate(data.names)}
    idx = np.array([at[n] for n in names])
    prob = load_model(result.run.model_path).predict(to_model_input(data.x[idx]), verbose=0).reshape(-1)
    expected = record["ece_after"] if record["folded"] else record["ece_before"]
    assert expected_calibration_error(prob, data.y[idx]) == pytest.approx(expected, abs=2e-3)


@pytest.fixture(scope="module")
def corrected_run(small_zip, tmp_path_factory):
    """A short run with a corrections file touching both parts, an extra dataset and a calibration part."""
    data = load_dataset(small_zip, limit=SLICE, seed=42, cache_dir=False)
    train_idx, val_idx = split_indices(data.y, 0.2, 42)
    fingerprint = Source(small_zip).fingerprint()
    corrections = Corrections(fingerprint, "small-train.zip")
    picked = {
        "relabel_val": str(data.names[val_idx[0]]),
        "exclude_val": str(data.names[val_idx[1]]),
        "exclude_train": str(data.names[train_idx[0]]),
    }
    corrections.set(picked["relabel_val"], "dog" if "/cat." in picked["relabel_val"] else "cat")
    corrections.set(picked["exclude_val"], "exclude")
    corrections.set(picked["exclude_train"], "exclude")
    path = tmp_path_factory.mktemp("corrections") / f"{fingerprint}.json"
    path.write_text(json.dumps(corrections.to_json()))
    extra = tmp_path_factory.mktemp("my-photos")  # My photos' layout: cat/<sha>.jpg, dog/<sha>.jpg
    with zipfile.ZipFile(small_zip) as z:
        for name in [n for n in z.namelist() if n.endswith(".jpg")][-6:]:
            (extra / ("dog" if "/dog." in name else "cat")).mkdir(exist_ok=True)
            (extra / ("dog" if "/dog." in name else "cat") / Path(name).name).write_bytes(z.read(name))
    cfg = TrainConfig(epochs=1, limit=SLICE, calibration_split=0.25, corrections=str(path), extras=(str(extra),))
    result = train(small_zip, cfg, runs_dir=tmp_path_factory.mktemp("runs"))
    return result, picked, (len(train_idx), len(val_idx))


def test_corrections_and_extras_train_and_corrected_photos_never_validate(corrected_run):
    result, picked, (n_train, n_val) = corrected_run
    meta = result.run.meta
    validation = set(meta["validation_names"])
    assert picked["relabel_val"] not in validation and picked["exclude_val"] not in validation
    assert meta["n_val"] == n_val - 2  # the uncorrected run's validation photos, less the two corrected ones
    # training: the uncorrected part, less the excluded photo, plus the relabelled one and the 6 extras
    assert meta["n_train"] + meta["n_calibration"] == n_train - 1 + 1 + 6
    assert not {n for n in meta["calibration_names"] if ":" in n}  # never calibrated on an extra
    record = meta["training_data"]
    assert record["corrections"]["excluded"] == 2 and record["corrections"]["relabelled"] == 1
    assert [e["photos"] for e in record["extras"]] == [6] and record["forced_train"] == 1 + 6


def test_a_saved_model_is_calibrated_after_training_on_half_its_held_out_photos_and_reports_on_the_rest(
    saved_run, small_zip
):
    from core.calibrate import calibrate_saved
    from core.errors import DatasetError, ModelError
    from core.predict import Predictor, evaluate
    from core.runs import model_meta

    path, before = saved_run.model_path, saved_run.meta
    held = before["validation_names"]
    single = evaluate(Predictor(path, tta="off"), small_zip, held).predictions.set_index("file").prob_dog
    found = calibrate_saved(path, small_zip)
    meta = model_meta(path)
    fit, report = meta["calibration_names"], meta["validation_names"]
    assert sorted(fit + report) == sorted(held) and not set(fit) & set(report)  # the same photos, in two parts
    for kind in ("/cat.", "/dog."):  # half of each class fits
        assert sum(kind in n for n in fit) == round(sum(kind in n for n in held) / 2)
    assert meta["n_val"] == len(report) and meta["metrics"]["accuracy_n"] == len(report)  # reports on the rest
    assert set(meta["regression_sample"]) <= set(report)
    assert meta["calibration"]["n"] == len(fit) and meta["before_calibration"]["n_val"] == len(held)
    after = evaluate(Predictor(path, tta="off"), small_zip, held).predictions.set_index("file").prob_dog
    np.testing.assert_allclose(after, found.apply(single.to_numpy()), atol=2e-5)  # folded into the file itself

    with pytest.raises(ModelError, match="calibrated already"):
        calibrate_saved(path, small_zip)
    other = small_zip.with_name("other.zip")
    with zipfile.ZipFile(small_zip) as src, zipfile.ZipFile(other, "w") as dst:
        for name in src.namelist()[:40]:
            dst.writestr(name, src.read(name))
    meta_path = path.with_suffix(".json") if path.with_suffix(".json").exists() else path.parent / "run.json"
    meta_path.write_text(json.dumps(before))  # as it was, then asked to calibrate on another dataset
    with pytest.raises(DatasetError, match="not the dataset"):
        calibrate_saved(path, other)


def test_the_cli_calibrates_a_saved_model_and_refuses_to_do_it_twice(saved_run, small_zip, capsys):
    from core.cli import main
    from core.runs import model_meta

    argv = ["calibrate", str(small_zip), "--model", str(saved_run.model_path)]
    assert main(argv) == 0
    said, meta = capsys.readouterr().out, model_meta(saved_run.model_path)
    assert said.startswith(f"platt scaling fitted on {len(meta['calibration_names'])} of the ")
    assert f"It now reports on the other {len(meta['validation_names'])}: " in said
    assert main(argv) == 2
    assert "is calibrated already" in capsys.readouterr().err
