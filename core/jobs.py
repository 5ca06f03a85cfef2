"""Background work the dashboard polls: training runs one at a time, dataset scans kept per version, and
label-issue searches one per dataset.

These are the classes; the dashboard holds one instance of each per server process (ui/resources.py builds them
with st.cache_resource), and tests build their own.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from core.data import DatasetError, dataset_version, scan
from core.errors import UserError
from core.label_issues import Cancelled, FinderConfig, FinderProgress, find_label_issues, save_issues
from core.progress import ProgressEvent
from core.runs import RunStore, TrainingInProgress
from core.settings import TrainConfig
from core.train import RunResult, train

RUNNING = ("loading", "training", "stopping")
BATCH_COLUMNS = ["step", "epoch", "batch", "loss", "accuracy", "batch_loss", "learning_rate"]


class TrainingBusy(UserError, RuntimeError):
    """A run was requested while another one is still training in this process."""


class _Cancelled(Exception):
    # Raised from the progress callback to abandon dataset decoding, which has no cancel hook of its own.
    pass


def owner_label(owner: str | None) -> str:
    """How a page names the session that owns a run, e.g. "session 3f9a1c": a short tag of an opaque id."""
    return f"session {owner[:6]}" if owner else "a session that did not say who it was"


@dataclass
class TrainingState:
    """A copy of one run's progress, taken under the job's lock so every field agrees."""

    config: TrainConfig
    source: str
    started_at: float
    status: str = "loading"  # loading, training, stopping, then finished, early-stopped, time-budget, stopped, failed
    loaded: int = 0
    to_load: int = 0
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    n_train: int = 0
    n_val: int = 0
    replicas: int = 1
    per_replica_batch: int = 0
    fit_started_at: float | None = None
    finished_at: float | None = None
    batch_log: list[dict] = field(default_factory=list)  # BATCH_COLUMNS: running means, this batch's loss, rate
    history: list[dict] = field(default_factory=list)  # one row per finished epoch, as Keras logs it
    error: str | None = None
    result: RunResult | None = None
    owner: str | None = None  # the opaque id of the browser session that started the run (ui.resources)
    stopped_by: str | None = None  # who pressed Stop, when someone did

    @property
    def running(self) -> bool:
        return self.status in RUNNING

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    @property
    def steps_done(self) -> int:
        return max(self.epoch - 1, 0) * self.batches + self.batch

    @property
    def fraction(self) -> float:
        """How far the run is, in [0, 1]: decoding while loading, then batches over all epochs."""
        if self.status == "loading":
            return self.loaded / self.to_load if self.to_load else 0.0
        if not self.running:
            return 1.0
        total = self.epochs * self.batches
        done = min(self.steps_done / total, 1.0) if total else 0.0
        budget_s = self._budget_s
        if budget_s and self.fit_started_at is not None:  # whichever ends the run first: epochs or time
            done = max(done, min((time.time() - self.fit_started_at) / budget_s, 1.0))
        return done

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace of the batches so far; None before the first batch."""
        if not self.running or self.fit_started_at is None or self.steps_done == 0:
            return None
        spent = time.time() - self.fit_started_at
        left = spent / self.steps_done * max(self.epochs * self.batches - self.steps_done, 0)
        budget_s = self._budget_s
        return min(left, max(budget_s - spent, 0.0)) if budget_s else left

    @property
    def _budget_s(self) -> float | None:
        return self.config.time_budget_min * 60 if self.config.time_budget_min else None

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    def batch_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.batch_log, columns=BATCH_COLUMNS)


class TrainingJob:
    """One training run in a daemon thread: progress goes into a lock-protected state, Stop is an Event."""

    def __init__(
        self,
        source: str | os.PathLike,
        config: TrainConfig,
        runs_dir: Path | None = None,
        lock=None,
        owner: str | None = None,
    ):
        self.source = source
        self.config = config
        self.runs_dir = runs_dir
        self._runs_lock = lock  # the runs folder's training lock (RunStore.claim_training), released at the end
        self.owner = owner
        self.id = secrets.token_hex(4)  # so a confirmation given for one run can never stop the next one
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._state = TrainingState(config, str(source), time.time(), epochs=config.epochs, owner=owner)
        self._thread = threading.Thread(target=self._run, name="training-job", daemon=True)

    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = train(self.source, self.config, progress=self._on_progress, cancel=self._cancel, **self._dirs())
        except _Cancelled:
            self._finish(status="stopped")
        except Exception as err:  # shown on the page; the server must outlive any failed run
            self._finish(status="failed", error=f"{type(err).__name__}: {err}")
        else:
            self._finish(status=result.status, result=result)
        finally:
            if self._runs_lock is not None:
                self._runs_lock.release()

    def _dirs(self) -> dict:
        return {"runs_dir": self.runs_dir} if self.runs_dir is not None else {}

    def _finish(self, **changes) -> None:
        with self._lock:
            self._state = replace(self._state, finished_at=time.time(), **changes)

    def _on_progress(self, event: ProgressEvent) -> None:
        if event.kind == "load" and self._cancel.is_set():
            raise _Cancelled
        with self._lock:
            s = self._state
            if event.kind == "load":
                s.loaded, s.to_load = event.batch, event.batches
            elif event.kind == "start":
                s.status = "stopping" if self._cancel.is_set() else "training"
                s.batches, s.fit_started_at = event.batches, time.time()
                s.n_train, s.n_val = event.logs.get("n_train", 0), event.logs.get("n_val", 0)
                s.replicas = event.logs.get("replicas", 1)
                s.per_replica_batch = event.logs.get("per_replica_batch", s.config.batch_size)
            elif event.kind == "batch":
                s.epoch, s.batch, s.batches = event.epoch, event.batch, event.batches
                s.batch_log.append(
                    {
                        "step": s.steps_done,
                        "epoch": event.epoch,
                        "batch": event.batch,
                        "loss": event.logs.get("loss"),
                        "accuracy": event.logs.get("accuracy"),
                        "batch_loss": event.logs.get("batch_loss"),
                        "learning_rate": event.logs.get("learning_rate"),
                    }
                )
            elif event.kind == "epoch":
                s.history.append({"epoch": event.epoch, **event.logs})

    def stop(self, by: str | None = None) -> None:
        """Ask the run to end at its next batch; the best epoch so far is kept. `by` says who asked."""
        self._cancel.set()
        with self._lock:
            if self._state.running:
                self._state.status = "stopping"
                self._state.stopped_by = self._state.stopped_by or by

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def snapshot(self) -> TrainingState:
        """A copy of the state that the worker will not change under the reader."""
        with self._lock:
            s = self._state
            return replace(s, batch_log=list(s.batch_log), history=list(s.history))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (or timeout); True if it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class TrainingManager:
    """Starts runs one at a time and remembers the latest; the dashboard's one instance lets every session see it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._job: TrainingJob | None = None

    def start(
        self, source: str | os.PathLike, config: TrainConfig, runs_dir: Path | None = None, owner: str | None = None
    ) -> TrainingJob:
        """Start a run in the background for `owner` (an opaque session id), or raise TrainingBusy if one is still
        going, here or in another process training into the same runs folder."""
        with self._lock:
            if self._job is not None and self._job.running:
                state = self._job.snapshot()
                started = time.strftime("%H:%M:%S", time.localtime(state.started_at))
                by = "you" if owner is not None and state.owner == owner else owner_label(state.owner)
                raise TrainingBusy(
                    f"A training run is already in progress ({state.config.preset} preset on "
                    f"{Path(state.source).name}, started {started} by {by}). Only one run trains at a time: "
                    "wait for it to finish or stop it."
                )
            try:
                lock = RunStore(runs_dir).claim_training()
            except TrainingInProgress as err:
                reason = str(err)
                raise TrainingBusy(
                    f"{reason[:1].upper()}{reason[1:]}. Only one run trains at a time in a runs folder: "
                    "wait for it to finish."
                ) from None
            except OSError as err:  # the page shows why no run can start, as it shows a busy folder
                raise TrainingBusy(f"Cannot train here: {err}") from err
            self._job = TrainingJob(source, config, runs_dir, lock, owner).start()
            return self._job

    @property
    def current(self) -> TrainingJob | None:
        """The running job, else the last one started in this process, else None."""
        return self._job


@dataclass
class ScanState:
    """A dataset scan: its progress, and the manifest once done (or the reason it failed)."""

    path: Path
    done: int = 0
    total: int = 0
    manifest: pd.DataFrame | None = None
    error: str | None = None
    cancelled: bool = False
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.done_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the scan ends (or timeout); True if it has ended."""
        return self.done_event.wait(timeout)


class DatasetScans:
    """Scans run in background threads and are kept per dataset version (core.data.dataset_version), so switching
    pages never rescans and a zip rewritten in place is scanned afresh."""

    def __init__(self, keep: int = 8):
        self._lock = threading.Lock()
        self._scans: OrderedDict[tuple[str, str], ScanState] = OrderedDict()  # (resolved path, version)
        self._keep = keep

    def get(self, path: str | os.PathLike) -> ScanState:
        """The scan of this version of the source, started now if it never ran."""
        path = Path(path)
        try:
            key = (str(path.resolve()), dataset_version(path))
        except OSError as err:
            failed = ScanState(path, error=f"{path}: {err.strerror or err}")
            failed.done_event.set()
            return failed
        with self._lock:
            state = self._scans.get(key)
            if state is None:
                state = self._scans[key] = ScanState(path)
                threading.Thread(target=self._scan, args=(state,), name="dataset-scan", daemon=True).start()
                while len(self._scans) > self._keep:
                    self._scans.popitem(last=False)
            self._scans.move_to_end(key)
            return state

    @staticmethod
    def _scan(state: ScanState) -> None:
        def progress(done: int, total: int) -> None:
            if state.cancelled:
                raise _Cancelled
            state.done, state.total = done, total

        try:
            manifest = scan(state.path, progress)
            if not state.cancelled:
                state.manifest = manifest
        except _Cancelled:
            pass
        except DatasetError as err:
            state.error = state.error or str(err)
        except Exception as err:  # a scan that fails must say why, not hang the page at "scanning"
            state.error = state.error or f"{type(err).__name__}: {err}"
        finally:
            state.done_event.set()

    def cancel(self, path: str | os.PathLike) -> None:
        """Give up the running scan of this source now; it stays cancelled (for every page) until forget()."""
        resolved = str(Path(path).resolve())
        with self._lock:
            for key, state in self._scans.items():
                if key[0] == resolved and not state.finished:
                    state.cancelled = True
                    state.error = f"{state.path.name}: scan cancelled"
                    state.done_event.set()  # pages stop waiting at once; the thread ends at its next step

    def forget(self, path: str | os.PathLike) -> None:
        """Drop every kept scan of this source, so the next get() scans it again."""
        resolved = str(Path(path).resolve())
        with self._lock:
            for key in [k for k in self._scans if k[0] == resolved]:
                del self._scans[key]


# ---- The label-issue finder, one search per dataset per process --------------------------------------------------


class FinderBusy(RuntimeError):
    """A search was requested for a dataset that is being searched already."""


@dataclass
class FinderState:
    """A copy of one search's progress: status running, finished, cancelled or failed."""

    source: str
    fingerprint: str
    started_at: float
    owner: str | None = None
    status: str = "running"
    progress: FinderProgress | None = None
    finished_at: float | None = None
    error: str | None = None
    summary: str | None = None
    cancelled_by: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def fraction(self) -> float:
        """How far the search is, in [0, 1]: its time budget spent, or (fixed epochs) its folds done."""
        p = self.progress
        if not self.running:
            return 1.0
        if p is None:
            return 0.0
        if p.eta_s is not None:
            return min(p.elapsed_s / max(p.elapsed_s + p.eta_s, 1e-9), 1.0)
        part = p.done / p.total if p.total else 0.0
        return min((max(p.fold - 1, 0) + part) / p.folds, 1.0) if p.fold and p.folds else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left of the search's time budget (it ends by then); None with fixed epochs."""
        return self.progress.eta_s if self.running and self.progress is not None else None


class FinderJob:
    """One label-issue search in a daemon thread; its result is saved beside the dataset's corrections."""

    def __init__(self, source: Path, fingerprint: str, config: FinderConfig, owner: str | None, root: Path | None):
        self.source, self.config, self.root = Path(source), config, root
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._state = FinderState(str(source), fingerprint, time.time(), owner)
        self._thread = threading.Thread(target=self._run, name="label-issue-finder", daemon=True)

    def _run(self) -> None:
        try:
            result = find_label_issues(self.source, self.config, progress=self._on_progress, cancel=self._cancel)
            if result.fingerprint != self._state.fingerprint:
                raise ValueError(f"{self.source.name} changed while it was searched: search it again")
            save_issues(result, self.root)
        except Cancelled:
            self._finish(status="cancelled")
        except (ValueError, DatasetError, OSError) as err:  # too few photos, an unreadable source, a full disk
            self._finish(status="failed", error=str(err))
        except Exception as err:  # shown on the page; the server must outlive any failed search
            self._finish(status="failed", error=f"{type(err).__name__}: {err}")
        else:
            self._finish(status="finished", summary=result.summary())

    def _on_progress(self, event: FinderProgress) -> None:
        with self._lock:
            self._state.progress = event

    def _finish(self, **changes) -> None:
        with self._lock:
            self._state = replace(self._state, finished_at=time.time(), **changes)

    def cancel(self, by: str | None = None) -> None:
        """Ask the search to end at its next batch; nothing it found is kept. `by` says who asked."""
        self._cancel.set()
        with self._lock:
            self._state.cancelled_by = self._state.cancelled_by or by

    def snapshot(self) -> FinderState:
        """A copy of the state that the worker will not change under the reader."""
        with self._lock:
            return replace(self._state)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the search ends (or timeout); True if it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class FinderJobs:
    """At most one search per dataset fingerprint at a time; the last one of each is remembered."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, FinderJob] = {}

    def start(
        self,
        source: str | os.PathLike,
        fingerprint: str,
        config: FinderConfig,
        owner: str | None = None,
        root: Path | None = None,
    ) -> FinderJob:
        """Start searching this dataset for `owner`, or raise FinderBusy if a search of it is still going."""
        with self._lock:
            job = self._jobs.get(fingerprint)
            if job is not None and job.running:
                state = job.snapshot()
                started = time.strftime("%H:%M:%S", time.localtime(state.started_at))
                by = "you" if owner is not None and state.owner == owner else owner_label(state.owner)
                raise FinderBusy(
                    f"This dataset is already being searched (started {started} by {by}): wait for it or cancel it."
                )
            job = self._jobs[fingerprint] = FinderJob(Path(source), fingerprint, config, owner, root)
            job._thread.start()
            return job

    def get(self, fingerprint: str) -> FinderJob | None:
        """The running search of this dataset, else its last one in this process, else None."""
        return self._jobs.get(fingerprint)
