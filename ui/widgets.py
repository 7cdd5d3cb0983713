"""Keeping widget values valid when what they index changes (another model, another text)."""

from __future__ import annotations

from typing import Any

import streamlit as st


def clamp_state(key: str, lo: int, hi: int, default: int | None = None) -> None:
    """Keep a keyed widget's remembered value inside [lo, hi] (another model may have fewer layers or heads).

    With `default`, a key that has no value yet gets it (clamped too), so the widget can be created
    without its own value argument and never raises a stale-range error."""
    value = st.session_state.get(key, default)
    if value is None:
        return
    st.session_state[key] = int(min(max(value, lo), hi))


def keep_choice(key: str, choices: list[Any], default: Any = None) -> None:
    """Replace a remembered choice that is no longer offered (e.g. a position of a longer text) by `default`.

    Setting the value, rather than forgetting it, makes Streamlit send it to the browser, which otherwise
    keeps showing the stale option's label (the widget's identity is its key)."""
    value = st.session_state.get(key)
    if value is None or value not in choices:
        if default is not None:
            st.session_state[key] = default
        elif key in st.session_state:
            del st.session_state[key]
