"""Streamlit side of the GPU page: the accelerator table, this machine measured, the planner's inputs and charts."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.jobs import REGISTRY, JobLimitError
from transformers import PretrainedConfig

from core.hardware import gpus as core_gpus
from core.hardware import planner as core_planner
from core.hardware.measure import Measurement, devices, measure
from core.models.loading import LoadedModel, ModelLoadError, hub_config
from core.units import format_bytes

MEASURE_KEY = "hw_measurement"
MEASURE_PEAK_BYTES = 3 * 256 * 2**20  # the copy-bandwidth buffers (256 MiB each) and the matmul operands


@st.cache_data(show_spinner=False)
def gpu_frame() -> pd.DataFrame:
    return pd.DataFrame(core_gpus.table_rows())


def table_with_machine(frame: pd.DataFrame, measured: list[Measurement] | None) -> pd.DataFrame:
    """The datasheet rows plus, once measured, this machine (CPU: fp32 matmul, no tensor cores)."""
    shown = frame.drop(columns=["notes", "source"]).copy()
    for m in measured or []:
        row = {"name": f"this machine (measured, {m.device})", "year": None, "class": "this machine", "memory_gb": None,
               "bandwidth_gbs": round(m.bandwidth_gbs, 1), "bf16_tflops": None, "fp16_tflops": None,
               "fp8_tflops": None, "tdp_w": None, f"{m.matmul_dtype}_tflops_measured": m.matmul_gflops / 1e3}
        shown = pd.concat([shown, pd.DataFrame([row])], ignore_index=True)
    return shown


COLUMN_LABELS = {"name": "accelerator", "year": "year", "class": "class", "memory_gb": "memory (GB)",
                 "bandwidth_gbs": "bandwidth (GB/s)", "bf16_tflops": "BF16 dense TFLOPS",
                 "fp16_tflops": "FP16 dense TFLOPS", "fp8_tflops": "FP8 dense TFLOPS", "tdp_w": "TDP (W)",
                 "float32_tflops_measured": "fp32 matmul TFLOPS (measured)",
                 "bfloat16_tflops_measured": "bf16 matmul TFLOPS (measured, GPU)"}


def styled_table(shown: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text for display: empty cells (no BF16 on T4 and V100, no FP8 before Hopper) as a dash."""
    out = shown.copy()
    for col in out.columns:
        if col in ("accelerator", "class"):
            continue
        digits = 3 if "measured" in col else 0
        fmt = "{:.0f}" if col == "year" else f"{{:,.{digits}f}}"
        out[col] = out[col].map(lambda v, f=fmt: "—" if pd.isna(v) else f.format(v))
    return out


def growth_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Long format: one row per chip and quantity, for the growth charts."""
    f = frame.copy()
    f["tensor_tflops"] = f["bf16_tflops"].fillna(f["fp16_tflops"])
    f["flops_per_byte"] = f["tensor_tflops"] * 1e12 / (f["bandwidth_gbs"] * 1e9)
    labels = {"memory_gb": "memory (GB)", "bandwidth_gbs": "bandwidth (GB/s)",
              "tensor_tflops": "16-bit dense TFLOPS", "flops_per_byte": "FLOPs per byte (ridge point)"}
    long = f.melt(id_vars=["name", "year", "class"], value_vars=list(labels), var_name="quantity", value_name="value")
    long["quantity"] = long["quantity"].map(labels)
    return long.dropna(subset=["value"])


def growth_charts(long: pd.DataFrame) -> list[alt.LayerChart]:
    """One small log chart per quantity; the page lays them out in two columns, which stack on a phone (a 2x2
    facet has a fixed width and was cut at the right at 390 px). Colours are explained in the page's caption."""
    charts = []
    for quantity in dict.fromkeys(long["quantity"]):
        base = alt.Chart(long[long["quantity"] == quantity], title=quantity).encode(
            x=alt.X("year:Q", title=None, scale=alt.Scale(domain=[2016.5, 2024.8]),
                    axis=alt.Axis(format="d", tickCount=8)),
            y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=None),
            color=alt.Color("class:N", legend=None, scale=alt.Scale(domain=["training", "inference"],
                                                                   range=["#4c78a8", "#e45756"])),
            tooltip=["name", "year", "class", "quantity", alt.Tooltip("value:Q", format=",.0f")])
        charts.append((base.mark_line(point=True, opacity=0.6) + base.mark_text(dy=-9, fontSize=10).encode(text="name")
                       ).properties(height=190))
    return charts


def run_measurement() -> list[Measurement] | None:
    """Measure the CPU (and the GPU where there is one) now, a few seconds; keep the results in the session."""
    try:  # one measurement at a time per server, admitted like a job: two at once would time each other
        with REGISTRY.heavy(MEASURE_PEAK_BYTES, "the hardware measurement"):
            found = [measure(device) for device in devices()]
    except (ValueError, JobLimitError) as exc:
        st.warning(str(exc))
        return None
    st.session_state[MEASURE_KEY] = found
    return found


def speed_chart(m: Measurement, gpu: core_gpus.Accelerator | None) -> alt.Chart:
    rows = [{"what": f"Python triple loop ({m.python_loop_n}³)", "GFLOP/s": m.python_loop_gflops},
            {"what": f"torch.matmul {m.matmul_dtype} ({m.matmul_n}³, {m.threads} threads)", "GFLOP/s": m.matmul_gflops}]
    if gpu is not None:
        rows.append({"what": f"{gpu.name} 16-bit tensor peak (datasheet)", "GFLOP/s": gpu.peak_flops() / 1e9})
    return alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("GFLOP/s:Q", scale=alt.Scale(type="log"), title="GFLOP/s (log scale)"),
        y=alt.Y("what:N", sort=None, title=None),
        tooltip=["what", alt.Tooltip("GFLOP/s:Q", format=",.3f")]).properties(height=32 * len(rows))


# ---------------------------------------------------------------- planner inputs


@st.cache_data(show_spinner="Counting parameters on the meta device…", max_entries=32)
def _count_config(config_json: str) -> tuple[int, bool]:
    from core.data import config_from_dict
    import json

    return core_planner.parameter_count(config_from_dict(json.loads(config_json)))


def parameters_of_config(config: PretrainedConfig) -> tuple[int, bool]:
    """(parameters, tied) of a config, cached by its JSON (the meta-device build takes a moment for 70B)."""
    fields = config.to_dict()
    fields["model_type"] = config.model_type
    import json

    return _count_config(json.dumps(fields, sort_keys=True, default=str))


@st.cache_data(show_spinner=False, max_entries=8)
def _loaded_count(key: str, _lm: LoadedModel) -> tuple[int, bool]:
    return core_planner.parameter_count(_lm.model)


def parameters_of_model(lm: LoadedModel) -> tuple[int, bool]:
    return _loaded_count(lm.spec.key, lm)


@st.cache_resource(show_spinner="Fetching config.json from the Hub…", max_entries=16, ttl=3600)
def _hub_config(model_id: str) -> PretrainedConfig:
    return hub_config(model_id)


def config_from_hub(model_id: str) -> PretrainedConfig | None:
    if not model_id.strip():
        st.info("Type a Hugging Face Hub id, e.g. `meta-llama/Llama-2-7b-hf`.")
        return None
    try:
        return _hub_config(model_id.strip())
    except ModelLoadError as exc:
        st.warning(str(exc))
        return None


def memory_chart(plan: core_planner.Plan) -> tuple[alt.Chart | alt.LayerChart, str]:
    """(chart, caption): weights at each storage format + this KV cache, against the accelerator's memory.

    The caption goes above the chart in the page: a Vega title there sat under the "Fits" box."""
    rows = []
    for dtype, b in plan.weights_bytes_by_dtype.items():
        if dtype == "fp16":
            continue
        rows.append({"weights": dtype, "part": "weights", "GiB": b / 2**30})
        rows.append({"weights": dtype, "part": "KV cache", "GiB": (plan.kv_cache_bytes or 0) / 2**30})
    frame = pd.DataFrame(rows)
    bars = alt.Chart(frame).mark_bar().encode(
        y=alt.Y("weights:N", sort=list(plan.weights_bytes_by_dtype), title="weights stored as"),
        x=alt.X("sum(GiB):Q", title="GiB"),
        color=alt.Color("part:N", scale=alt.Scale(range=["#4c78a8", "#f58518"]), title=None,
                        legend=alt.Legend(orient="top")),  # on top: the bars keep the full width on a phone
        tooltip=["weights", "part", alt.Tooltip("GiB:Q", format=",.2f")])
    step = alt.Step(34)  # one readable bar per storage format, whatever the number of formats
    biggest = (max(plan.weights_bytes_by_dtype.values()) + (plan.kv_cache_bytes or 0)) / 2**30
    gpu_gib = plan.gpu_memory_bytes / 2**30
    if biggest < 0.05 * gpu_gib:  # a tiny model: the GPU's line would squash the bars to nothing
        return bars.properties(height=step), (f"Memory per storage format. The {plan.gpu}'s {gpu_gib:,.1f} GiB "
                                              "are far off this scale.")
    limit = alt.Chart(pd.DataFrame([{"GiB": gpu_gib, "label": f"{plan.gpu} memory"}])
                      ).mark_rule(color="red", strokeDash=[4, 3], size=2).encode(x="GiB:Q", tooltip=["label"])
    return (bars + limit).properties(height=step), (f"Memory per storage format; red line: the {plan.gpu}'s "
                                                    f"memory ({gpu_gib:,.1f} GiB).")


def plan_lines(plan: core_planner.Plan) -> list[str]:
    """The arithmetic behind the plan's headline numbers, one line each, with the rule each one applied."""
    kv = ("KV cache: unknown — " + plan.kv_rule if plan.kv_cache_bytes is None else
          f"KV cache: {plan.kv_bytes_per_token:,.0f} bytes per token × {plan.seq:,} tokens × {plan.batch:,} "
          f"sequences ({plan.kv_rule}) = {plan.kv_cache_bytes:,} bytes ({format_bytes(plan.kv_cache_bytes)})")
    flops = plan.weight_flops_per_token + plan.attention_flops_per_token
    return [
        f"weights: {plan.weights_rule} = {plan.weights_bytes:,} bytes ({format_bytes(plan.weights_bytes)})",
        kv,
        f"prefill (compute bound): {plan.peak_flops / 1e12:,.0f} TFLOP/s ÷ ({plan.weight_flops_per_token:,.3g} "
        f"FLOPs of weights (2N) + {plan.attention_flops_per_token:,.3g} FLOPs of attention (4 × layers × "
        f"{plan.seq:,} keys × d_attn) per token = {flops:,.3g}) = {plan.prefill_tokens_per_s:,.0f} tokens/s",
        f"decode ({plan.decode_bound} bound): {plan.batch} × {plan.bandwidth_bytes_per_s / 1e9:,.0f} GB/s ÷ "
        f"{plan.decode_bytes_per_step / 1e9:,.2f} GB read per step = {plan.decode_tokens_per_s:,.1f} tokens/s",
        f"{plan.gpu} memory: {format_bytes(plan.gpu_memory_bytes)}, {plan.gpu_memory_source}",
    ]
