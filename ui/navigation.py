"""Navigation fixes that only a page script can make."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager


def run_through_entrypoint() -> None:
    """Send a deep-linked first visit (a fresh server opened at /predict) through streamlit_app.py.

    Streamlit 1.67 starts a server whose entry file sits beside a `pages/` folder in its old (v1) multipage
    mode, and leaves it only when a script calls `st.navigation`. Until then a visit to /predict runs
    pages/predict.py on its own: no page config, no sidebar. Leaving v1 mode and rerunning makes this and
    every later run start at the entry file, which picks the page from the URL. Call it first on every page.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
