"""Two Streamlit 1.67 behaviours this app turns off, each with the reason; tests pin both."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import script_runner


def _clean_nothing() -> None:
    pass  # this app draws no matplotlib figures, the only other module Streamlit cleans


def keep_keras_state() -> None:
    """Stop Streamlit from calling keras.backend.clear_session() at the end of every script run.

    Streamlit does so (script_runner._clean_problem_modules), a habit from TF1 graphs. In Keras 3 that swaps the
    global state every thread shares and empties TensorFlow's kernel cache: a run training in a background thread
    can lose its layer-name counters mid-build ("should have unique names") and slows by half while the Train
    page polls, and the first prediction after every rerun costs ~150 ms instead of ~7 ms.
    """
    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = _clean_nothing


def run_through_entrypoint() -> None:
    """Send a page opened by its URL on a fresh server through streamlit_app.py.

    Streamlit treats an app with a pages/ folder as an old-style multipage app until its entrypoint has called
    st.navigation once in the process (PagesManager.uses_pages_directory). Until then a link such as /predict runs
    pages/predict.py alone: no sidebar, Streamlit's own page list, no keep_keras_state(). Clearing the flag and
    rerunning sends this run through the entrypoint, which opens the same page.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
