"""Honest numbers: Wilson intervals against published values, reliability bins and ECE on outputs we know."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics import (
    ONE_LOOK,
    Accuracy,
    expected_calibration_error,
    held_out,
    recorded_accuracies,
    reliability_bins,
    wilson_interval,
)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson score).
@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombes_published_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_stays_inside_0_and_1_and_narrows_with_more_photos():
    assert wilson_interval(29, 29) == pytest.approx((0.8830, 1.0), abs=5e-5)  # all right: the top end is exactly 1
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no photos: nothing is known
    few, many = wilson_interval(61, 120), wilson_interval(6100, 12000)
    assert few[0] < 61 / 120 < few[1] and many[0] < 0.5083 < many[1]
    assert many[1] - many[0] < (few[1] - few[0]) / 5
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_an_accuracy_reads_with_its_interval_and_what_it_was_measured_on():
    # The run: 50.8% of 120 photos is anything from 42% to 60%.
    score = Accuracy(61, 120, held_out(120, "train.zip"))
    assert str(score) == "50.8% (95% CI 42.0–59.6%) on the 120 photos of train.zip held out from training"
    assert Accuracy.from_share(0.9645, 2000, "x").correct == 1929


def test_reliability_bins_and_ece_on_outputs_with_a_known_answer():
    # 10 photos at P(dog) 0.95, 9 of them dogs: 95% sure, 90% right. Two at 0.55/0.45 (55% sure): one right.
    prob = [0.95] * 10 + [0.55, 0.45]
    true = [1] * 9 + [0] + [1, 1]
    bins = reliability_bins(prob, true)
    assert bins[["low", "high", "photos", "correct"]].values.tolist() == [[0.5, 0.6, 2, 1], [0.9, 1.0, 10, 9]]
    assert bins.confidence.tolist() == pytest.approx([0.55, 0.95])
    assert bins.accuracy.tolist() == pytest.approx([0.5, 0.9])
    # ECE = 2/12 * |0.5 - 0.55| + 10/12 * |0.9 - 0.95|
    assert expected_calibration_error(prob, true) == pytest.approx(2 / 12 * 0.05 + 10 / 12 * 0.05)


def test_a_perfectly_calibrated_model_has_no_calibration_error_and_labels_can_be_swapped():
    rng = np.random.default_rng(0)
    # A model that says 0.8 for dogs and is right 80% of the time, and 0.1 for cats right 90% of the time.
    true = np.r_[np.ones(800), np.zeros(200), np.zeros(900), np.ones(100)].astype(int)
    prob = np.r_[np.full(1000, 0.8), np.full(1000, 0.1)]
    assert expected_calibration_error(prob, true) == pytest.approx(0.0, abs=1e-12)
    shuffled = rng.permutation(len(true))
    mirrored = expected_calibration_error(1 - prob[shuffled], 1 - true[shuffled])
    assert mirrored == pytest.approx(expected_calibration_error(prob, true))  # cat and dog are symmetric
    assert reliability_bins([1.0, 0.5], [1, 1]).photos.tolist() == [1, 1]  # both ends land inside a bin


def test_a_saved_model_reports_the_apps_accuracy_and_keeps_the_single_look_for_the_tooltip():
    meta = {
        "n_val": 2000,
        "dataset": {"source": "train.zip"},
        "metrics": {
            "best_val_accuracy": 0.962,
            "accuracy": 0.9645,
            "accuracy_n": 2000,
            "measured_on": "the 2,000 photos of train.zip held out from training",
        },
    }
    app, single = recorded_accuracies(meta)
    assert (app.correct, app.n, app.on) == (1929, 2000, "the 2,000 photos of train.zip held out from training")
    assert app.how.startswith("as the app predicts")
    assert (single.correct, single.how) == (1924, ONE_LOOK)
    # Saved before counts and plain wording: the count comes from the split, the jargon is cut off.
    meta["metrics"].pop("accuracy_n")
    meta["metrics"]["measured_on"] += ", predicted as the app, the CLI and the API predict (flip TTA: unsure)"
    assert recorded_accuracies(meta)[0].on == "the 2,000 photos of train.zip held out from training"
    assert recorded_accuracies({"metrics": {"accuracy": 0.5}}) == (None, None)  # no count: no interval to claim
