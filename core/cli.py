"""The command line: python -m core scan|train|evaluate|predict|submission|serve."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from core.config import TTA_MODES, atomic_write, check_writable
from core.errors import ModelError, SettingsError, TrainingInProgress, UserError
from core.export import FORMATS, export_model, sidecar_path
from core.settings import PRESETS, minutes, settings


def _model_path(arg: str | None) -> Path:
    from core.registry import default_model

    # Without --model: the model the dashboard gives a session that picked none, by the same rule.
    path = Path(arg) if arg else getattr(default_model(), "path", None)
    if path is None:
        raise ModelError("no model yet: train one with `python -m core train SOURCE` or pass --model")
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    return path


def cmd_scan(args) -> int:
    from core.data import OK, scan, summarize

    manifest = scan(args.source)
    counts = summarize(manifest)
    print(
        f"{args.source}: {counts['cats']} cats, {counts['dogs']} dogs, "
        f"{counts['unlabeled']} unlabeled, {counts['skipped']} skipped"
    )
    for row in manifest[manifest.status != OK].itertuples():
        print(f"  {row.name}: {row.status}")
    for row in manifest[(manifest.status == OK) & manifest.label.isna()].itertuples():
        print(f"  unlabeled {row.name}: can be predicted, not used for training")
    print(json.dumps(counts))
    return 0


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    # argparse shows an ArgumentTypeError's own words; a plain ValueError would read "invalid value".
    def typed(text: str) -> object:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    typed.__name__ = parse.__name__
    return typed


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of core.settings.TrainConfig (the network's and optimiser's too), with its help text.

    Every flag defaults to None, "not given": the preset's own value stays.
    """
    for setting in settings():
        kwargs: dict = {"dest": setting.name, "default": None, "help": setting.help}
        if setting.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _typed(setting.parse) if setting.parse else setting.type
            metavar = setting.metavar or setting.flag.upper().replace("-", "_")
            kwargs |= {"choices": setting.choices} if setting.choices else {"metavar": metavar}
        parser.add_argument(f"--{setting.flag}", **kwargs)


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings a command line gave, by name (0 for "none" already None), for TrainConfig.for_preset."""
    given = {s.name: getattr(args, s.name) for s in settings() if getattr(args, s.name) is not None}
    return {name: None if value == 0 and _zero_is_none(name) else value for name, value in given.items()}


def _zero_is_none(name: str) -> bool:
    return next(s.zero_is_none for s in settings() if s.name == name)


@contextmanager
def _one_training_per_folder(allow_concurrent: bool) -> Iterator[None]:
    # One training at a time per runs folder, across processes: refused with the run in progress named.
    from core.runs import RunStore

    if allow_concurrent:
        yield
        return
    try:
        lock = RunStore().claim_training()
    except TrainingInProgress as err:
        raise TrainingInProgress(
            f"{err}; one training at a time per runs folder: wait, or pass --allow-concurrent"
        ) from None
    try:
        yield
    finally:
        lock.release()


class _TrainingBars:
    """A training's progress on stderr: a bar while decoding, one line at the start, a bar per epoch."""

    def __init__(self, preset: str):
        self.preset = preset
        self.bars: dict = {}

    def __call__(self, event) -> None:
        getattr(self, f"on_{event.kind}", lambda event: None)(event)

    def _bar(self, key, **kwargs):
        from tqdm import tqdm

        if key not in self.bars:  # not setdefault(): that would open a new bar on every event
            self.bars[key] = tqdm(**kwargs)
        return self.bars[key]

    def on_load(self, event) -> None:
        bar = self._bar("load", total=event.batches, desc="decoding", unit="img", leave=False)
        bar.update(event.batch - bar.n)

    def on_start(self, event) -> None:
        bar = self.bars.pop("load", None)
        if bar is not None:
            bar.close()
        logs = event.logs
        print(
            f"training {self.preset}: {logs['n_train']} train / {logs['n_val']} validation images, "
            f"{logs['replicas']} replica(s), global batch {logs['global_batch']} "
            f"({logs['per_replica_batch']} per replica)",
            file=sys.stderr,
        )

    def on_batch(self, event) -> None:
        bar = self._bar(event.epoch, total=event.batches, desc=f"epoch {event.epoch}/{event.epochs}", unit="batch")
        bar.update(event.batch - bar.n)
        bar.set_postfix(loss=f"{event.logs.get('loss', 0):.4f}", acc=f"{event.logs.get('accuracy', 0):.3f}")

    def on_epoch(self, event) -> None:
        bar = self.bars.pop(event.epoch, None)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in event.logs.items() if "loss" in k or "acc" in k})
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@contextmanager
def _ctrl_c_stops(cancel: threading.Event) -> Iterator[None]:
    """The first Ctrl-C stops the training after the batch in hand, as the Train page's Stop does (the best epoch
    kept, run.json finished); a second one interrupts at once. An interrupt raised inside TensorFlow's input
    pipeline could leave the process hung instead of ending it."""

    def stop(signum, frame) -> None:
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping after this batch (Ctrl-C again to interrupt now)", file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_train(args) -> int:
    from core.settings import TrainConfig
    from core.train import train

    config = TrainConfig.for_preset(args.preset, **given_settings(args))
    if args.out:  # an unusable --out fails now, not after the training it was to keep
        from core.runs import check_model_target

        check_model_target(Path(args.out))
    progress, cancel = _TrainingBars(config.preset), threading.Event()
    with _one_training_per_folder(args.allow_concurrent), _ctrl_c_stops(cancel):
        try:
            result = train(args.source, config, progress=progress, cancel=cancel)
        finally:
            progress.close()  # before any error line, which must stay the last line
    print(
        f"run {result.status}: best val_accuracy {result.metrics['best_val_accuracy']} in {result.wall_time_s:.0f} s",
        file=sys.stderr,
    )
    if cancel.is_set():  # stopped by Ctrl-C: kept in its run folder, never promoted over --out
        print(result.run.path)
        print("interrupted", file=sys.stderr)
        return 130
    if args.out:
        from core.runs import promote_run

        promote_run(result.run, Path(args.out), source=args.source)
        print(f"saved as {args.out}", file=sys.stderr)
    print(result.run.path)
    return 0


def cmd_evaluate(args) -> int:
    from core.fastpath import open_predictor
    from core.metrics import AS_THE_APP_PREDICTS
    from core.predict import evaluate

    predictor = open_predictor(_model_path(args.model))
    ev = evaluate(predictor, args.source)
    score = ev.score(f"the {ev.n:,} labeled photos of {Path(args.source).name}")
    print(
        f"model {predictor.path}: accuracy {ev.accuracy:.4f} on {ev.n} images ({ev.skipped} skipped), "
        f"{score.interval_text}; {AS_THE_APP_PREDICTS}"
    )
    for name, acc in ev.class_scores().items():
        print(f"  {name}: {acc.value:.4f} of {acc.n} ({acc.interval_text})" if acc.n else f"  {name}: no images")
    print("  confusion (rows true cat/dog, columns predicted cat/dog):", ev.confusion)
    print(f"  expected calibration error: {ev.calibration_error():.4f}")
    print(
        json.dumps(
            {
                "accuracy": ev.accuracy,
                "ci95": list(score.interval),
                "n": ev.n,
                "measured_on": score.on,
                "predicted": score.how,
                "per_class": ev.per_class,
                "per_class_ci95": {name: list(acc.interval) for name, acc in ev.class_scores().items()},
                "confusion": ev.confusion,
                "calibration_error": ev.calibration_error(),
                "skipped": ev.skipped,
                "model": str(predictor.path),
                "engine": predictor.engine,
            }
        )
    )
    return 0


def cmd_predict(args) -> int:
    from core.data import iter_inputs
    from core.fastpath import open_predictor
    from core.predict import predictions_frame

    if args.csv:
        check_writable(args.csv)
    predictor = open_predictor(_model_path(args.model), tta=args.tta)
    frame = predictions_frame(predictor.predict_many(iter_inputs(args.sources)))
    if args.csv:
        atomic_write(args.csv, lambda tmp: frame.to_csv(tmp, index=False))
        print(f"wrote {len(frame)} rows to {args.csv} ({frame.error.notna().sum()} errors)", file=sys.stderr)
    else:
        frame.to_csv(sys.stdout, index=False)
    return 0


def cmd_submission(args) -> int:
    from core.data import iter_inputs
    from core.fastpath import open_predictor
    from core.predict import submission_frame

    check_writable(args.out)
    predictor = open_predictor(_model_path(args.model))
    preds = predictor.predict_many(iter_inputs([args.source]))
    frame = submission_frame(preds)
    atomic_write(args.out, lambda tmp: frame.to_csv(tmp, index=False))
    bad = [p for p in preds if p.error]
    print(
        f"wrote {len(frame)} rows to {args.out}; {len(bad)} files could not be predicted "
        "(each still has a row, labelled 1, so Kaggle accepts the file)",
        file=sys.stderr,
    )
    for p in bad:
        print(f"  {p.file}: {p.error}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from core.api import serve

    model = _model_path(args.model)
    try:
        serve(model, host=args.host, port=args.port)
    except OSError as err:
        if err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise UserError(f"cannot serve on {args.host}:{args.port}: {err.strerror}") from None
    return 0


def cmd_label_issues(args) -> int:
    from tqdm import tqdm

    from core.label_issues import FinderConfig, find_label_issues

    if args.time_budget is not None and args.time_budget <= 0:
        raise SettingsError("--time-budget must be more than 0 minutes")
    check_writable(args.csv)
    config = replace(FinderConfig(), limit=args.limit, seed=args.seed)
    if args.time_budget:
        config = replace(config, time_budget_min=args.time_budget)
    if args.folds is not None:
        config = replace(config, folds=args.folds)
    bar = None

    def progress(event) -> None:  # one bar per phase (and fold) on stderr
        nonlocal bar
        desc = f"{event.phase} {event.fold}/{event.folds}" if event.fold else event.phase
        if bar is None or bar.desc != desc:
            if bar is not None:
                bar.close()
            unit = "s" if event.phase == "train" else "img"
            bar = tqdm(total=event.total, desc=desc, unit=unit, file=sys.stderr, leave=False)
        bar.update(event.done - bar.n)

    try:
        result = find_label_issues(args.source, config, progress=progress)
    finally:  # an error message then starts on a clean line
        if bar is not None:
            bar.close()
    result.to_csv(args.csv)
    print(f"{result.summary()}; wrote {len(result.suspects())} suspects, most suspect first, to {args.csv}")
    return 0


def cmd_corrections(args) -> int:
    from core.corrections import CorrectionsError, corrections_from_review, corrections_path, record
    from core.data import Source

    try:
        review = json.loads(Path(args.review).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorrectionsError(f"{Path(args.review).name}: not a readable JSON review ({err})") from None
    source = Source(args.source)
    wanted = corrections_from_review(review, source.fingerprint(), source.path.name)  # checks every verdict
    given = {name: c.given for name, c in wanted.photos.items() if c.given}
    saved = record(
        wanted.fingerprint, {n: c.action for n, c in wanted.photos.items()}, args.dir, source.path.name, given
    )
    missing = len(set(wanted.photos) - {item.name for item in source.listing})
    counts = saved.summary()
    print(
        f"{len(wanted.photos)} verdicts of {Path(args.review).name} recorded for {source.path.name}: now "
        f"{counts['relabelled']} relabelled, {counts['excluded']} excluded, {counts['reviewed']} reviewed as right"
        + (f"; {missing} of them name no photo in it (applied to nothing)" if missing else "")
    )
    print(corrections_path(saved.fingerprint, Path(args.dir) if args.dir else None))
    return 0


def cmd_calibrate(args) -> int:
    from core.calibrate import calibrate_saved
    from core.metrics import percent
    from core.runs import model_meta

    found = calibrate_saved(_model_path(args.model), args.source, args.share, args.method)
    metrics = model_meta(Path(args.model)).get("metrics", {})
    print(
        f"{found.method} scaling fitted on {found.on} (scale {found.scale:.3f}, shift {found.shift:+.3f}): ECE there "
        f"{percent(found.ece_before)} -> {percent(found.ece_after)}; folded into {Path(args.model).name}. It now "
        f"reports on the other {metrics.get('accuracy_n', 0):,}: {percent(metrics.get('accuracy') or 0)} as the app "
        f"predicts, ECE {percent(metrics.get('calibration_error') or 0)}"
    )
    return 0


def cmd_export(args) -> int:
    path = export_model(_model_path(args.model), args.format, args.out)
    print(f"wrote the {args.format} export and its metadata {sidecar_path(path).name}", file=sys.stderr)
    print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="python -m core", description="Cats vs Dogs Studio, headless.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="count cats, dogs, unlabeled and skipped files in a folder or zip")
    s.add_argument("source")
    s.set_defaults(func=cmd_scan)
    _add_train(sub)

    e = sub.add_parser("evaluate", help="accuracy of a model on labeled photos")
    e.add_argument("source")
    e.add_argument("--model")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="label photos in files, folders or zips")
    pr.add_argument("sources", nargs="+")
    pr.add_argument("--model")
    pr.add_argument("--csv", help="write file,label,prob_dog,error here instead of stdout")
    pr.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="unsure",
        help="flip test-time augmentation: average with the mirrored photo for unsure photos only (P(dog) between "
        "0.1 and 0.9; the default, as in the dashboard and the API), for all (twice the inference) or for none",
    )
    pr.set_defaults(func=cmd_predict)

    sm = sub.add_parser("submission", help="write a Kaggle submission CSV (id,label)")
    sm.add_argument("source")
    sm.add_argument("--out", default="submission.csv")
    sm.add_argument("--model")
    sm.set_defaults(func=cmd_submission)

    sv = sub.add_parser("serve", help="serve the model over HTTP (Flask app on a waitress server)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--model")
    sv.set_defaults(func=cmd_serve)
    _add_label_issues(sub)
    _add_corrections(sub)
    _add_export(sub)
    _add_calibrate(sub)
    return p


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model on a folder or zip of labeled photos")
    t.add_argument("source")
    t.add_argument("--preset", default="seed", choices=PRESETS, help="the settings to start from (default: seed)")
    add_setting_flags(t)
    t.add_argument("--out", help="also save the model here with its metadata (e.g. models/default.keras)")
    t.add_argument(
        "--allow-concurrent",
        action="store_true",
        help="train even while another run trains into the same runs folder (each slows the other down)",
    )
    t.set_defaults(func=cmd_train)


def _add_label_issues(sub) -> None:
    li = sub.add_parser("label-issues", help="find photos whose label is likely wrong (or neither a cat nor a dog)")
    li.add_argument("source")
    li.add_argument(
        "--time-budget",
        type=_typed(minutes),
        metavar="MINUTES",
        help="the whole search, loading to ranking (default 25: all 20,000 photos of train.zip on 2 CPU cores)",
    )
    li.add_argument("--folds", type=int, help="models trained, each scoring the photos it left out (default 2)")
    li.add_argument("--limit", type=int, help="a balanced slice of at most N photos")
    li.add_argument("--seed", type=int, default=0)
    li.add_argument("--csv", required=True, help="write file,given_label,suggested,score,kind here")
    li.set_defaults(func=cmd_label_issues)


def _add_corrections(sub) -> None:
    co = sub.add_parser("corrections", help="record a review ({photo: cat, dog, exclude or keep}) as corrections")
    co.add_argument("review", help="a JSON object of photo name (as in the dataset) to cat, dog, exclude or keep")
    co.add_argument("source", help="the dataset the names are photos of: its fingerprint names the file")
    co.add_argument("--dir", help="the corrections folder (default: data/corrections, where the dashboard looks)")
    co.set_defaults(func=cmd_corrections)


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="export a model for ONNX Runtime/OpenVINO/Triton, TF Serving or LiteRT")
    ex.add_argument("--model")
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument(
        "--out",
        help="a .onnx or .tflite file, a SavedModel folder, or a folder to put one in (default: beside the model);"
        " a metadata sidecar (the export's name + .json) is written beside it",
    )
    ex.set_defaults(func=cmd_export)


def _add_calibrate(sub) -> None:
    ca = sub.add_parser(
        "calibrate", help="calibrate a saved model on part of its own held-out photos, folded into the file"
    )
    ca.add_argument("source", help="the dataset the model was trained on (its fingerprint is checked)")
    ca.add_argument("--model", required=True, help="the .keras file to calibrate, in place")
    ca.add_argument(
        "--share", type=float, default=0.5, help="of its held-out photos, per class, to fit on (default 0.5)"
    )
    ca.add_argument("--method", choices=("platt", "temperature"), default="platt")
    ca.set_defaults(func=cmd_calibrate)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's error is one clear line on stderr and exit code 2 (argparse's own refusals too).

    Only the project's user-facing errors (core.errors.UserError) are caught: anything else is a bug, and
    keeps its traceback.
    """
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
