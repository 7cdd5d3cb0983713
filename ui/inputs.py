"""Caps on the text a user types: the cap follows the model's context AND the cost of the work behind the box.

A forward pass over 512 tokens is cheap; a PPO step keeps every layer's activations of the whole prompt for
its backward pass, and a 20,000-character prompt once took 24 GB and the server with it. So each box states its
cap and the token count under it, and text over the cap is refused with a message before any model work.
"""

from __future__ import annotations

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
