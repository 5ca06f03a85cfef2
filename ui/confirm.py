"""A button that asks before it acts, for actions that cannot be undone or that touch other sessions' work."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st


def confirm_button(
    label: str, key: str, question: str, confirm: str, on_confirm: Callable[..., None], args: tuple = ()
) -> None:
    """`label` first; once clicked, `question` as a warning with a primary `confirm` button that calls on_confirm.

    Widget keys: `key` and `key + "_confirm"`; the session remembers that it asked under `key + "_asked"`.
    """
    asked = f"{key}_asked"
    if not st.session_state.get(asked):
        st.button(label, key=key, on_click=lambda: st.session_state.update({asked: True}))
        return
    st.warning(question)
    st.button(confirm, key=f"{key}_confirm", type="primary", on_click=_confirmed, args=(key, on_confirm, args))


def forget(key: str) -> None:
    """Take back confirm_button(key=...)'s question, asked and not answered: another action made it moot."""
    st.session_state.pop(f"{key}_asked", None)


def _confirmed(key: str, on_confirm: Callable[..., None], args: tuple) -> None:
    forget(key)
    on_confirm(*args)
