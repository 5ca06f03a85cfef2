"""Streamlit caches around core, and the per-session choice of dataset, shared by every page."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from core import catalog, config
from core.data import Source
from core.jobs import source_version

if TYPE_CHECKING:  # core.predict pulls in TensorFlow when a Predictor is built, never at import
    from core.predict import Predictor

_DATASET_KEY = "active_dataset"


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


def active_dataset() -> Path | None:
    """This session's dataset: the one chosen on the Dataset page, else the default, else an upload."""
    chosen = st.session_state.get(_DATASET_KEY)
    if chosen and Path(chosen).exists():
        return Path(chosen)
    candidates = catalog.dataset_candidates()
    return candidates[0] if candidates else None


def active_model() -> catalog.ModelChoice | None:
    """The model this session predicts with and compares against; every page asks here, never catalog directly."""
    return catalog.active()


def set_active_dataset(path: Path) -> None:
    """Remember the dataset for this session; the Train page and the sidebar follow it."""
    st.session_state[_DATASET_KEY] = str(path)


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_predictor(path: str, version: int) -> Predictor:
    from core.predict import Predictor

    return Predictor(path)  # builds, traces and warms up once; shared read-only by every session


_loaded: set[tuple[str, int]] = set()  # which models are in the cache, so a hit shows no spinner
_warm_up_lock = threading.Lock()
_warm_up_thread: threading.Thread | None = None


def predictor(model_path: Path) -> Predictor:
    """The cached, warmed-up Predictor for one of our model files; a replaced file is loaded afresh."""
    key = (str(model_path), model_path.stat().st_mtime_ns)
    if key in _loaded:
        return _load_predictor(*key)
    # While the start-up warm-up is loading this model, the cache's lock makes this wait for it, not load twice.
    with st.spinner("Loading the model (once per server)…"):
        found = _load_predictor(*key)
    _loaded.add(key)
    return found


def model_loaded(model_path: Path) -> bool:
    """Whether this server has the model loaded and warm, so a prediction with it starts at once."""
    return (str(model_path), model_path.stat().st_mtime_ns) in _loaded


def _warm_up(key: tuple[str, int]) -> None:
    _load_predictor(*key)
    _loaded.add(key)


def warm_up_model() -> None:
    """Once per server, load and warm the default active model in a background thread, so the first drop is fast.

    Called after the first page is drawn, so TensorFlow's import does not slow that page down.
    """
    global _warm_up_thread
    with _warm_up_lock:
        if _warm_up_thread is not None or not config.WARM_UP_MODEL:
            return
        model = catalog.active()  # the server's default, before any session picks another
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
def _open_source(path: str, version: tuple) -> Source:
    return Source(path)


def open_source(path: Path) -> Source:
    """A dataset source listed once per version, for reading thumbnails without relisting 25,000 names."""
    return _open_source(str(path), source_version(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _fingerprint(path: str, version: tuple) -> str:
    return Source(path).fingerprint()


def training_source(meta: dict) -> Path | None:
    """The dataset a run was trained on, found by content fingerprint among this session's datasets."""
    wanted = meta.get("dataset", {}).get("fingerprint")
    candidates = dict.fromkeys([p for p in (active_dataset(),) if p] + catalog.dataset_candidates())
    for path in candidates:
        if wanted and _fingerprint(str(path), source_version(path)) == wanted:
            return path
    return None
