"""Streamlit caches around core, and what belongs to one session: who it is, its dataset, model and uploads.

Everything a visitor chooses lives in st.session_state (or, for uploads, on disk under the visitor's id), never in
the process, so one visitor's choice never becomes another's. The server-wide defaults are the configured
dataset and the model made "default for everyone" on the Runs page.

What is the server's alone (its training manager, dataset scans and label-issue searches, loaded predictors) is
built once per process here with st.cache_resource: core has the classes, never the instances.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from core import config, registry, uploads
from core.data import DatasetError, Source, dataset_version
from core.jobs import DatasetScans, FinderJobs, TrainingManager, owner_label
from core.registry import ModelChoice
from core.uploads import Upload

if TYPE_CHECKING:  # core.predict pulls in TensorFlow when a Keras Predictor is built, never at import
    from core.predict import BasePredictor

_OWNER_KEY = "session_owner"
_DATASET_KEY = "active_dataset"
_DATASET_GONE_KEY = "active_dataset_gone"
_MODEL_KEY = "session_model"
_MODEL_GONE_KEY = "session_model_gone"
_TOUCHED_KEY = "session_uploads_touched"
_XSRF_COOKIE = "_streamlit_xsrf"
TOUCH_EVERY_S = 300  # how often a session's use of an upload is written down, so the sweep keeps it
SWEEP_EVERY_S = 600
_log = logging.getLogger(__name__)


def _keep_keras_state() -> None:
    pass  # this app draws no matplotlib figures, the only other module Streamlit cleans


def keep_keras_state() -> None:
    """Stop Streamlit from calling keras.backend.clear_session() at the end of every script run.

    Streamlit 1.67 (script_runner._clean_problem_modules) does so, a habit from TF1 graphs. In Keras 3 that swaps
    the global state every thread shares and empties TensorFlow's kernel cache: a run training in a background
    thread can lose its layer-name counters mid-build ("should have unique names") and slows by half while the
    Train page polls, and every prediction after a rerun costs ~100 ms instead of ~7 ms.
    """
    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = _keep_keras_state


# ---- The server's background work: one of each per process, shared by every session and tab ----------------


@st.cache_resource(show_spinner=False)
def training_manager() -> TrainingManager:
    """The one training manager of this server: every session sees (and may be refused by) the same run."""
    return TrainingManager()


@st.cache_resource(show_spinner=False)
def dataset_scans() -> DatasetScans:
    """This server's dataset scans, kept per version of a source, so no page or session scans one twice."""
    return DatasetScans()


@st.cache_resource(show_spinner=False)
def finder_jobs() -> FinderJobs:
    """This server's label-issue searches, one at a time per dataset, shared by every session."""
    return FinderJobs()


# ---- Who this session is --------------------------------------------------------------------------------------


def _xsrf_token() -> bytes | None:
    # Streamlit's XSRF cookie is "2|mask|masked token|timestamp" (Tornado's format). The server sets it on the
    # first page load and keeps its token for as long as the browser keeps the cookie, but masks it afresh on
    # every load, so only the unmasked token identifies the browser.
    raw = st.context.cookies.get(_XSRF_COOKIE)
    try:
        version, mask_hex, masked_hex, _ = str(raw).strip("\"'").split("|")
        mask, masked = bytes.fromhex(mask_hex), bytes.fromhex(masked_hex)
    except ValueError:
        return None
    if version != "2" or len(mask) != 4 or len(masked) < 16:
        return None
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(masked))


def session_owner() -> str:
    """An opaque id of this browser: who started a run or dropped a zip. It survives a reload of the page.

    A reload is a new Streamlit session with empty state, so the id cannot live in st.session_state alone. It is
    a hash of the token in Streamlit's own XSRF cookie, which every browser already holds for as long as it keeps
    its cookies (the token is a credential: it is never shown, logged or stored, only this hash). A query
    parameter would also survive a reload, but a copied link would hand the run over with it. Where there is no
    cookie (XSRF protection turned off, AppTest) each session gets a random id, and a reload is a new owner.
    """
    owner = st.session_state.get(_OWNER_KEY)
    if owner is None:
        token = _xsrf_token()
        owner = hashlib.sha256(b"cats-vs-dogs-studio owner\0" + token).hexdigest()[:32] if token else None
        owner = st.session_state[_OWNER_KEY] = owner or secrets.token_hex(16)
    return owner


def session_label() -> str:
    """How other sessions see this one named on a run: "session 3f9a1c"."""
    return owner_label(session_owner())


# ---- This session's dataset and uploads -------------------------------------------------------------------------


def _is_upload(path: Path) -> bool:
    return Path(config.UPLOADS_DIR) in path.parents


def _training_sources() -> list[Path]:
    # The zip a run is decoding must not vanish under it, whoever removes it.
    job = training_manager().current
    return [Path(job.source)] if job is not None and job.running else []


def session_uploads() -> list[Upload]:
    """The zips this browser dropped and still keeps, newest first."""
    return uploads.uploads(session_owner())


def save_upload(name: str, data: BinaryIO) -> Upload:
    """Keep a dropped zip for this browser (core.uploads.save_upload); raises DatasetError with the reason."""
    return uploads.save_upload(name, data, session_owner())


def remove_upload(upload: Upload) -> None:
    """Take a zip off this browser's list; the file goes when no session keeps it and no run is reading it."""
    uploads.remove_upload(upload, session_owner(), keep=_training_sources())
    if not upload.path.exists():  # deleted, not just off this list: its kept scan goes too
        dataset_scans().forget(upload.path)
    chosen = st.session_state.get(_DATASET_KEY)
    if chosen and chosen["path"] == str(upload.path):  # asked for, so no "is no longer there" notice
        del st.session_state[_DATASET_KEY]


def _still_offered(path: Path) -> bool:
    # An upload counts only while it is on this browser's list (it may be another's file too); its use is noted.
    if not _is_upload(path):
        return path.exists()
    upload = uploads.upload_of(path, session_owner())
    if upload is None:
        return False
    touched = st.session_state.setdefault(_TOUCHED_KEY, {})
    if time.time() - touched.get(str(path), 0) > TOUCH_EVERY_S:
        uploads.touch_upload(upload, session_owner())
        touched[str(path)] = time.time()
    return True


def active_dataset() -> Path | None:
    """This session's dataset: the one it chose on the Dataset page while that is still there, else the server's
    configured default (never another session's upload)."""
    chosen = st.session_state.get(_DATASET_KEY)
    if chosen:
        path = Path(chosen["path"])
        if _still_offered(path):
            return path
        del st.session_state[_DATASET_KEY]
        st.session_state[_DATASET_GONE_KEY] = chosen["name"]
    return config.default_dataset()


def set_active_dataset(path: Path, name: str | None = None) -> None:
    """Remember the dataset for this session; the Train page and the sidebar follow it."""
    st.session_state[_DATASET_KEY] = {"path": str(path), "name": name or dataset_name(path)}
    st.session_state.pop(_DATASET_GONE_KEY, None)


def dataset_notice() -> str | None:
    """Why this session's dataset changed without it asking (its upload was removed or its folder deleted)."""
    active_dataset()  # notices a choice that has gone since the last look
    gone = st.session_state.get(_DATASET_GONE_KEY)
    if gone is None:
        return None
    fallback = config.default_dataset()
    now = f"back to the default, {fallback.name}" if fallback else "choose another on the Dataset page"
    return f"{gone} is no longer there (removed, deleted, or cleaned up after going unused): {now}."


def dataset_name(path: Path) -> str:
    """A dataset as this session knows it: an upload under the name it was dropped as, anything else by file name."""
    if _is_upload(path):
        upload = uploads.upload_of(path, session_owner())
        return upload.name if upload else path.name
    return path.name


def sweep_uploads_now_and_then() -> None:
    """Delete uploads that no session has used for CVD_UPLOAD_TTL_HOURS, at most every SWEEP_EVERY_S seconds.

    It runs in the server process at the start of a script run: uploads only arrive through script runs, so a
    server nobody visits has nothing new to sweep, and no timer thread outlives the server or a test.
    """
    global _next_sweep
    now = time.time()
    with _SWEEP_LOCK:
        if now < _next_sweep:
            return
        _next_sweep = now + SWEEP_EVERY_S
    removed = uploads.sweep_uploads(config.UPLOAD_TTL_HOURS, now, keep=_training_sources())
    if removed:
        _log.info("removed %d upload(s) unused for %g hours", len(removed), config.UPLOAD_TTL_HOURS)


_SWEEP_LOCK = threading.Lock()
_next_sweep = 0.0


# ---- This session's model -------------------------------------------------------------------------------------


def active_model() -> ModelChoice | None:
    """The model this session predicts with: its own pick while that exists, else the server's default.

    Every page asks here, never core.registry directly; a pick never changes another session's model.
    """
    chosen = st.session_state.get(_MODEL_KEY)
    if chosen is not None:
        found = registry.find(chosen)
        if found is not None:
            return found
        del st.session_state[_MODEL_KEY]
        st.session_state[_MODEL_GONE_KEY] = chosen
    return registry.default_model()


def set_session_model(key: str) -> ModelChoice:
    """Pick the model for this session only; raises KeyError for a model that is not (or no longer) offered."""
    choice = registry.find(key)
    if choice is None:
        raise KeyError(f"no model named {key!r}")
    st.session_state[_MODEL_KEY] = choice.key
    st.session_state.pop(_MODEL_GONE_KEY, None)
    return choice


def model_notice() -> str | None:
    """Why this session's model changed without it asking (the run it picked was deleted)."""
    active_model()  # notices a pick that has gone since the last look
    gone = st.session_state.get(_MODEL_GONE_KEY)
    if gone is None:
        return None
    return f"The model you picked, {gone}, is no longer on this server: this session uses the server's default again."


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_predictor(path: str, version: int) -> BasePredictor:
    from core.fastpath import open_predictor

    # The ONNX fast path (exported once, in a child process, on a model's first use), else TensorFlow; either is
    # built and warmed up once and shared read-only by every session. Grad-CAM loads the Keras model lazily.
    return open_predictor(path, note=_log.warning)


_loaded: set[tuple[str, int]] = set()  # which models are in the cache, so a hit shows no spinner
_warm_up_lock = threading.Lock()
_warm_up_thread: threading.Thread | None = None


def predictor(model_path: Path) -> BasePredictor:
    """The cached, warmed-up predictor for one of our model files (core.fastpath.open_predictor); a replaced file is
    loaded afresh.

    A model file that is gone or cannot be loaded (deleted, half-written) ends the page with one clear message.
    """
    model_path = Path(model_path)
    shipped = model_path == config.DEFAULT_MODEL
    name = "The shipped default model" if shipped else f"The model of {model_path.parent.name}"
    try:
        key = (str(model_path), model_path.stat().st_mtime_ns)
        if key in _loaded:
            return _load_predictor(*key)
        # While the start-up warm-up is loading this model, the cache's lock makes this wait for it, not load twice.
        with st.spinner("Loading the model (once per server; a first use also exports it to ONNX, under a minute)…"):
            found = _load_predictor(*key)
        _loaded.add(key)
        return found
    except FileNotFoundError:
        st.error(f"{name} is no longer on this server. Pick another model on the Predict page.")
    except Exception:  # a damaged file: say so in words; the details go to the server log, not to the visitor
        _log.exception("could not load %s", model_path)
        st.error(f"{name} could not be loaded: its file is damaged or incomplete. Pick another model.")
    st.stop()


def model_loaded(model_path: Path) -> bool:
    """Whether this server has the model loaded and warm, so a prediction with it starts at once."""
    try:
        return (str(model_path), model_path.stat().st_mtime_ns) in _loaded
    except OSError:
        return False


def _warm_up(key: tuple[str, int]) -> None:
    try:
        _load_predictor(*key)
    except Exception:  # a damaged default: the first page that needs it says so; the warm-up only logs it
        _log.exception("could not warm up %s", key[0])
        return
    _loaded.add(key)


def warm_up_model() -> None:
    """Once per server, load and warm the server's default model in a background thread, so the first drop is fast.

    Called after the first page is drawn, so TensorFlow's import does not slow that page down.
    """
    global _warm_up_thread
    with _warm_up_lock:
        if _warm_up_thread is not None or not config.WARM_UP_MODEL:
            return
        model = registry.default_model()  # before any session picks another
        if model is None or not model.path.exists():
            return
        key = (str(model.path), model.path.stat().st_mtime_ns)
        _warm_up_thread = threading.Thread(target=_warm_up, args=(key,), name="model-warm-up", daemon=True)
        _warm_up_thread.start()


def wait_for_warm_up(timeout: float | None = None) -> bool:
    """Block until the start-up warm-up has finished (True), or timeout; True at once if none was started."""
    thread = _warm_up_thread
    if thread is not None:
        thread.join(timeout)
    return thread is None or not thread.is_alive()


@st.cache_resource(max_entries=4)
def _open_source(path: str, version: str) -> Source:
    return Source(path)


def open_source(path: Path) -> Source:
    """A dataset source listed once per version (core.data.dataset_version), for reading thumbnails without
    relisting 25,000 names."""
    try:
        return _open_source(str(path), dataset_version(path))
    except (OSError, DatasetError):
        st.warning(f"{dataset_name(path)} is no longer there: choose a dataset on the Dataset page.")
        st.stop()


@st.cache_data(max_entries=16, show_spinner=False)
def _fingerprint(path: str, version: str) -> str:
    return Source(path).fingerprint()


def dataset_fingerprint(path: Path) -> str:
    """The content fingerprint of a dataset, once per version of it: what its corrections file is named by."""
    return _fingerprint(str(path), dataset_version(path))


def training_source(meta: dict) -> Path | None:
    """The dataset a run was trained on, found by content fingerprint among this session's datasets."""
    wanted = meta.get("dataset", {}).get("fingerprint")
    candidates = [p for p in (active_dataset(),) if p] + uploads.dataset_candidates(session_owner())
    for path in dict.fromkeys(candidates):
        try:
            if wanted and dataset_fingerprint(path) == wanted:
                return path
        except (OSError, DatasetError):  # removed or unreadable since it was listed
            continue
    return None
