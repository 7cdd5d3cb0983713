"""Decoding comparator: one prompt, several strategies decoded as one batch, step by step, beam tree."""

from __future__ import annotations

import shlex

import streamlit as st

from core.decode import filters as core_filters
from core.decode.beam import BeamSearch
from core.decode.comparator import MAX_PAGE_PROMPT_TOKENS, WHY_PROMPT_CAP, Comparison, compare, distinct_n
from core.decode.filters import Filters
from core.decode.strategies import MAX_BEAMS, MAX_SAMPLES, Strategy, make
from core.models.capture import token_display
from ui import decoding as ui
from ui.explain import how_computed
from ui.inputs import checked_text, whole_number
from ui.models import model_picker
from ui.widgets import scroll_wide_charts

DEFAULT_PROMPT = "The best way to learn a new language is"

st.title("🎲 Decoding comparator")
scroll_wide_charts()  # the beam tree's labels make it wider than a phone: it scrolls in its box, not the page
lm = model_picker()
st.markdown(
    "A language model only gives a **probability for every possible next token**; a *decoding strategy* "
    "turns that into text. **Greedy** takes the most likely token, **beam search** keeps the B most likely "
    "partial texts, and **sampling** draws at random after *filters* reshape the distribution: temperature "
    "(sharper or flatter), top-k (the k likeliest), top-p (the smallest set holding mass p), min-p (tokens at "
    "least m × as likely as the top one), typical (tokens about as surprising as the distribution's entropy) "
    "and a repetition penalty. All strategies below run **together as one batch**: the prompt is read once, "
    "then every step is one forward pass for every row.")

prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="dec_prompt", height=80)
prompt_fits = checked_text(lm, prompt, MAX_PAGE_PROMPT_TOKENS, WHY_PROMPT_CAP, "prompt")
c1, c2, c3 = st.columns(3)
max_new = c1.slider("New tokens", 4, 128, 32, key="dec_new")
seed = whole_number("Seed", 0, 0, 2**31 - 1, "dec_seed", where=c2, help="Same seed, same samples.")
samples = c3.slider("Samples per sampling strategy", 1, MAX_SAMPLES, 1, key="dec_samples",
                    help="Several draws of the same strategy (each its own seed) for distinct-n.")


def choose_strategies() -> list[Strategy | str]:
    """The strategy widgets. A strategy whose own setting is not a number it can use comes back as a note (its
    name and why), so only it is skipped."""
    st.markdown("**Strategies** (tick to include; the settings apply live once decoding has started)")
    cols = st.columns(4)
    picked: list[Strategy | str] = []
    with cols[0]:
        if st.checkbox("Greedy", True, key="dec_greedy"):
            picked.append(make("greedy"))
        if st.checkbox("Beam search", True, key="dec_beam"):
            picked.append(make("beam", num_beams=st.slider("Beams", 2, MAX_BEAMS, 3, key="dec_beams",
                                                           help="1 beam would be greedy search")))
    with cols[1]:
        if st.checkbox("Temperature", True, key="dec_temp_on"):
            picked.append(make("sample", temperature=st.slider("T", 0.05, 2.0, 0.8, 0.05, key="dec_t"),
                               samples=samples))
        if st.checkbox("Top-k", True, key="dec_topk_on"):
            k = whole_number("k", 40, 1, 50_000, "dec_k")
            picked.append(make("top_k", top_k=k, samples=samples) if k is not None else "top-k: k is not set")
    with cols[2]:
        if st.checkbox("Top-p (nucleus)", True, key="dec_topp_on"):
            picked.append(make("top_p", top_p=st.slider("p", 0.01, 1.0, 0.9, 0.01, key="dec_p"), samples=samples))
        if st.checkbox("Min-p", True, key="dec_minp_on"):
            picked.append(make("min_p", min_p=st.slider("min p", 0.0, 0.5, 0.1, 0.01, key="dec_m"),
                               samples=samples))
    with cols[3]:
        if st.checkbox("Typical", False, key="dec_typ_on"):
            picked.append(make("typical", typical=st.slider("mass", 0.05, 0.99, 0.9, 0.01, key="dec_typ"),
                               samples=samples))
        if st.checkbox("Your combination", False, key="dec_combo_on"):
            t = st.slider("T ", 0.05, 2.0, 1.0, 0.05, key="dec_ct")
            k = whole_number("k (0 = off)", 50, 0, 50_000, "dec_ck")
            f = Filters(temperature=t, top_k=k or None,
                        top_p=st.slider("p ", 0.01, 1.0, 0.95, 0.01, key="dec_cp"),
                        min_p=st.slider("min p ", 0.0, 0.5, 0.0, 0.01, key="dec_cm"),
                        repetition_penalty=st.slider("repetition penalty", 0.5, 2.0, 1.3, 0.05, key="dec_cr"))
            picked.append(Strategy("combination", "sample", f, samples=samples) if k is not None
                          else "your combination: k is not set")
    return picked


def decoded(strategies: list[Strategy], skipped: list[str]) -> Comparison | None:
    """The comparison once Decode has been pressed (then the settings apply live), else None after a note.
    Not a fragment: the Cancel button under the progress bar must be able to stop the run (see ui.comparison)."""
    if st.session_state.get(ui.CANCEL_KEY):  # the click that stopped the last decoding
        st.session_state["dec_started"] = False
        st.info("Decoding cancelled: nothing was kept. Shorten the prompt, lower the new tokens or the rows, "
                "or press Decode to run it again.")
    if not st.session_state.get("dec_started"):
        slot = st.empty()
        if slot.button("▶ Decode", type="primary", key="dec_go", disabled=not prompt_fits or seed is None):
            slot.empty()  # the progress bar and Cancel take its place
            st.session_state["dec_started"] = True
        else:
            st.caption(f"{sum(s.rows for s in strategies)} rows in one batch: press Decode to run them.")
            return None
    if not strategies:
        st.info("Tick at least one strategy." if not skipped else "Fix the settings above: no strategy can run.")
        return None
    if not prompt_fits or seed is None:
        return None  # the message sits under the prompt or the seed
    return ui.comparison(lm, prompt, strategies, max_new, seed)


@st.fragment
def show(result: Comparison, strategies: list[Strategy]) -> None:
    """The outputs, the step-through and the beam tree: their controls move only this fragment."""
    if result.notice:
        st.warning(result.notice)
    st.caption(f"{result.rows} rows, {result.forwards} forward passes (1 prefill of {len(result.prompt_ids)} "
               f"prompt tokens + 1 per step), {result.seconds:.2f} s.")

    st.subheader("Outputs")
    table = ui.summary_table(lm, result)
    st.dataframe(table, width="stretch", hide_index=True, column_config={
        "log p": st.column_config.NumberColumn(format="%.2f", help="Σ log p(token | before) under the model"),
        "perplexity": st.column_config.NumberColumn(format="%.2f", help="exp(−log p / tokens)"),
        "distinct-1": st.column_config.NumberColumn(format="%.2f", help="distinct tokens / tokens, over this "
                                                                         "strategy's samples"),
        "distinct-2": st.column_config.NumberColumn(format="%.2f", help="distinct token pairs / pairs"),
        "text": st.column_config.TextColumn(width="large")})
    cards = st.columns(2)
    for i, o in enumerate(result.outputs):
        with cards[i % 2].container(border=True):
            sample = f" · sample {o.sample + 1}" if o.strategy.samples > 1 else ""
            st.markdown(f"**{o.strategy.name}**{sample} · {o.length} tokens · log p {o.logprob:.2f} · "
                        f"perplexity {o.perplexity:.2f}")
            st.caption(o.strategy.describe())
            st.text(lm.decode(result.prompt_ids[-8:]) + "▕" + lm.decode(o.token_ids))
    every = [o.token_ids for o in result.outputs]
    st.caption(f"Log p and perplexity are the model's own (temperature 1, no filter), so every strategy is "
               f"scored the same way. Over all {len(every)} outputs: distinct-1 {distinct_n(every, 1):.2f}, "
               f"distinct-2 {distinct_n(every, 2):.2f} (1 = no repeated token / pair).")

    st.subheader("Step through an output")
    stepped = [o for o in result.outputs if o.steps]
    if stepped:
        names = [f"{o.strategy.name}" + (f" · sample {o.sample + 1}" if o.strategy.samples > 1 else "")
                 for o in stepped]
        which = st.selectbox("Output", range(len(stepped)), format_func=names.__getitem__, key="dec_which")
        out = stepped[which]
        step_i = st.slider("Step", 1, out.length, 1, key="dec_step") - 1 if out.length > 1 else 0
        step = out.steps[step_i]
        before = lm.decode(result.prompt_ids[-12:] + out.token_ids[:step_i])
        picked = token_display(lm.token_strings([step.picked])[0])
        st.markdown(f"…{before!r} → **{picked}**  ·  {out.strategy.describe()}")
        m = st.columns(4)
        m[0].metric("p (model)", f"{step.picked_p_model:.4g}")
        m[1].metric("p (after filters)", f"{step.picked_p_filtered:.4g}")
        m[2].metric("Rank in the model", step.picked_rank + 1)
        m[3].metric("Tokens left by the filters", f"{step.kept:,}")
        st.altair_chart(ui.step_chart(ui.step_frame(lm, step)), width="stretch")
        st.caption("The model's 20 most likely next tokens: grey = its probability, blue = after this "
                   "strategy's filters (renormalised over the tokens kept). ✂ = cut by a filter, ★ = picked"
                   + ("" if step.picked in step.top_ids else f" (this step picked {picked}, rank "
                      f"{step.picked_rank + 1}, outside the top 20)") + ".")
    else:
        st.info("Step-through shows greedy and sampled outputs; beam search is drawn as a tree below.")

    beams = [s for s in strategies if s.kind == "beam" and s.name in result.beam_trees]
    if beams:
        s = beams[0]
        st.subheader(f"Beam tree ({s.name})")
        nodes = result.beam_trees[s.name]
        last = max(n.step for n in nodes) + 1
        shown = st.slider("Steps shown", 1, last, min(last, 10), key="dec_tree_steps") if last > 1 else 1
        node_df, edge_df = ui.tree_frames(lm, nodes, result.best_paths[s.name], shown)
        st.altair_chart(ui.tree_chart(node_df, edge_df), width="content")  # its own width: see ui.tree_chart
        st.caption(f"Each step keeps the {2 * s.num_beams} best candidates over all beams (ranked by log p so "
                   f"far): blue continue as beams, green end the text (EOS or the last step) and compete for "
                   f"the answer, grey are dropped. Orange: the returned text. Same token ids as "
                   f"`model.generate(num_beams={s.num_beams})` (tested).")


strategies, skipped = ui.usable(choose_strategies())
if skipped:
    st.warning("Skipped, the others run: " + "; ".join(skipped) + ".")
result = decoded(strategies, skipped)
if result is not None:
    show(result, strategies)

how_computed(compare, BeamSearch.advance, core_filters.apply, core_filters.top_p, core_filters.min_p,
             command=f"python -m core compare {lm.spec.cli()} --text {shlex.quote(prompt[:200] or 'Hello')} "
                     f"--max-new-tokens {max_new} --seed {seed or 0}",
             note="One prefill of the prompt, its KV cache copied to every row (`DynamicCache."
                  "batch_repeat_interleave`), then one batched forward per step; beams reorder their rows "
                  "(`reorder_cache`). The filters are tested against transformers' logits processors, greedy "
                  "and beam search against `model.generate`.")
