"""Ablation and activation patching: switch parts of the model off, or put clean activations into a corrupted run."""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from core.circuits import ablation as A
from core.circuits import patching as P
from core.models.capture import InputError, token_display
from ui import circuits as ui
from ui import state
from ui.explain import how_computed
from ui.inputs import too_long
from ui.jobs import attached_job, job_controls, live_panel, start_job
from ui.models import model_picker
from ui.text import md

DEFAULT_TEXT = "The Eiffel Tower is in the city of"
OWN = "Your own prompts"
WHAT = {"resid": "residual stream (layer × position)", "heads": "each head's output", "mlp": "each MLP's output"}

st.title("✂️ Ablation and patching")
lm = model_picker()


def q(s: str) -> str:
    return shlex.quote(s) if len(s) <= 200 else "'YOUR TEXT'"


lay = ui.circuit_layout(lm)
if lay is None:
    how_computed(A.ablate, P.activation_patching)
    st.stop()
# Keyed and bound to the URL: a rerun (the Run button, a finished job) stays on the tab the user is on.
tab_ablate, tab_patch = st.tabs(["Ablation", "Activation patching"], key="ap_tab", on_change="rerun",
                                bind="query-params")

# ---------------------------------------------------------------- ablation
with tab_ablate:
    st.markdown(
        "Switch components off and watch the prediction move. **Zero** ablation removes a head's output entirely "
        "(its slice of the output projection's input is set to 0 at every position); **mean** ablation replaces it "
        "by its average over the text's positions, keeping what it always writes and removing what depends on "
        "the tokens.")
    text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, key="abl_text", height=68,
                      help=f"Up to {ui.MAX_TOKENS} tokens are used (longer texts are cut).")
    units = [f"L{l}.H{h}" for l in range(lay.n_layers) for h in range(lay.n_heads)]
    c1, c2 = st.columns([3, 1])
    chosen = state.keep(c1.multiselect, "Heads to switch off", units, key="abl_heads",
                        placeholder="e.g. L3.H1 (layer.head, from 0)")
    every = state.keep(c2.toggle, "Every head", key="abl_all", help="All heads of all layers.")
    c3, c4, c5 = st.columns([2, 2, 1])
    layers = list(range(lay.n_layers))
    attn_layers = state.keep(c3.multiselect, "Whole attention layers", layers, key="abl_layers")
    mlps = state.keep(c4.multiselect, "MLPs", layers, key="abl_mlps")
    mode = state.keep(c5.radio, "Mode", list(A.MODES), key="abl_mode")
    heads = [tuple(divmod(i, lay.n_heads)) for i in range(len(units))] if every else \
        [tuple(int(x) for x in u[1:].split(".H")) for u in chosen]
    ablation = A.Ablation(tuple(heads), tuple(attn_layers), tuple(mlps), mode)
    if ablation.empty:
        st.info("Choose heads, attention layers or MLPs to switch off.")
    else:
        res = ui.ablate(lm, text, ablation)
        if res is not None:
            before, after = res.top_k_before[0]["token"], res.top_k_after[0]["token"]
            if res.all_heads:
                st.warning("Every attention head is switched off: no token can read any other token, so each "
                           "position only sees itself (through the MLPs). What is left is a bigram-like model.")
            m = st.columns(4)
            m[0].metric(f"logit of {token_display(before)!r}", f"{res.logit_after:.3f}",
                        f"{res.logit_after - res.logit_before:+.3f}", help="The top-1 before ablation.")
            m[1].metric("its probability", f"{res.prob_after:.3f}", f"{res.prob_after - res.prob_before:+.3f}")
            m[2].metric("KL(before ‖ after)", f"{res.kl:.4f} nats")
            m[3].metric("top-1 after", repr(token_display(after)))
            t = pd.DataFrame({"before": [f"{token_display(r['token'])}  {r['prob']:.3f}" for r in res.top_k_before],
                              "after": [f"{token_display(r['token'])}  {r['prob']:.3f}" for r in res.top_k_after]})
            st.dataframe(t, hide_index=True, width="stretch")
            st.caption(f"Switched off ({mode}): {md(ablation.label()) if len(ablation.label()) < 300 else 'many'}.")
    heads_arg = ",".join(f"{l}.{h}" for l, h in heads) or "0.0"
    abl_cmd = (f"python -m core ablate {lm.spec.cli()} --text {q(text)} --heads {heads_arg}"
               + (f" --mlps {','.join(map(str, mlps))}" if mlps else "")
               + (f" --attn-layers {','.join(map(str, attn_layers))}" if attn_layers else "") + f" --mode {mode}")

# ---------------------------------------------------------------- patching
with tab_patch:
    st.markdown(
        "Two prompts that differ in one fact, the same number of tokens. Run the **corrupted** one, but put back "
        "one **clean** activation, and see how much of the clean answer returns: 0 = still the corrupted answer, "
        "1 = fully restored. The measure is the logit difference target − contrast at the last position.")

    def use_preset() -> None:
        preset = st.session_state.get("ap_preset")
        if preset in P.PRESETS:
            for key, value in zip(("pt_clean", "pt_corrupt", "pt_target", "pt_contrast"), P.PRESETS[preset]):
                st.session_state[key] = value

    first = next(iter(P.PRESETS.values()))
    preset = state.keep(st.selectbox, "Preset", [*P.PRESETS, OWN], key="ap_preset", on_change=use_preset)
    p1, p2 = st.columns(2)
    clean = state.keep(p1.text_input, "Clean prompt", value=first[0], key="pt_clean")
    corrupt = state.keep(p2.text_input, "Corrupted prompt", value=first[1], key="pt_corrupt")
    p3, p4, p5 = st.columns([1, 1, 2])
    target = state.keep(p3.text_input, "Target (clean answer)", value=first[2], key="pt_target")
    contrast = state.keep(p4.text_input, "Contrast (corrupted answer)", value=first[3], key="pt_contrast")
    what = state.keep(p5.radio, "Patch", list(WHAT), format_func=WHAT.get, key="pt_what")
    args = (clean, corrupt, target, contrast, what)
    problem = None
    long = [too_long(t, n, label) for t, n, label in ((clean, 2000, "Clean prompt"), (corrupt, 2000, "Corrupted prompt"),
                                                      (target, 100, "Target"), (contrast, 100, "Contrast"))]
    try:
        if any(long):
            raise InputError("Shorten the box marked above; nothing is patched until then.")
        ids_clean, ids_corrupt = P.prompt_ids(lm, clean, corrupt, ui.MAX_TOKENS)
        if not target.strip() or not contrast.strip():
            problem = "Type a target and a contrast answer (a word each; its first token is used)."
    except InputError as exc:
        problem = str(exc)
    if problem:
        st.info(problem)
    else:
        work = ui.patching_work_size(lm, lay, what, len(ids_clean))
        title = f"Patching {what} · {lm.name} · {clean[:40]}"
        job = attached_job("patch")
        result = st.session_state.get("pt_result")
        if result is not None and result[0] != (lm.spec.key, args):
            result = None
        if st.button("Run the patched runs", key="pt_run", type="primary",
                     disabled=job is not None and job.snapshot().active):
            if work <= ui.INLINE_WORK:
                got = ui.patching_inline(lm, args)
                result = ((lm.spec.key, args), got) if got is not None else None
                st.session_state["pt_result"] = result
            else:
                job = start_job("patch", "patching", ui.patching_work(lm, args), title=title,
                                total_steps=ui.patching_runs(lay, what, len(ids_clean)))
        if job is not None and work > ui.INLINE_WORK:
            job_controls(job, "pt_job")
            live_panel(job, lambda snap: None)
            snap = job.snapshot()
            if snap.status == "finished" and snap.title == title:
                result = ((lm.spec.key, args), snap.result)
            elif snap.status == "failed" and "tokens" in (snap.message or ""):
                st.info(snap.message)
        if result is not None:
            r: P.Patching = result[1]
            m = st.columns(4)
            m[0].metric("clean diff", f"{r.clean_diff:+.3f}")
            m[1].metric("corrupted diff", f"{r.corrupt_diff:+.3f}")
            m[2].metric("patched runs", f"{r.runs}")
            m[3].metric("time", f"{r.seconds:.1f} s")
            labels = [f"{i}·{token_display(a)}" + ("" if a == b else f"/{token_display(b)}")
                      for i, (a, b) in enumerate(zip(r.tokens_clean, r.tokens_corrupt))]
            grid = r.restored.numpy()
            if r.what == "resid":
                rows = ["0 · embeddings"] + [str(l) for l in range(1, lay.n_layers)] + [f"{lay.n_layers} · last"]
                chart = ui.grid_heatmap(grid, rows, labels, "Residual stream patched", "position (clean/corrupt)",
                                        "before layer")
            elif r.what == "heads":
                chart = ui.head_heatmap(grid, "Head outputs patched", "restored")
            else:
                chart = ui.grid_heatmap(grid, [str(l) for l in range(lay.n_layers)], ["MLP"], "MLP outputs patched",
                                        "", "layer")
            st.altair_chart(chart, width="content")
            st.caption("Red = restores the clean answer, blue = pushes further towards the corrupted one."
                       + (" Residual rows: the stream entering that layer; the last row is the stream after the last "
                          "layer, so its last position restores exactly 1." if r.what == "resid" else ""))
            if r.what == "heads":
                flat = sorted(((float(grid[l, h]), l, h) for l in range(grid.shape[0]) for h in range(grid.shape[1])),
                              reverse=True)[:5]
                st.markdown("Heads that restore the most: " + ", ".join(
                    f"{ui.unit_link(f'L{l}.H{h}', clean)} ({v:.2f})" for v, l, h in flat))
        elif work > ui.INLINE_WORK:
            st.caption(f"{ui.patching_runs(lay, what, len(ids_clean))} patched runs of {lm.name}: they run as a "
                       "background job with progress, batched 32 at a time (you can leave the page and come back).")
    pt_cmd = (f"python -m core patch {lm.spec.cli()} --clean {q(clean)} --corrupt {q(corrupt)} "
              f"--target {q(target)} --contrast {q(contrast)} --what {what}")

state.share_link()
how_computed(A.ablated, A.ablate, P.patched, P.activation_patching, command=f"{abl_cmd}\n{pt_cmd}",
             note="Ablation and patching change the model's own modules' inputs or outputs with PyTorch hooks, "
                  "then run the model as usual. Patched runs are batched: row b of the batch carries patch b.")
