"""The run store: one folder per training run under models/runs/ with model, history and metadata."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil
from filelock import FileLock, Timeout

from core import config
from core.config import atomic_write, check_writable, write_error
from core.data import label_from_name
from core.errors import DatasetError, NotFound, RunError, TrainingInProgress
from core.metrics import held_out, recorded_accuracies


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically so a reader never sees half a file; a failure raises a WriteError naming path."""
    text = json.dumps(data, indent=2, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


RUNNING = "running"  # run.json's status from a run's start until it ends
INTERRUPTED = "interrupted"  # what a run still "running" is shown as once its process is gone
TEMP_PID = re.compile(r"\..*\.tmp(\d+)-\d+")  # core.config.temp_sibling's names carry the writer's pid
LOCK_FILE = ".training.lock"  # in the runs folder: held by the one training allowed there at a time


def this_process() -> dict:
    """Who is training, as run.json records it: pid, host and this process's start time (to tell a reused pid)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_started": psutil.Process().create_time()}


def process_alive(pid: int, host: str, process_started: float) -> bool:
    """Whether the process recorded by this_process() still runs; one on another host is assumed to."""
    if host != socket.gethostname():
        return True
    try:
        process = psutil.Process(int(pid))
        # A pid can be reused: it is the same process only if it started at the recorded time.
        same = abs(process.create_time() - float(process_started)) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE  # killed but not yet reaped is gone too
    except (psutil.Error, TypeError, ValueError):
        return False


def status_of(meta: dict) -> str:
    """A run's status from its run.json: as recorded, except that a running run whose process is gone is
    interrupted."""
    status = meta.get("status", "unknown")
    if status == RUNNING and not process_alive(meta.get("pid"), meta.get("host"), meta.get("process_started")):
        return INTERRUPTED
    return status


@dataclass(frozen=True)
class Run:
    """One saved run: its folder, metadata and per-epoch history."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    @property
    def has_model(self) -> bool:
        """Whether the run saved a model; a run stopped before its first epoch ended has none."""
        return self.model_path.is_file()

    @property
    def meta(self) -> dict:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def status(self) -> str:
        """running, finished, stopped, early-stopped, time-budget, failed, or interrupted (its process died)."""
        return status_of(self.meta)

    def update_meta(self, **changes) -> dict:
        """Merge changes into run.json (atomically); only the process training the run calls this."""
        meta = {**self.meta, **changes}
        write_json(self.path / "run.json", meta)
        return meta

    def save_history(self, rows: list[dict]) -> None:
        """Write history.csv, one row per epoch, atomically."""
        atomic_write(self.path / "history.csv", lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))

    @property
    def history(self) -> pd.DataFrame:
        try:
            return pd.read_csv(self.path / "history.csv")
        except (OSError, ValueError, pd.errors.EmptyDataError):
            return pd.DataFrame()

    @property
    def batches_path(self) -> Path:
        return self.path / "batches.csv"

    @property
    def batches(self) -> pd.DataFrame:
        """Every batch's loss (its own and the epoch's running mean) and learning rate; kept by every run."""
        try:
            return pd.read_csv(self.batches_path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            return pd.DataFrame()


# A run folder's name: the UTC time, the preset and a random suffix, e.g. 20261124-011206-seed-f544.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _is_run_folder(path: Path) -> bool:
    # A real folder (never a symlink, which could point anywhere) with run.json in it.
    return RUN_ID.fullmatch(path.name) is not None and not path.is_symlink() and (path / "run.json").is_file()


class RunStore:
    """Create, list, read and delete runs in one folder."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root or config.RUNS_DIR)  # looked up per call so tests and servers can redirect it

    def create(self, preset: str) -> Run:
        """A new, empty run folder named by UTC time and preset."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = self.root / f"{stamp}-{preset}-{secrets.token_hex(2)}"
        path.mkdir(parents=True)
        return Run(path)

    def begin(self, preset: str, config: dict) -> Run:
        """A new run, listed at once: run.json says running, with the config, start time and this process."""
        run = self.create(preset)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            run.update_meta(id=run.id, status=RUNNING, config=config, started_at=started, **this_process())
        except BaseException:
            shutil.rmtree(run.path, ignore_errors=True)  # a folder without run.json is no run: leave none
            raise
        return run

    def runs(self) -> list[Run]:
        """Every run with metadata, newest first, with or without a model (see Run.has_model)."""
        if not self.root.is_dir():
            return []
        found = [Run(p) for p in self.root.iterdir() if _is_run_folder(p)]
        return sorted(found, key=lambda r: r.id, reverse=True)

    def with_models(self) -> list[Run]:
        """The runs that saved a model and are not training still (an interrupted run keeps its best epoch),
        newest first: the ones a user can pick, download or promote."""
        return [run for run in self.runs() if run.has_model and run.status != RUNNING]

    def in_progress(self) -> list[Run]:
        """The runs training now, in this process or any other, newest first."""
        return [run for run in self.runs() if run.status == RUNNING]

    def get(self, run_id: str) -> Run:
        """One run by id; refuses ids that are not plain folder names, symlinks and anything outside the store."""
        path = self.root / run_id if isinstance(run_id, str) and RUN_ID.fullmatch(run_id) else None
        if path is None or not _is_run_folder(path):
            raise NotFound(f"no run named {run_id!r}")
        return Run(path)

    def delete(self, run_id: str) -> None:
        """Remove a run folder and everything in it; a run still training is refused (stop it first)."""
        run = self.get(run_id)
        if run.status == RUNNING:
            raise RunError(f"run {run_id} is still training: stop it before deleting it")
        shutil.rmtree(run.path)

    def claim_training(self) -> FileLock:
        """Take this folder's training lock, for one run at a time across processes; release() it when the run
        ends. Raises TrainingInProgress, naming the run in progress, if another process or job holds it."""
        lock = FileLock(self.root / LOCK_FILE, thread_local=False)  # the job's thread releases what start() took
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except Timeout:
            raise TrainingInProgress(self._busy_reason()) from None
        except OSError as err:  # e.g. a runs folder this user may not write to
            raise write_error(self.root / LOCK_FILE, err) from err
        self.tidy()
        return lock

    def tidy(self) -> list[Path]:
        """Remove the temp files that processes killed mid-write left in this folder and its runs; returns them."""
        stale = [
            tmp
            for tmp in [*self.root.glob(".*.tmp*"), *self.root.glob("*/.*.tmp*")]
            if (found := TEMP_PID.match(tmp.name)) and not psutil.pid_exists(int(found.group(1)))
        ]
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        return stale

    def _busy_reason(self) -> str:
        running = self.in_progress()
        if not running:  # the lock is taken a moment before the run's folder exists
            return f"another training is starting in {self.root}"
        meta = running[0].meta
        return (
            f"run {running[0].id} is training in {self.root} ({meta.get('config', {}).get('preset')} preset, "
            f"pid {meta.get('pid')} on {meta.get('host')}, started {meta.get('started_at')})"
        )

    def table(self) -> pd.DataFrame:
        """One row per run (see summary_row), newest first."""
        return pd.DataFrame([summary_row(run.id, run.meta) for run in self.runs()], columns=SUMMARY_COLUMNS)


def odd_run_folders() -> list[tuple[str, str]]:
    """Entries of the runs folder that are not listed as runs, with why: symlinks, half-written folders."""
    root = Path(config.RUNS_DIR)
    if not root.is_dir():
        return []
    odd = []
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            odd.append((path.name, "a symbolic link, which is never followed"))
        elif not path.is_dir() or path.name.startswith("."):
            continue
        elif RUN_ID.fullmatch(path.name) is None:
            odd.append((path.name[:60], "not a run folder name"))
        elif not (path / "run.json").is_file():
            odd.append((path.name, "no run.json yet: a run being written, or one that crashed before saving"))
    return odd


SUMMARY_COLUMNS = ["run", "epochs", "accuracy", "95% CI", "held out", "settings", "time_s", "status"]


def summary_row(name: str, meta: dict) -> dict:
    """A model's row for the Runs table: epochs done of those asked, accuracy and its interval, settings, time."""
    cfg, metrics = meta.get("config", {}), meta.get("metrics", {})
    app, single = recorded_accuracies(meta)
    score = app or single
    settings = [cfg.get("preset"), f"{meta.get('n_images') or 0:,} photos", f"{cfg.get('image_size')} px"]
    settings += [cfg.get("color_mode"), f"batch {cfg.get('batch_size')}", f"lr {cfg.get('learning_rate') or 0:g}"]
    optimizer = (cfg.get("optimizer") or {}).get("name")  # adamw and sgd runs of one preset differ
    settings += [optimizer] if optimizer else []
    settings += ["augmented"] if cfg.get("augment") else []
    interval = score.interval_text.removeprefix("95% CI ") if score else ""
    return {
        "run": name,
        "epochs": f"{metrics.get('epochs_completed', 0)} / {cfg.get('epochs', '?')}",
        "accuracy": score.value if score else None,
        "95% CI": interval + (" (one look)" if score is not None and score is single else ""),
        "held out": score.n if score else None,
        "settings": " · ".join(str(part) for part in settings),
        "time_s": meta.get("wall_time_s"),
        "status": status_of(meta),
    }


def model_history(model_path: Path) -> pd.DataFrame:
    """A model's per-epoch curves: a run's history.csv, or the -history.csv a promoted model carries."""
    model_path = Path(model_path)
    for candidate in (model_path.with_name(f"{model_path.stem}-history.csv"), model_path.parent / "history.csv"):
        if candidate.is_file():
            try:
                return pd.read_csv(candidate)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                break
    return pd.DataFrame()


def model_meta(model_path: Path) -> dict:
    """The metadata saved beside a model: default.json for the shipped model, run.json for a run."""
    candidates = [config.DEFAULT_MODEL_META] if Path(model_path) == config.DEFAULT_MODEL else []
    candidates += [Path(model_path).with_suffix(".json"), Path(model_path).parent / "run.json"]
    for candidate in candidates:
        if candidate.exists():
            try:
                return json.loads(candidate.read_text())
            except ValueError:
                return {}
    return {}


def regression_sample(validation_names: list[str], n: int = 400, seed: int = 0) -> list[str]:
    """A fixed, class-balanced sample of a model's own validation images for the CI accuracy check."""
    rng = random.Random(seed)
    picked: list[str] = []
    for label in (0, 1):
        group = sorted(name for name in validation_names if label_from_name(name) == label)
        picked += rng.sample(group, min(len(group), n // 2))
    return sorted(picked)


def check_model_target(target: Path) -> Path:
    """The path a trained model is to be saved at, refused before a training run rather than after it.

    RunError: not a .keras file name (Keras loads no other); WriteError: a folder, or where this process may not
    write.
    """
    target = Path(target)
    if target.suffix != ".keras":
        raise RunError(f"{target}: a model is saved as a .keras file; give a name like {target.stem or 'model'}.keras")
    return check_writable(target)


def promote_run(run: Run, target: Path | None = None, source: str | os.PathLike | None = None) -> Path:
    """Copy a run's model to target (atomically), its metadata to target.json, its curves to target-history.csv.

    target None: the shipped default, config.DEFAULT_MODEL as it is now.

    With the training source, the model's accuracy as the app predicts is measured again on the run's
    validation photos (`record_accuracy`).
    """
    if not run.has_model:
        raise RunError(f"run {run.id} saved no model: it was stopped before its first epoch ended")
    target = check_model_target(config.DEFAULT_MODEL if target is None else target)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: shutil.copyfile(run.model_path, tmp))
    run_meta = run.meta
    meta = {
        **run_meta,
        "model_file": target.name,
        "source_run": run.id,
        "model_bytes": target.stat().st_size,
        "model_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "regression_sample": regression_sample(run_meta.get("validation_names", [])),
    }
    write_json(target.with_suffix(".json"), meta)
    if (run.path / "history.csv").exists():  # the curves travel with the model (benchmarks read them)
        history = target.with_name(f"{target.stem}-history.csv")
        atomic_write(history, lambda tmp: shutil.copyfile(run.path / "history.csv", tmp))
    if source is not None and run_meta.get("validation_names"):
        record_accuracy(target, source)
    return target


def record_accuracy(target: Path, source: str | os.PathLike) -> dict:
    """Measure a saved model on its own validation photos with the default Predictor and note it in target.json.

    Training reports validation accuracy from one look per photo; the app, the CLI and the API give a photo
    they are unsure about a second, mirrored look. This records the accuracy users get (metrics.accuracy, with
    metrics.accuracy_n and metrics.measured_on), beside the training figure (metrics.best_val_accuracy).
    """
    from core.predict import Predictor, evaluate  # core.predict is a layer above the run store

    target = Path(target)
    meta = model_meta(target)
    names = meta["validation_names"]
    result = evaluate(Predictor(target), source, names=names)
    if result.n != len(names):
        missing = len(names) - result.n
        raise DatasetError(f"{source}: {missing} of the model's {len(names)} validation photos are missing")
    meta["metrics"] = {**meta.get("metrics", {}), **result.record(held_out(result.n, Path(source).name))}
    write_json(target.with_suffix(".json"), meta)
    return meta
