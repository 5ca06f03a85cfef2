"""The command line, run as users run it: `python -m core ...` in a subprocess, on the real Kaggle zips."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_jpeg

from core import config


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory) -> Path:
    """Runs, caches and (empty) shipped-model folders of the subprocesses, all in temp."""
    home = tmp_path_factory.mktemp("cli")
    for sub in ("runs", "data", "models"):
        (home / sub).mkdir()
    return home


def run_cli(home: Path, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CVD_RUNS_DIR": str(home / "runs"),
        "CVD_DATA_DIR": str(home / "data"),
        "CVD_MODELS_DIR": str(home / "models"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)],
        cwd=config.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0] == proc.stderr.strip().splitlines()[-1]
    assert match in errors[0]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(cli_home, train_zip) -> subprocess.CompletedProcess:
    """The seed preset trained for 1 epoch on 300 photos of Kaggle's train.zip, through the CLI, saved with --out."""
    out = cli_home / "shipped" / "mine.keras"
    return run_cli(cli_home, "train", train_zip, "--epochs", "1", "--limit", "300", "--seed", "1", "--out", out)


@pytest.fixture(scope="module")
def model_path(trained) -> Path:
    assert trained.returncode == 0, trained.stderr
    return Path(trained.stdout.strip().splitlines()[-1]) / "model.keras"


@pytest.fixture(scope="module")
def eval_zip(small_zip, tmp_path_factory) -> Path:
    """300 labeled real photos, one corrupt labeled file and one unlabeled photo."""
    path = tmp_path_factory.mktemp("cli-eval") / "eval.zip"
    with zipfile.ZipFile(small_zip) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("train/dog.99999.jpg", b"\xff\xd8\xff\xe0 cut short")
        dst.writestr("train/extra/777.jpg", make_jpeg())
    return path


# --- scan -----------------------------------------------------------------------------------------------------------


def test_scan_counts_classes_and_lists_unlabeled_and_skipped_files(cli_home, bad_inputs):
    proc = run_cli(cli_home, "scan", bad_inputs / "macos-made.zip")
    assert proc.returncode == 0, proc.stderr
    assert "2 cats, 1 dogs, 1 unlabeled, 0 skipped" in proc.stdout
    assert "unlabeled train/12345.jpg" in proc.stdout
    assert "__MACOSX" not in proc.stdout and "DS_Store" not in proc.stdout and "Thumbs" not in proc.stdout
    assert last_json(proc.stdout) == {"cats": 2, "dogs": 1, "unlabeled": 1, "skipped": 0, "total": 4}


def test_scan_gives_each_hostile_file_its_reason(cli_home, bad_inputs):
    proc = run_cli(cli_home, "scan", bad_inputs)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, reason in [
        ("zero-byte.jpg", "empty"),
        ("text-named.jpg", "not an image"),
        ("truncated.jpg", "truncated"),
        ("bomb-20000x20000.png", "too many pixels"),
    ]:
        assert any(line.strip().startswith(f"{name}:") and reason in line for line in lines), name
    assert last_json(proc.stdout)["unlabeled"] == 2  # rgba.png and gray16.png decode, with no label


def test_scan_refuses_zip_slip_entries(cli_home, bad_inputs):
    proc = run_cli(cli_home, "scan", bad_inputs / "zip-slip.zip")
    assert proc.returncode == 0
    assert "  ../../escaped.cat.1.jpg: refused: unsafe path" in proc.stdout
    assert "  /abs/dog.1.jpg: refused: unsafe path" in proc.stdout
    assert last_json(proc.stdout) == {"cats": 1, "dogs": 0, "unlabeled": 0, "skipped": 2, "total": 3}


# --- train, evaluate, predict, submission: end to end ---------------------------------------------------------------


def test_train_on_kaggles_train_zip_prints_progress_and_the_run_folder(trained, model_path, cli_home):
    assert trained.returncode == 0, trained.stderr
    run_dir = model_path.parent
    assert run_dir.parent == cli_home / "runs"
    assert sorted(p.name for p in run_dir.iterdir()) == ["batches.csv", "history.csv", "model.keras", "run.json"]
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["n_images"], meta["n_train"], meta["n_val"]) == (300, 240, 60)
    assert meta["config"]["epochs"] == 1 and meta["config"]["preset"] == "seed"
    assert meta["status"] == "finished"
    assert "training seed: 240 train / 60 validation" in trained.stderr
    assert "epoch 1/1" in trained.stderr
    assert "Traceback" not in trained.stderr


def test_evaluate_prints_accuracy_per_class_confusion_and_a_final_json_line(cli_home, model_path, eval_zip):
    proc = run_cli(cli_home, "evaluate", eval_zip, "--model", model_path)
    assert proc.returncode == 0, proc.stderr
    result = last_json(proc.stdout)
    assert result["n"] == 300 and result["skipped"] == 1
    assert 0.0 <= result["accuracy"] <= 1.0
    confusion = result["confusion"]
    assert [sum(row) for row in confusion] == [150, 150]
    assert result["accuracy"] == pytest.approx((confusion[0][0] + confusion[1][1]) / 300)
    assert set(result["per_class"]) == {"cat", "dog"}
    assert result["model"] == str(model_path)
    assert f"accuracy {result['accuracy']:.4f} on 300 images (1 skipped)" in proc.stdout
    low, high = result["ci95"]  # the 95% Wilson interval around it, and what it was measured on
    assert low < result["accuracy"] < high and high - low > 0.05  # 300 photos pin an accuracy to about ±5 points
    assert f"95% CI {low * 100:.1f}–{high * 100:.1f}%" in proc.stdout
    assert result["measured_on"] == f"the 300 labeled photos of {Path(eval_zip).name}"
    assert 0 <= result["calibration_error"] <= 1 and set(result["per_class_ci95"]) == {"cat", "dog"}


def test_model_defaults_to_the_newest_run_until_a_model_ships(cli_home, model_path, bad_inputs):
    proc = run_cli(cli_home, "evaluate", bad_inputs / "macos-made.zip")
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout)["model"] == str(model_path)
    assert last_json(proc.stdout)["n"] == 3


def test_without_a_model_the_cli_uses_the_one_made_default_for_everyone(model_path, bad_inputs, tmp_path, monkeypatch):
    from core import registry

    for sub in ("runs", "data", "models"):
        (tmp_path / sub).mkdir()
    chosen = tmp_path / "runs" / model_path.parent.name
    shutil.copytree(model_path.parent, chosen)
    shutil.copytree(model_path.parent, tmp_path / "runs" / f"{chosen.name[:-5]}-zzzz")  # newer: the default so far
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")
    registry.set_default_model(chosen.name, by="a session on the Runs page")
    proc = run_cli(tmp_path, "evaluate", bad_inputs / "macos-made.zip")
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout)["model"] == str(chosen / "model.keras")  # the dashboard's rule, not the newest run


def test_train_out_saves_the_model_with_its_accuracy_as_the_app_predicts(cli_home, model_path):
    out = cli_home / "shipped" / "mine.keras"
    assert out.read_bytes() == model_path.read_bytes()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model_file"] == "mine.keras" and len(meta["validation_names"]) == meta["n_val"] == 60
    metrics = meta["metrics"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["accuracy"] * 60 == pytest.approx(round(metrics["accuracy"] * 60))
    assert metrics["measured_on"] == "the 60 photos of train.zip held out from training"
    assert metrics["accuracy_n"] == 60 and metrics["predicted"].startswith("as the app predicts")


def test_predict_labels_files_folders_and_zips_with_an_error_row_per_unusable_file(
    cli_home, model_path, bad_inputs, tmp_path
):
    photo = tmp_path / "my dog.jpg"
    photo.write_bytes(make_jpeg(400, 300, seed=1))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(make_jpeg(seed=2))
    (folder / "b.png").write_bytes(make_jpeg(seed=3))  # JPEG bytes under a PNG name still decode
    out = tmp_path / "out.csv"
    sources = [photo, folder, bad_inputs, bad_inputs / "zip-slip.zip", bad_inputs / "macos-made.zip"]
    proc = run_cli(cli_home, "predict", *sources, tmp_path / "missing.jpg", "--model", model_path, "--csv", out)

    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["file", "label", "prob_dog", "error"]
    assert len(frame) == 1 + 2 + 9 + 3 + 4 + 1
    assert f"wrote {len(frame)} rows to {out}" in proc.stderr
    errors = dict(zip(frame.file, frame.error, strict=True))
    expected_errors = {
        "zero-byte.jpg": "empty",
        "text-named.jpg": "not an image",
        "truncated.jpg": "truncated",
        "bomb-20000x20000.png": "too many pixels",
        "escaped.cat.1.jpg": "unsafe path",
        "dog.1.jpg": "unsafe path",
        "missing.jpg": "no such file",
    }
    for suffix, reason in expected_errors.items():
        (match,) = [f for f in errors if f.endswith(suffix)]
        assert reason in errors[match], (match, errors[match])
    good = frame[frame.error.isna()]
    assert set(good.label) <= {"cat", "dog"} and good.prob_dog.between(0, 1).all()
    assert {Path(f).name for f in good.file} >= {"my dog.jpg", "a.jpg", "b.png", "rgba.png", "gray16.png", "12345.jpg"}
    assert (good.label == good.prob_dog.ge(0.5).map({True: "dog", False: "cat"})).all()


def test_submission_on_test1_zip_has_one_row_per_photo_with_kaggle_ids(cli_home, model_path, test_zip, tmp_path):
    out = tmp_path / "submission.csv"
    proc = run_cli(cli_home, "submission", test_zip, "--out", out, "--model", model_path)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "label"]
    with zipfile.ZipFile(test_zip) as zf:
        ids = sorted(int(Path(n).stem) for n in zf.namelist() if n.endswith(".jpg"))
    assert len(ids) == 1001
    assert frame.id.tolist() == ids  # every photo decodes, and rows are in id order
    assert set(frame.label) <= {0, 1}
    assert "wrote 1001 rows" in proc.stderr and "0 files could not be predicted" in proc.stderr


def test_predict_writes_csv_to_stdout_without_csv_option(cli_home, model_path, tmp_path):
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(make_jpeg())
    proc = run_cli(cli_home, "predict", photo, tmp_path / "empty.jpg", "--model", model_path)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(io.StringIO(proc.stdout))
    assert frame.file.tolist() == [str(photo), str(tmp_path / "empty.jpg")]
    assert frame.label.iloc[0] in ("cat", "dog") and "no such file" in frame.error.iloc[1]


def test_predict_gives_the_dashboards_p_dog_by_default_and_tta_is_one_of_three_modes(cli_home, train_zip, tmp_path):
    import numpy as np

    from core.data import Source, iter_inputs
    from core.pipeline import preprocess
    from core.predict import Predictor

    src = Source(train_zip)
    sample = json.loads(config.DEFAULT_MODEL_META.read_text())["regression_sample"]
    # Photos the model is sure of, and a few it is unsure of at first look (whichever they are for this model).
    first_look = Predictor(config.DEFAULT_MODEL, tta="off")
    probs = first_look.probabilities(np.stack([preprocess(src.read(name), first_look.pipeline) for name in sample]))
    unsure = np.abs(probs - 0.5) < config.UNSURE_MARGIN
    assert unsure.any(), "the regression sample holds photos the model is unsure of"
    names = [*np.asarray(sample)[unsure][:4], *np.asarray(sample)[~unsure][:20]]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names:
        (photos / Path(name).name).write_bytes(src.read(name))
    runs = {}
    for mode in ("default", "off"):
        out = tmp_path / f"{mode}.csv"
        extra = () if mode == "default" else ("--tta", mode)
        proc = run_cli(cli_home, "predict", photos, "--model", config.DEFAULT_MODEL, "--csv", out, *extra)
        assert proc.returncode == 0, proc.stderr
        runs[mode] = pd.read_csv(out).set_index("file").prob_dog
    in_process = Predictor(config.DEFAULT_MODEL)  # the Predict page's and the API's predictor
    for (file, prob), pred in zip(
        runs["default"].items(), in_process.predict_many(iter_inputs(runs["default"].index)), strict=True
    ):
        assert pred.file == file and prob == pytest.approx(pred.prob_dog, abs=1e-5)
    assert (runs["default"] != runs["off"]).any()  # some photo was unsure enough for a second look

    refused = run_cli(cli_home, "predict", photos, "--tta", "sometimes")
    assert refused.returncode == 2 and "invalid choice: 'sometimes'" in refused.stderr


# --- errors are one clear line ---------------------------------------------------------------------------------------


def test_a_missing_source_is_one_line_error(cli_home, tmp_path):
    assert_one_line_error(run_cli(cli_home, "scan", tmp_path / "nope.zip"), "no such file or folder")


def test_a_file_that_is_not_a_zip_is_one_line_error(cli_home, tmp_path):
    fake = tmp_path / "train.zip"
    fake.write_text("definitely not a zip")
    assert_one_line_error(run_cli(cli_home, "scan", fake), "train.zip: not a readable zip file")


def test_no_model_at_all_is_one_line_error(tmp_path, jpeg):
    home = tmp_path / "fresh"
    for sub in ("runs", "data", "models"):
        (home / sub).mkdir(parents=True)
    photo = tmp_path / "x.jpg"
    photo.write_bytes(jpeg)
    assert_one_line_error(run_cli(home, "predict", photo), "no model yet")
    assert_one_line_error(run_cli(home, "submission", photo, "--out", tmp_path / "s.csv"), "no model yet")


def test_a_missing_model_file_is_one_line_error(cli_home, tmp_path, bad_inputs):
    proc = run_cli(cli_home, "evaluate", bad_inputs / "macos-made.zip", "--model", tmp_path / "gone.keras")
    assert_one_line_error(proc, "no such model file")


def test_a_model_file_that_is_not_a_model_is_one_line_error(cli_home, tmp_path, jpeg):
    fake = tmp_path / "model.keras"
    fake.write_text("not a model")
    photo = tmp_path / "x.jpg"
    photo.write_bytes(jpeg)
    assert_one_line_error(run_cli(cli_home, "predict", photo, "--model", fake), "not a Keras model")


@pytest.mark.parametrize("where", ["no-suffix", "a-folder", "under-a-file"])
def test_train_refuses_an_out_it_could_not_save_to_before_it_trains(cli_home, small_zip, tmp_path, where):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = {
        "no-suffix": tmp_path / "mymodel",
        "a-folder": tmp_path / "a-folder",
        "under-a-file": tmp_path / "file.txt" / "m.keras",
    }
    runs_before = sorted((cli_home / "runs").iterdir())
    proc = run_cli(cli_home, "train", small_zip, "--epochs", "1", "--limit", "64", "--out", out[where])
    assert_one_line_error(proc, str(out[where]))
    assert "epoch" not in proc.stderr  # refused before the first epoch, not after the last
    assert sorted((cli_home / "runs").iterdir()) == runs_before and not (tmp_path / "mymodel").exists()


@pytest.mark.parametrize(
    "command, flag", [("predict", "--csv"), ("submission", "--out"), ("label-issues", "--csv")], ids=lambda c: c
)
def test_a_csv_it_could_not_write_is_refused_before_the_work_not_after(cli_home, small_zip, tmp_path, command, flag):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    for out in (tmp_path / "a-folder", tmp_path / "file.txt" / "out.csv"):
        proc = run_cli(cli_home, command, small_zip, flag, out)
        assert_one_line_error(proc, f"could not write {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "file.txt"]
    assert (
        list((tmp_path / "a-folder").iterdir()) == [] and (tmp_path / "file.txt").read_text() == "a file, not a folder"
    )


def test_time_budget_zero_turns_the_best_presets_budget_off_and_a_negative_one_is_refused(cli_home, small_zip):
    # The best preset's progressive resizing stays on: one epoch goes to the last, full-size stage.
    proc = run_cli(
        cli_home,
        "train",
        small_zip,
        "--preset",
        "best",
        "--time-budget",
        "0",
        "--epochs",
        "1",
        "--limit",
        "64",
        "--image-size",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "run.json").read_text())
    assert meta["config"]["preset"] == "best" and meta["config"]["time_budget_min"] is None
    assert meta["status"] == "finished"
    # Every field the shipped model's run.json has (default.json adds the promotion's), and the whole settings tree.
    shipped = json.loads(config.DEFAULT_MODEL_META.read_text())
    promoted = {"model_file", "source_run", "model_bytes", "model_sha256", "regression_sample"}
    promoted |= {"calibration", "before_calibration"}  # `python -m core calibrate` after training
    assert set(meta) >= set(shipped) - promoted
    added_since = {"net", "optimizer", "calibration_split", "corrections", "extras", "erase", "cutmix", "flip", "mixup"}
    assert set(meta["config"]) == set(shipped["config"]) | added_since
    assert meta["config"]["net"] == {
        "kind": "vgg_bn",
        "widths": [32, 64, 128, 256],
        "stem": 16,
        "se": 0,
        "residual": False,
        "convs": [],
        "whiten": False,
    }
    assert meta["config"]["optimizer"] == {
        "name": "adamw",
        "weight_decay": 0.05,
        "label_smoothing": 0.05,
        "ema": 0.0,
        "swa": 0.0,
        "bias_rate": 1.0,
        "sam": 0.0,
        "mutual": 0.0,
    }
    history = pd.read_csv(Path(proc.stdout.strip().splitlines()[-1]) / "history.csv")
    assert history["train_size"].tolist() == [32]
    refused = run_cli(cli_home, "train", small_zip, "--time-budget", "-5")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "not a number of minutes" in refused.stderr


def test_train_scales_set_the_stages_and_nonsense_is_refused(cli_home, small_zip):
    args = ("train", small_zip, "--preset", "improved", "--epochs", "2", "--limit", "64", "--image-size", "32")
    net = ("--widths", "8,16", "--convs", "1,3")
    proc = run_cli(cli_home, *args, "--train-scales", "0.5,1", *net, "--weight-decay", "0.01")
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert pd.read_csv(run / "history.csv")["train_size"].tolist() == [16, 32]
    saved = json.loads((run / "run.json").read_text())["config"]
    assert saved["train_scales"] == [0.5, 1.0]
    assert saved["net"]["widths"] == [8, 16] and saved["optimizer"]["weight_decay"] == 0.01  # flags of the tree
    assert saved["net"]["convs"] == [1, 3]
    for bad in ("0,2", "2", "two,two"):  # a stage without convs, a count short, not counts
        refused = run_cli(cli_home, *args, "--widths", "8,16", "--convs", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "conv counts" in refused.stderr or "a count per width" in refused.stderr
    for bad in ("0,1", "1.5", "half", ""):
        refused = run_cli(cli_home, *args, "--train-scales", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "fractions of the image size" in refused.stderr


def test_the_train_flags_are_every_setting_with_its_help(cli_home):
    from core.settings import settings

    proc = run_cli(cli_home, "train", "--help")
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stdout.split())  # argparse wraps the help text
    for setting in settings():
        assert f"--{setting.flag}" in shown and " ".join(setting.help.split()[:4]) in shown, setting.name


def test_a_bug_keeps_its_traceback_and_only_a_users_error_is_one_line(tmp_path, monkeypatch, capsys):
    import core.data
    from core.cli import main

    missing = str(tmp_path / "nowhere.zip")
    assert main(["scan", missing]) == 2  # the user's mistake: one line
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file or folder"

    def broken_scan(*args, **kwargs):  # a coding error inside a command, of a type users' errors once had
        raise KeyError("a key the code forgot")

    monkeypatch.setattr(core.data, "scan", broken_scan)
    with pytest.raises(KeyError, match="a key the code forgot"):
        main(["scan", str(tmp_path)])
    assert "error:" not in capsys.readouterr().err
