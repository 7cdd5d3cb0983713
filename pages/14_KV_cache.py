"""KV cache: prefill vs decode measured live, with and without the cache; the cache's bytes by formula and in memory."""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from core.jobs import REGISTRY, JobLimitError

from core.decode import kv_cache as core_kv
from core.decode.comparator import prompt_ids
from core.models.capture import InputError
from core.units import format_bytes
from ui import kv_cache as ui
from ui.explain import how_computed
from ui.inputs import checked_text
from ui.widgets import clamp_state
from ui.models import model_picker

DEFAULT_PROMPT = "The history of the printing press begins in the fifteenth century, when"

st.title("🗄️ KV cache")
lm = model_picker()
st.markdown(
    "Each new token attends to the **keys and values** of every token before it, in every layer. Those K and "
    "V never change once computed, so generation keeps them: the **KV cache**.\n"
    "- **Prefill**: the prompt goes through the model once, all its tokens in parallel (one big forward "
    "pass, compute-bound); its K and V fill the cache.\n"
    "- **Decode**: each later step feeds only the one new token; its query reads the cached K and V "
    "(small matrix-vector work, bound by reading the weights and the cache from memory).\n\n"
    "Without the cache every step recomputes the whole sequence, so token *t* costs about as much as a "
    "prefill of *t* tokens.")

prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="kv_prompt", height=70)
if prompt.strip() and not checked_text(lm, prompt, core_kv.MAX_PAGE_PROMPT_TOKENS, core_kv.WHY_PROMPT_CAP, "prompt"):
    how_computed(core_kv.decode_timed, core_kv.cache_size)
    st.stop()
try:
    ids = prompt_ids(lm, prompt)
except InputError as exc:
    st.info(str(exc))
    how_computed(core_kv.decode_timed, core_kv.cache_size)
    st.stop()

context = getattr(lm.config, "max_position_embeddings", None)
room = core_kv.MAX_NEW_TOKENS if context is None else min(core_kv.MAX_NEW_TOKENS, context - len(ids))
affordable = core_kv.max_new_tokens_for(len(ids))
if room < 2:
    st.warning(f"The prompt is {len(ids)} tokens and the context {context}: no room to generate. Shorten it.")
    st.stop()
top = max(2, min(room, affordable))
clamp_state("kv_new", 2, top, default=min(64, top))  # a longer prompt lowers the top: keep the value inside
new_tokens = st.slider("New tokens", 2, top, key="kv_new") if top > 2 else 2
if affordable < room:
    st.caption(f"At most {affordable} new tokens after a {len(ids):,}-token prompt: without the cache the "
               f"measurement feeds {core_kv.uncached_work(len(ids), affordable):,} tokens through the model "
               f"(this page allows {core_kv.MAX_UNCACHED_WORK:,}).")

# ---------------------------------------------------------------- timing
st.subheader("Prefill vs decode, measured")
key = f"kv_result|{lm.spec.key}|{prompt}|{new_tokens}"
if st.button("⏱ Measure with and without the cache", type="primary", key="kv_go"):
    box, refused = st.empty(), None
    with box.container():
        st.button("✖ Cancel", key="kv_cancel", help="Stops the measurement (any click does).")
        bar = st.progress(0.0, text=f"Generating {new_tokens} tokens twice (greedy), timing every forward pass…")
        try:  # each progress update is a point where a click (Cancel) stops this run
            with REGISTRY.heavy(core_kv.measure_peak_bytes(lm, len(ids), new_tokens), "the KV-cache measurement"):
                st.session_state[key] = core_kv.measure(lm, ids, new_tokens, lambda done, total: bar.progress(
                    done / total, text=f"Forward pass {done} of {total}"))
        except (ValueError, JobLimitError) as exc:
            refused = str(exc)
    box.empty()
    if refused:
        st.warning(refused)
m = st.session_state.get(key)
if m is None:
    st.caption("Press the button: the same greedy continuation runs with and without the cache on this "
               "model, on this machine, now.")
else:
    c = st.columns(4)
    c[0].metric("With cache", f"{m.with_cache.total * 1000:,.0f} ms",
                help="prefill + every decode step")
    c[1].metric("Without cache", f"{m.without_cache.total * 1000:,.0f} ms")
    c[2].metric("Speed-up", f"{m.speedup:.1f}×")
    c[3].metric("Decode step (cached)", f"{m.with_cache.decode_mean * 1000:.1f} ms",
                help=f"mean after the prefill, which took {m.with_cache.seconds[0] * 1000:.1f} ms "
                     f"for {m.prompt_tokens} tokens")
    st.altair_chart(ui.latency_chart(ui.latency_frame(m)), width="stretch")
    st.caption(f"One point per new token: the wall time of the forward pass that produced it. With the cache, "
               f"token 1 is the prefill ({m.prompt_tokens} prompt tokens at once), then each step feeds one "
               f"token; without it, step t feeds all {m.prompt_tokens} + t − 1 tokens again. "
               + ui.difference_text(m))

# ---------------------------------------------------------------- size
st.subheader("How big is the cache?")
size = ui.size(lm, ids)
st.markdown(f"For this prompt: {size.formula or 'unknown: ' + size.note}.")
table = pd.DataFrame([{"tokens": size.tokens, "formula": format_bytes(size.formula_bytes),
                       "the cache's tensors": format_bytes(size.actual_bytes),
                       "formula (bytes)": size.formula_bytes, "tensors (bytes)": size.actual_bytes}])
st.dataframe(table, hide_index=True, width="stretch")
if size.formula_bytes == size.actual_bytes:
    st.success(f"The formula and the bytes the cache holds after the {size.tokens}-token prompt agree exactly "
               f"(each layer's K is {list(size.layer_shapes[0])} = [batch, KV heads, tokens, head_dim], V the same).")
else:
    st.info(f"The formula and the tensors differ: {size.note or 'this model stores its cache differently'}.")
if context:
    b = st.slider("Sequences in the batch", 1, 64, 1, key="kv_batch")
    full = core_kv.formula_bytes(lm, context, b)
    if full is not None:
        st.caption(f"At the full context of {context:,} tokens, {b} sequence{'s' if b > 1 else ''}: "
                   f"**{format_bytes(full)}** of cache, next to {format_bytes(lm.memory_bytes())} of weights.")

how_computed(core_kv.decode_timed, core_kv.cache_size, core_kv.cache_tensor_bytes,
             command=f"python -m core kv-cache {lm.spec.cli()} --text {shlex.quote(prompt[:200])} "
                     f"--new-tokens {new_tokens}",
             note="Times are wall-clock seconds of each `model(...)` call (synchronised on a GPU), after a "
                  "short warm-up; the cache is transformers' `DynamicCache`.")
