"""GPUs and planner: accelerators across generations, this machine measured, memory and speed for any model."""

from __future__ import annotations

import streamlit as st

from core.data import reference_config, reference_configs
from core.hardware import gpus as core_gpus
from core.hardware import measure as core_measure
from core.hardware import planner as core_planner
from core.inspect.architecture import config_from_json_text
from core.units import format_bytes, format_count, format_duration
from ui import hardware as ui
from ui.explain import how_computed
from ui.inputs import decimal_number, whole_number
from ui.models import model_picker
from ui.widgets import scroll_wide_charts

st.title("🖥️ GPUs and planner")
scroll_wide_charts()
lm = model_picker()
st.markdown(
    "A language model is two things to the hardware: **bytes** that must sit in memory (weights, KV cache) "
    "and **FLOPs** that must be computed (about 2 per parameter per token). Which one limits you depends on "
    "the phase: reading a prompt (prefill) is compute bound, generating one token at a time (decode) is "
    "bandwidth bound, because every weight is read once per token for a couple of FLOPs.")

# ---------------------------------------------------------------- the table
st.subheader("Accelerators across generations")
frame = ui.gpu_frame()
machine = st.session_state.get(ui.MEASURE_KEY)
st.dataframe(ui.styled_table(ui.table_with_machine(frame, machine).rename(columns=ui.COLUMN_LABELS)),
             hide_index=True, width="stretch")
st.caption("Dense tensor-core figures (NVIDIA's headline numbers are often *with sparsity*, twice these). "
           "T4 and V100 have no BF16: their FP16 tensor figure is shown and used. Bandwidth GB/s = 10⁹ bytes/s; "
           "the memory column is the datasheet's \"GB\", but the planner uses what the card reports "
           "(nvidia-smi's total, e.g. 81,559 MiB for an \"80 GB\" H100): its source is stated with each plan. "
           "This machine's rows appear once it is measured below.")
with st.expander("Sources and notes per row"):
    st.dataframe(frame[["name", "notes", "source"]], hide_index=True, width="stretch")

growth = ui.growth_charts(ui.growth_frame(frame))
for i in range(0, len(growth), 2):
    for col, chart in zip(st.columns(2), growth[i:i + 2]):
        col.altair_chart(chart, width="stretch")
flagships = frame[frame["class"] == "training"]
first, last = flagships.iloc[0], flagships.iloc[-1]
ratio = lambda col: last[col] / first[col]  # noqa: E731
st.caption(f"Log scales; blue: training flagships (SXM), red: low-power inference cards. From {first['name']} "
           f"({first['year']}) to {last['name']} ({last['year']}): memory ×{ratio('memory_gb'):.1f}, bandwidth ×"
           f"{ratio('bandwidth_gbs'):.1f}, 16-bit tensor FLOPs ×{last['bf16_tflops'] / first['fp16_tflops']:.0f}. "
           "Compute grew faster than bandwidth, so the FLOPs a kernel must do per byte it reads to keep the chip "
           "busy (the ridge point) keeps rising.")

# ---------------------------------------------------------------- this machine
st.subheader("This machine, measured")
st.markdown("The same multiplication three ways: a plain Python triple loop (one multiply-add at a time), "
            "`torch.matmul` (SIMD on every core through BLAS), and a large memory copy for the bandwidth.")
if st.button("Measure this machine (a few seconds)", key="hw_measure"):
    with st.spinner("Multiplying and copying…"):
        if ui.run_measurement():
            st.rerun()  # so the table above gains this machine's row
for m in machine or []:
    c = st.columns(4)
    c[0].metric("Python loop", f"{m.python_loop_gflops * 1e3:,.1f} MFLOP/s")
    c[1].metric(f"torch.matmul ({m.device})", f"{m.matmul_gflops:,.1f} GFLOP/s")
    c[2].metric("Speed-up", f"×{m.speedup_vs_python:,.0f}")
    c[3].metric(f"Copy bandwidth ({m.device})", f"{m.bandwidth_gbs:,.1f} GB/s")
    st.altair_chart(ui.speed_chart(m, core_gpus.find_gpu("H100")), width="stretch")
    st.caption(f"{m.device_name}, {m.threads} CPU threads; {m.matmul_dtype} matmul, best of 5 timed runs. Figures "
               "move with whatever else the machine is doing. The H100 bar is its datasheet peak, for scale.")
if not machine:
    st.info("Press the button to measure. Nothing runs until you do.")

# ---------------------------------------------------------------- the planner
st.subheader("Memory and speed planner")
source = st.radio("Model", ["the loaded model", "a reference config", "paste a config.json", "a Hub id"],
                  horizontal=True, key="hw_source")
config, name, params = None, "", None
if source == "the loaded model":
    config, name = lm.config, lm.name
    params = ui.parameters_of_model(lm)
elif source == "a reference config":
    ref = st.selectbox("Reference config", list(reference_configs()), key="hw_ref",
                       index=list(reference_configs()).index("mistralai/Mistral-7B-v0.1"))
    config, name = reference_config(ref), ref
elif source == "paste a config.json":
    text = st.text_area("config.json", key="hw_json", height=120,
                        placeholder='{"model_type": "llama", "hidden_size": 4096, ...}')
    if text.strip():
        try:
            config, name = config_from_json_text(text), "pasted config"
        except ValueError as exc:
            st.warning(str(exc))
    else:
        st.info("Paste the contents of a model's config.json (a JSON object with a `model_type`).")
else:
    hub_id = st.text_input("Hub id", key="hw_hub", placeholder="meta-llama/Llama-2-7b-hf")
    config = ui.config_from_hub(hub_id)
    name = hub_id

c = st.columns(4)
gpu_name = c[0].selectbox("Accelerator", core_gpus.gpu_names(), key="hw_gpu",
                          index=core_gpus.gpu_names().index("H100 SXM"))
dtype = c[1].selectbox("Weights", list(core_planner.WEIGHT_BYTES), index=1, key="hw_dtype")
# whole_number: "1e5" is 100,000 (Streamlit's integer box reads it as 1) and -5 gets a message on the page.
seq = whole_number("Sequence length", 2048, 1, core_planner.MAX_SEQ, key="hw_seq", where=c[2], step=256)
batch = whole_number("Batch", 1, 1, core_planner.MAX_BATCH, key="hw_batch", where=c[3])
gpu = core_gpus.find_gpu(gpu_name)

plan = None
if config is not None and seq is not None and batch is not None:
    try:
        if params is None:
            params = ui.parameters_of_config(config)
        plan = core_planner.plan(config, gpu, dtype, seq, batch, parameters=params[0], tied=params[1],
                                 name=name)
    except ValueError as exc:
        st.warning(str(exc))
if plan is not None:
    # Two rows of wide boxes: five in a row cut the key results ("3.7M to…", "10.6k t…") at 1280 px.
    m = st.columns(3)
    m[0].metric("Parameters", format_count(plan.parameters),
                help=f"{plan.parameters:,}, counted on the meta device from the config"
                     + ("; tied embeddings once." if plan.tied_embeddings else "."))
    m[1].metric(f"Weights ({dtype})", format_bytes(plan.weights_bytes))
    m[2].metric("KV cache", "unknown" if plan.kv_cache_bytes is None else format_bytes(plan.kv_cache_bytes))
    m = st.columns(3)
    m[0].metric("Prefill (tokens/s)", format_count(plan.prefill_tokens_per_s),
                help="Upper bound: compute bound at the peak")
    m[1].metric("Decode (tokens/s)", format_count(plan.decode_tokens_per_s),
                help=f"Upper bound: {plan.decode_bound} bound")
    if plan.fits:
        st.success(f"Fits on one {gpu.name}: {format_bytes(plan.total_bytes)} of {format_bytes(plan.gpu_memory_bytes)} "
                   f"({plan.total_bytes / plan.gpu_memory_bytes:.0%}), before activations and runtime overhead.")
    else:
        st.error(f"Does not fit on one {gpu.name}: {format_bytes(plan.total_bytes)} needed, "
                 f"{format_bytes(plan.gpu_memory_bytes)} available. At least **{plan.gpus_needed} GPUs** "
                 "(weights and cache split across them), or fewer bytes per weight, a shorter sequence, a smaller batch.")
    chart, caption = ui.memory_chart(plan)
    st.caption(caption)
    st.altair_chart(chart, width="stretch")
    st.markdown("\n".join(f"- {line}" for line in ui.plan_lines(plan)))
    st.caption(f"Peak used: {plan.peak_label}. Ridge point {plan.ridge_flops_per_byte:,.0f} FLOPs per byte: a "
               "kernel doing fewer FLOPs per byte it reads is bandwidth bound. Decode does ~2 FLOPs per weight "
               "read (×batch), far below it: that is why batching speeds up serving.")

    st.markdown("**Training**")
    t = st.columns(4)
    tokens = decimal_number("Training tokens D", 2e12 if plan.parameters > 1e9 else 2e9, 0.0, None, "hw_tokens",
                            where=t[0], fmt="%.3e", help="Type 2e12 for two trillion.")
    mfu = t[1].slider("MFU", 0.05, 1.0, 0.4, 0.05, key="hw_mfu", help="Model FLOPs utilisation: the share of the "
                      "peak a real training run reaches (0.3–0.5 for large runs)")
    # Training is sized by its own memory (16 bytes per parameter + activations), not the serving plan's count.
    train_need = core_planner.training_memory(plan.parameters, config=config, seq=seq, batch=batch)
    n_gpus = whole_number("GPUs", core_planner.training_gpus(train_need, gpu), 1, 100_000, key="hw_ngpus", where=t[2],
                          help=f"Default: the {gpu.name}s whose memory holds full training ({format_bytes(train_need.total_bytes)} "
                               f"with the activations of {seq:,} tokens × {batch})")
    rank = whole_number("LoRA rank", 8, 1, 1024, key="hw_rank", where=t[3])
    full = train_need
    lora = None
    try:
        if rank is not None:
            lora = core_planner.training_memory(plan.parameters, core_planner.lora_parameters(config, rank), dtype,
                                                config=config, seq=seq, batch=batch)
    except ValueError as exc:
        st.info(f"LoRA estimate unavailable: {exc}")
    rows = [{"method": x.method, "trainable": f"{x.trainable:,}", "weights": format_bytes(x.weights_bytes),
             "gradients": format_bytes(x.gradients_bytes), "optimizer (Adam)": format_bytes(x.optimizer_bytes),
             "activations": format_bytes(x.activations_bytes),
             "total": format_bytes(x.total_bytes), f"{gpu.name}s for memory": -(-x.total_bytes // plan.gpu_memory_bytes)}
            for x in (full, lora) if x is not None]
    st.dataframe(rows, hide_index=True, width="stretch")
    if n_gpus is None or tokens is None:
        pass  # the box has said what to type
    elif tokens > 0:
        secs = core_planner.training_seconds(plan.parameters, tokens, gpu, mfu, n_gpus)
        st.markdown(f"6ND = 6 × {plan.parameters:,.3g} × {tokens:,.3g} = **{core_planner.training_flops(plan.parameters, tokens):.3g} FLOPs**; "
                    f"on {n_gpus} × {gpu.name} at {mfu:.0%} MFU: **{format_duration(secs)}**"
                    + (f" ({secs / 86400:,.1f} days)" if secs > 86400 else "") + ". Full training: 16 bytes per parameter (bf16 weights and gradients, "
                    "fp32 master weights, Adam m and v); LoRA: the frozen base plus 16 bytes per adapter weight "
                    "(q, k, v, o); both plus the activations of one micro-batch of the sequence length × batch above "
                    "(Korthikanti et al. 2022, 16-bit, no recomputation).")
    else:
        st.info("Give a number of training tokens above 0 to estimate the training time.")

src_arg = {"a reference config": f"--reference {name}", "paste a config.json": "--config config.json",
           "a Hub id": f"--hub {name or 'ID'}"}.get(source, f"--model {lm.spec.source}")
how_computed(core_planner.plan, core_planner.training_memory, core_measure.matmul_gflops,
             core_measure.copy_bandwidth_gbs, core_gpus.find_gpu,
             command=f"python -m core plan {src_arg} --gpu '{gpu_name}' --dtype {dtype} --seq {seq or 'SEQ'} "
                     f"--batch {batch or 'BATCH'}\npython -m core measure",
             note="Datasheet figures from `data/accelerators.csv` (a source per row); parameters counted on "
                  "the meta device by the parameter accountant; the measurements are timed here, now.")
