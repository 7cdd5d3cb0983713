"""Caps on the text a user types: the cap follows the model's context AND the cost of the work behind the box.

A forward pass over 512 tokens is cheap; a PPO step keeps every layer's activations of the whole prompt for
its backward pass, and a 20,000-character prompt once took 24 GB and the server with it. So each box states its
cap and the token count under it, and text over the cap is refused with a message before any model work.

Number boxes (`whole_number`, `decimal_number`) take what is typed (1e5, 3e-4, -5) and say on the page, not in a
tooltip, what range they accept; the work behind a box waits while it holds something else.
"""

from __future__ import annotations

import math

import streamlit as st

from core.models.loading import LoadedModel

# Up to 100,000 characters are tokenized to show the exact count (a few tens of ms); beyond that, and beyond
# 16 characters per token of the cap (a token is rarely longer), the text is refused by its length alone:
# tokenizing megabytes is itself seconds of work.
MAX_CHARS_PER_TOKEN = 16
COUNTED_CHARS = 100_000


def context_of(lm: LoadedModel) -> int | None:
    """The model's context in tokens, where its config gives one."""
    return getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)


def token_cap(lm: LoadedModel, work_cap: int) -> int:
    """The cap of a box: the work's own cap, or the model's context where that is shorter."""
    context = context_of(lm)
    return min(work_cap, context) if context else work_cap


def count_tokens(lm: LoadedModel, text: str, cap: int) -> int | None:
    """Tokens in `text` (no special tokens), or None when it is too long to be worth tokenizing."""
    if len(text) > max(cap * MAX_CHARS_PER_TOKEN, COUNTED_CHARS):
        return None
    return len(lm.encode(text))


def over_cap_message(what: str, text: str, n: int | None, cap: int, why: str) -> str:
    size = f"{n:,} tokens" if n is not None else f"{len(text):,} characters (far more than {cap:,} tokens)"
    return f"The {what} has {size}; this page takes at most {cap:,} tokens here: {why}. Shorten it."


def checked_text(lm: LoadedModel, text: str, work_cap: int, why: str, what: str = "text",
                 caption: bool = True) -> bool:
    """Show "N tokens · at most CAP" under a box; over the cap show why and return False (nothing runs)."""
    cap = token_cap(lm, work_cap)
    n = count_tokens(lm, text, cap)
    if n is not None and n <= cap:
        if caption:
            st.caption(f"{n:,} token{'s' if n != 1 else ''} · at most {cap:,} here ({why}).")
        return True
    st.warning(over_cap_message(what, text, n, cap, why))
    return False


def too_long(text: str, limit: int, label: str, where=st) -> bool:
    """A short box (an id, a word, a token) over `limit` characters: say so under it and return True.

    Streamlit's own `max_chars` throws a longer paste away whole and keeps the old text without a word; this
    keeps what was pasted and says why nothing uses it."""
    if len(text) <= limit:
        return False
    where.warning(f"{label}: {len(text):,} characters, more than the {limit:,} this box takes; shorten it "
                  "(nothing below uses it until then).")
    return True


# ---------------------------------------------------------------- number boxes


def whole_number(label: str, default: int, lo: int, hi: int, key: str, *, where=st, help: str | None = None,
                 step: int = 1) -> int | None:
    """A box for a whole number in [lo, hi]; None (after a message under it) when what was typed is not one.

    Streamlit's integer box reads "1e5" with parseInt, i.e. as 1, and a box with min/max turns red on -5 while
    the page goes on with the old value. This box is a float box with no range in the browser (1e5 is 100,000,
    -5 is -5), shown without decimals; the range is checked here, where the message can say what to type."""
    if key in st.session_state and not isinstance(st.session_state[key], float):  # an int from a link or an old run
        try:
            st.session_state[key] = float(st.session_state[key])
        except (TypeError, ValueError):
            del st.session_state[key]
    value = where.number_input(label, value=float(default), step=float(step), format="%.0f", key=key, help=help)
    if value is None or value != value or value != int(value) or not lo <= value <= hi:  # value != value: NaN
        got = "nothing" if value is None else f"{value:,.6g}"
        where.error(f"{label}: type a whole number from {lo:,} to {hi:,} (got {got}); what needs it waits until then.")
        return None
    return int(value)


def decimal_number(label: str, default: float, lo: float, hi: float | None, key: str, *, where=st,
                   help: str | None = None, step: float | None = None, fmt: str = "%g",
                   label_visibility: str = "visible") -> float | None:
    """A box for a decimal number in [lo, hi] (hi None: no upper bound); None (after a message under it) when
    what was typed is not one.

    Streamlit's own box with min/max turns red on -5, keeps showing it and hands the page the old value; the
    reason shows only on hover. This box has no range in the browser (it takes 3e-4 and -5 as typed) and checks
    the range here, on the page; the range is in its tooltip from the start. "%g" shows 3e-4 as 0.0003 and
    1e-6 as 1e-06 (a fixed "%.5f" showed 0.00000)."""
    if key in st.session_state and not isinstance(st.session_state[key], float):  # an int from a link or a test
        try:
            st.session_state[key] = float(st.session_state[key])
        except (TypeError, ValueError):
            del st.session_state[key]
    allowed = f"from {lo:g} to {hi:g}" if hi is not None else f"{lo:g} or more"
    value = where.number_input(label, value=float(default), step=step, format=fmt, key=key,
                               help=f"{help + ' ' if help else ''}Allowed: {allowed}.",
                               label_visibility=label_visibility)
    if value is None or not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        got = "nothing" if value is None else f"{value:,.6g}"
        span = allowed if hi is not None else f"of at least {lo:g}"
        where.error(f"{label}: type a number {span} (got {got}); what needs it waits until then.")
        return None
    return float(value)
