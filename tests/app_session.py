"""The dashboard under Streamlit's AppTest, for the AppTest suites: a new session on a page, and its text."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core.config import ROOT

APP = str(ROOT / "streamlit_app.py")


def open_app(page: str = "pages/dataset.py", owner: str | None = None, timeout: float = 180) -> AppTest:
    """A new session that has run `page` without an exception; with owner, one of the browser that owns that id
    (as a reload of that browser is)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    if owner is not None:
        at.session_state["session_owner"] = owner
    at.run()
    if page != "pages/dataset.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    """The values of some elements (markdown, captions, ...) as one text, a line each."""
    return "\n".join(str(e.value) for e in elements)
