"""The "How this was computed" expander every page ends with."""

from __future__ import annotations

import inspect
from typing import Callable

import streamlit as st


def how_computed(*functions: Callable, command: str | None = None, note: str | None = None) -> None:
    """Show the source of the core functions behind a page and the CLI command that reproduces it."""
    with st.expander("How this was computed"):
        if note:
            st.markdown(note)
        if command:
            st.markdown("The same numbers from a terminal:")
            st.code(command, language="bash")
        for fn in functions:
            st.markdown(f"`{fn.__module__}.{fn.__qualname__}`")
            st.code(inspect.getsource(fn), language="python")
