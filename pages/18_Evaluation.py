"""Evaluation: sliding-window perplexity, KL between two models' predictions, multiple-choice accuracy."""

from __future__ import annotations

import math
import shlex

import streamlit as st

from core.data import tiny_shakespeare
from core.evaluate import divergence, multiple_choice, perplexity
from core.models.capture import InputError
from core.models.loading import ModelLoadError
from ui import evaluate as ui
from ui.explain import how_computed
from ui.inputs import checked_text, whole_number
from ui.jobs import attached_job, job_controls, live_panel, start_job
from ui.models import get_model, model_picker

DEFAULT_TEXT = (
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp. Ships passing in the "
    "night saw its beam and knew that the rocks were near. One winter the storm was so strong that the waves "
    "reached the top of the tower, but the keeper stayed at his post until morning. When the sun rose, the sea "
    "was calm again, and the fishermen in the village thanked him for keeping them safe.")
SAMPLES = {
    "A plain English paragraph": DEFAULT_TEXT,
    "Tiny Shakespeare (the first 700 characters)": None,
    "The same paragraph, words reversed": " ".join(reversed(DEFAULT_TEXT.split())),
}


def use_sample() -> None:
    name = st.session_state["eval_sample"]
    st.session_state["eval_text"] = SAMPLES[name] if SAMPLES[name] is not None else tiny_shakespeare()[:700]


st.title("🧪 Evaluation")
lm = model_picker()
context = min(perplexity.context_length(lm) or ui.MAX_WINDOW, ui.MAX_WINDOW)
st.markdown(
    "Three ways to put a number on a language model: how surprised it is by a text (**perplexity**), how far "
    "its predictions move when the model changes (**KL divergence**), and whether it prefers the sensible "
    "ending of a story (**multiple choice**, in the style of HellaSwag).")

# ---------------------------------------------------------------- perplexity
st.header("Perplexity with a sliding window")
st.markdown(
    "Perplexity is exp of the mean negative log-likelihood of each token given the tokens before it: "
    "PPL = exp(−(1/N) Σᵢ log p(xᵢ | x₁ … xᵢ₋₁)). A model reads at most its context at once, so a long text is "
    "scored in **windows** that start every **stride** tokens; each window scores only the tokens the previous one did "
    "not reach. A smaller stride gives each token more context (usually a lower perplexity) for more passes.")
st.selectbox("Start from", list(SAMPLES), key="eval_sample", on_change=use_sample)
text = st.text_area("Text to score", DEFAULT_TEXT, key="eval_text", height=110)
text_fits = checked_text(lm, text, ui.MAX_TEXT_TOKENS, ui.WHY_TEXT_CAP) if text.strip() else True
c1, c2 = st.columns(2)
window = whole_number("Window (tokens per forward pass)", min(32, context), 2, max(2, context), "eval_window",
                      where=c1, step=8,
                      help=f"At most {context:,} tokens here (the model's context, capped for memory).")
stride = whole_number("Stride (tokens between window starts)", 16, 1, max(2, context), "eval_stride", where=c2,
                      step=4, help="At most the window. stride = window: disjoint windows, the first token of "
                                   "each has no context and is not scored.")
result = None
if text_fits and window is not None and stride is not None:
    try:
        result = ui.perplexity_with_progress(lm, text, window, stride)
    except InputError as exc:
        (st.info if str(exc).startswith("The text") else st.warning)(str(exc))
if result is not None:
    if result.truncated:
        st.warning(f"The text has {result.n_tokens_in_text:,} tokens; only the first {len(result.ids):,} are scored.")
    m = st.columns(4)
    m[0].metric("Perplexity", f"{result.ppl:,.2f}", help="exp(mean NLL): the model is as unsure as a uniform "
                "choice among this many tokens, on average")
    m[1].metric("Mean NLL", f"{result.mean_nll:.3f} nats", help=f"{result.bits_per_token:.2f} bits per token")
    m[2].metric("Scored tokens", f"{result.scored_tokens:,}",  # "4,999 of 5,000" is cut off in a quarter column
                help=f"of the {len(result.ids):,} tokens read; the first has nothing before it to predict it from")
    m[3].metric("Forward passes", f"{len(result.windows):,}")
    st.altair_chart(ui.windows_chart(result), width="stretch")
    st.caption(f"Each row is one forward pass of at most {window} tokens: light = read as context only, dark = "
               "scored in this pass. Every token is scored exactly once (token 0 has nothing before it"
               + (", nor has the first token of each disjoint window" if stride == window else "") + ").")
    st.altair_chart(ui.nll_chart(result), width="stretch")
    st.caption("−log p of each token given its window's context (hover for the token). Colour: how many tokens "
               "of context it had. Spikes are the tokens that surprised the model.")

# ---------------------------------------------------------------- KL divergence
st.header("KL divergence between two models")
st.markdown(
    "Run the same tokens through two models P and Q and compare their next-token distributions at every "
    "position: KL(P‖Q) = Σᵥ P(v) (log P(v) − log Q(v)), in nats; 0 means identical predictions. "
    "Useful for what quantization or a lower precision costs, or how far a checkpoint moved during training. "
    "Both models must share the tokenizer. P is the loaded model.")
partners = ui.kl_partners(lm.spec)
k1, k2 = st.columns([2, 1])
other = k1.selectbox("Q: compare with", list(partners), key="eval_kl_other",
                     format_func=lambda s: ui.partner_label(s, partners),
                     help="Lower precision of the same weights, the tiny models and the embedded model (they "
                          "share SmolLM2's tokenizer), and saved runs of the training lab.")
kl_text = k2.text_input("Text", "The capital of France is Paris, and the capital of Italy is Rome.",
                        key="eval_kl_text")
kl_fits = checked_text(lm, kl_text, divergence.MAX_KL_TOKENS, ui.WHY_KL_CAP) if kl_text.strip() else True
if st.button("Compare P and Q", key="eval_kl_run", disabled=not kl_fits):
    st.session_state["eval_kl_for"] = (lm.spec.key, other, kl_text)
kl_result = None
if st.session_state.get("eval_kl_for") == (lm.spec.key, other, kl_text) and other in partners and kl_fits:
    try:
        q = get_model(partners[other])
        with st.spinner("Running both models…"):
            kl_result = ui.kl_between(lm.spec.key, q.spec.key, kl_text, lm, q)
    except ModelLoadError as exc:
        st.error(f"Could not load Q: {exc}")
    except InputError as exc:
        st.warning(str(exc))
if kl_result is not None:
    m = st.columns(4)
    m[0].metric("Mean KL(P‖Q)", ui.nats(kl_result.mean), help="nats")
    m[1].metric("Largest KL", ui.nats(kl_result.max), help="nats")
    m[2].metric("Top-1 agreement", f"{100 * kl_result.top1_agreement:.1f}%")
    m[3].metric("Mean entropy of P", f"{float(kl_result.entropy_p.mean()):.3f} nats",
                help="For scale: a KL small next to P's own uncertainty is a small change.")
    st.altair_chart(ui.kl_chart(kl_result, lm.token_strings(kl_result.top1_q), lm.token_strings(kl_result.top1_p)),
                    width="stretch")
    st.caption(f"P = {lm.name}, Q = {ui.partner_label(other, partners)}. Red bars: positions where the two "
               "models' most likely next token differs.")
    if kl_result.truncated:  # name the limit that actually cut: the page's cap, P's context or Q's
        limits = [(c, name) for c, name in ((divergence.MAX_KL_TOKENS, "this page's cap"),
                                            (perplexity.context_length(lm), "P's context"),
                                            (perplexity.context_length(q), "Q's context")) if c]
        cut, why = min(limits)
        st.warning(f"Only the first {len(kl_result.ids):,} tokens were compared ({why}: {cut:,} tokens).")
    if not math.isfinite(kl_result.mean):
        st.warning("A model produced inf or NaN logits on this text (float16 on a CPU can overflow), so the KL is "
                   "not a number; try bfloat16 or float32.")

# ---------------------------------------------------------------- multiple choice
st.header("Multiple choice (HellaSwag style)")
items = multiple_choice.load_items()
st.markdown(
    f"{len(items)} short everyday situations shipped with the lab (`data/multiple_choice.jsonl`), each with four "
    "endings of which one makes sense. The model scores each ending by its log-likelihood given the context "
    "and picks the highest: **summed** over the ending's tokens (favours short endings) or **per token** "
    "(length-normalised). Chance is 25%.")
with st.expander("An example item"):
    st.markdown(f"**{items[0].context}** …")
    for j, e in enumerate(items[0].endings):
        st.markdown(f"{'ABCD'[j]}. {e}" + ("  ← correct" if j == items[0].label else ""))
job = attached_job("mc")
if st.button(f"Score the {len(items)} items with {lm.name}", key="eval_mc_run",
             disabled=job is not None and job.snapshot().active):
    job = start_job("mc", "multiple-choice", ui.mc_work(lm, items), title=f"Multiple choice · {lm.name}",
                    total_steps=len(items))
if job is not None:
    job_controls(job, "eval_mc")
    live_panel(job, lambda snap: st.caption(
        f"{snap.metrics[-1]['correct (per token)']} of {snap.step} right so far (per token)" if snap.metrics
        else "Loading the first item…"))
    snap = job.snapshot()
    mc = snap.result if snap.status == "finished" else None
    if mc is not None:
        n = len(mc.scores)
        m = st.columns(3)
        m[0].metric("Accuracy (summed)", f"{100 * mc.accuracy_summed:.1f}%",
                    help=f"{round(mc.accuracy_summed * n)}/{n} items")
        m[1].metric("Accuracy (per token)", f"{100 * mc.accuracy_normalised:.1f}%",
                    help=f"{round(mc.accuracy_normalised * n)}/{n} items")
        m[2].metric("Chance", f"{100 * mc.chance:.0f}%")
        st.dataframe(ui.mc_table(mc), width="stretch", hide_index=True)
        pick = st.selectbox("Look at one item", range(n), key="eval_mc_item",
                            format_func=lambda i: f"{mc.scores[i].item.id}. {mc.scores[i].item.context[:70]}…")
        st.dataframe(ui.mc_item_table(mc.scores[pick]), width="stretch", hide_index=True)
        st.caption(f"{snap.title}. Log-likelihoods in nats (natural log); closer to 0 = more likely. With {n} "
                   f"items one item is {100 / n:.0f} percentage points: orientation figures, not a benchmark.")

how_computed(perplexity.perplexity_of_ids, perplexity.plan_windows, divergence.next_token_kl,
             multiple_choice.ending_log_likelihoods,
             command=(f"python -m core perplexity {lm.spec.cli()} --text {shlex.quote(text)} --window {window} "
                      f"--stride {stride}\n"  # the text on the page, whole: the command scores the same tokens
                      f"python -m core kl {lm.spec.cli()} {ui.other_cli(partners.get(other))} "
                      f"--text {shlex.quote(kl_text)}\n"
                      f"python -m core mc {lm.spec.cli()} --items"),
             note="Every number is the model's own log-softmax of its logits on the tokens shown; the "
                  "sliding window follows the Hugging Face guide *Perplexity of fixed-length models*.")
