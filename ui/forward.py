"""Cached wrappers and display helpers for the Forward pass page (the math is in core/inspect/stepwise.py).

Every wrapper takes the loaded model `lm` and the capture of the text, derives its cache key from them
(`lm.spec.key`, the text, its token count) and returns core's dataclasses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.inspect import lens as core_lens
from core.inspect import stepwise as sw
from core.models.capture import MAX_TOKENS, Capture, greedy_continuation
from core.models.loading import LoadedModel
from ui import state
from ui.models import forward

_SILU = r"\mathrm{SiLU}(z) = z\,\sigma(z) = \frac{z}{1 + e^{-z}}"
_GELU_TANH = r"\mathrm{GELU}(z) \approx \tfrac12 z\,\big(1 + \tanh(\sqrt{2/\pi}\,(z + 0.044715 z^3))\big)"
# (symbol, definition) for the MLP formula, one per activation core.inspect.stepwise writes out.
ACTIVATION_FORMULAS: dict[str, tuple[str, str]] = {
    "silu": (r"\mathrm{SiLU}", _SILU),
    "swish": (r"\mathrm{SiLU}", _SILU),
    "gelu_new": (r"\mathrm{GELU}", _GELU_TANH),
    "gelu_fast": (r"\mathrm{GELU}", _GELU_TANH),
    "gelu_pytorch_tanh": (r"\mathrm{GELU}", _GELU_TANH),
    "gelu": (r"\mathrm{GELU}", r"\mathrm{GELU}(z) = z\,\Phi(z) = \tfrac12 z\,\big(1 + \mathrm{erf}(z/\sqrt2)\big)"),
    "relu": (r"\mathrm{ReLU}", r"\mathrm{ReLU}(z) = \max(0, z)"),
}


def activation_formula(name: str) -> tuple[str, str]:
    """(symbol, LaTeX definition) of a config's activation; unknown names are shown by name."""
    return ACTIVATION_FORMULAS.get(name, (rf"\mathrm{{{name}}}".replace("_", r"\_"),
                                          rf"\text{{{name} (transformers' implementation)}}".replace("_", r"\_")))


# ---------------------------------------------------------------- the capture (shared with the logit lens)


def residual_capture(lm: LoadedModel, text: str, max_tokens: int = MAX_TOKENS) -> Capture | None:
    """The one capture the Forward pass and Logit lens pages share: hidden states, attentions and the
    residual stream before the final norm (a hook on the final norm's input, `lens.residual_stream`)."""
    return forward(lm, text, max_tokens=max_tokens, hook_modules=core_lens.lens_hook_modules(lm.model))


def anatomy(lm: LoadedModel) -> tuple[sw.Anatomy | None, str | None]:
    """(the layout, None) or (None, why the hand computation cannot follow this model)."""
    try:
        return sw.anatomy(lm), None
    except sw.UnsupportedModel as exc:
        return None, str(exc)


# ---------------------------------------------------------------- cached calls into core


def _key(lm: LoadedModel, cap: Capture) -> tuple[str, str, int]:
    return lm.spec.key, cap.text, cap.seq_len


@st.cache_resource(show_spinner=False, max_entries=16)
def _layer(key: tuple, layer: int, _lm: LoadedModel, _cap: Capture) -> sw.LayerSteps:
    return sw.layer_by_hand(_lm, layer, _cap.hidden_states[layer])


def layer_steps(lm: LoadedModel, cap: Capture, layer: int) -> sw.LayerSteps:
    return _layer(_key(lm, cap), layer, lm, cap)


@st.cache_resource(show_spinner=False, max_entries=16)
def _parity(key: tuple, _lm: LoadedModel, _cap: Capture) -> sw.Parity:
    return sw.parity(_lm, _cap, chained=True)


def parity(lm: LoadedModel, cap: Capture) -> sw.Parity:
    """Every layer by hand against the model, plus the whole stack chained from the ids."""
    result = _parity(_key(lm, cap), lm, cap)
    st.session_state["fp_parity_for"] = _key(lm, cap)
    return result


def parity_ready(lm: LoadedModel, cap: Capture) -> bool:
    """Has this session already got the parity of this model and text (so reading it costs nothing)?"""
    return st.session_state.get("fp_parity_for") == _key(lm, cap)


@st.cache_resource(show_spinner=False, max_entries=16)
def _embeddings(key: tuple, _lm: LoadedModel, _cap: Capture) -> sw.EmbeddingSteps:
    return sw.embeddings_by_hand(_lm, _cap.ids)


def embedding_steps(lm: LoadedModel, cap: Capture) -> sw.EmbeddingSteps:
    return _embeddings(_key(lm, cap), lm, cap)


@st.cache_resource(show_spinner=False, max_entries=4)  # [seq, vocab] each: up to ~100 MB at 512 tokens
def _final(key: tuple, _lm: LoadedModel, _cap: Capture) -> sw.FinalSteps:
    return sw.final_by_hand(_lm, sw.layer_targets(_lm, _cap)[-1])


def final_steps(lm: LoadedModel, cap: Capture, position: int) -> sw.FinalSteps:
    """Final norm and logits of one position ([1, hidden], [1, vocab]), sliced from the whole sequence's:
    the lm_head on one row (a matrix-vector product) rounds differently from the model's on every row, by
    ~1e-5, which showed 1.7484 by hand beside 1.7483 from the model under "bit-for-bit identical"."""
    full = _final(_key(lm, cap), lm, cap)
    return sw.FinalSteps(full.final_norm[position:position + 1], full.logits[position:position + 1])


@st.cache_resource(show_spinner=False, max_entries=16)
def _norms(key: tuple, _lm: LoadedModel, _cap: Capture) -> np.ndarray:
    return sw.residual_norms(_lm, _cap).numpy()


def stream_norms(lm: LoadedModel, cap: Capture) -> np.ndarray:
    """[layers + 1, seq] length of each token's residual stream after each layer."""
    return _norms(_key(lm, cap), lm, cap)


def hand_probs(final: sw.FinalSteps, ids: list[int]) -> np.ndarray:
    """The hand softmax probabilities of these token ids (one position)."""
    return final.probs[0][ids].numpy()


def last_block_output(lm: LoadedModel, cap: Capture) -> Any:
    """[seq, hidden] the residual stream after the last block (the final norm's input)."""
    return sw.layer_targets(lm, cap)[-1]


@st.cache_data(show_spinner="Generating the greedy continuation…", max_entries=32)
def _continuation(key: str, ids: tuple[int, ...], n: int, _lm: LoadedModel) -> tuple[list[str], str]:
    new = greedy_continuation(_lm, list(ids), n)
    return _lm.token_strings(new), _lm.decode(new)


def continuation(lm: LoadedModel, ids: list[int], n: int) -> tuple[list[str], str]:
    """(generated tokens, their text) of the model's own greedy decode after `ids`."""
    return _continuation(lm.spec.key, tuple(ids), n, lm)


# ---------------------------------------------------------------- display helpers


def step(number: int, title: str, formula: str | list[str], why: str, shape: str = "") -> None:
    """Heading, formula (several lines are stacked), one line on why the step matters, and the shape."""
    st.subheader(f"{number}. {title}")
    lines = [formula] if isinstance(formula, str) else formula
    st.latex(lines[0] if len(lines) == 1 else r"\begin{gathered}" + r" \\ ".join(lines) + r"\end{gathered}")
    st.markdown(why + (f"  \n**Shape** `{shape}`" if shape else ""))


def vectors(rows: dict[str, Any], n_dims: int, start: int = 0) -> None:
    """One row per named vector (a 1-D tensor or None), its dims [start, start + n_dims) as columns."""
    data = {name: np.asarray(v[start:start + n_dims]) for name, v in rows.items() if v is not None}
    width = min(len(v) for v in data.values())
    df = pd.DataFrame(np.stack([v[:width] for v in data.values()]), index=list(data),
                      columns=[str(start + i) for i in range(width)])
    st.dataframe(df.round(4), width="stretch")


def check(label: str, diff: float, lm: LoadedModel, what: str = "the model") -> None:
    """A check mark with the figure: hand computation vs the model."""
    if lm.spec.dtype != "float32":
        st.caption(f"ℹ️ {label}: max |Δ| vs {what} = {diff:.2e} (the model runs in {lm.spec.dtype}; the "
                   f"hand computation in float32, so rounding differences are expected)")
    elif diff <= sw.PARITY_TOLERANCE:
        st.caption(f"✅ {label}: max |Δ| vs {what} = **{diff:.2e}** (≤ {sw.PARITY_TOLERANCE:.0e})")
    else:
        st.error(f"❌ {label}: max |Δ| vs {what} = {diff:.2e} (> {sw.PARITY_TOLERANCE:.0e})")


def index_slider(label: str, count: int, key: str, help: str) -> int:
    """A 0..count-1 slider; a slider needs two values, so a single layer or head is just stated."""
    if count < 2:
        st.caption(f"{label}: 0 (the only one)")
        return 0
    return state.keep(st.slider, label, 0, count - 1, 0, key=key, help=help)


MAX_KEYS_SHOWN = 48


def key_window(seq: int, position: int) -> range:
    """Which keys to list for a query: all when few, else the MAX_KEYS_SHOWN ending just past the query."""
    if seq <= MAX_KEYS_SHOWN:
        return range(seq)
    end = min(seq, position + 2)
    return range(max(0, end - MAX_KEYS_SHOWN), end)
