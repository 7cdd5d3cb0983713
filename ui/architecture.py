"""Cached wrappers and widgets for the Architecture page: where an architecture comes from (the loaded
model, a shipped reference config, a pasted/uploaded config.json, a Hub config) and how a block is shown."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
from transformers import PretrainedConfig

from core.inspect.architecture import BYTES_PER_ELEMENT, config_from_json_text
from core.data import reference_config, reference_configs
from core.inspect.diagram import Block, Diagram, build_diagram, diagram_from_config
from core.models.loading import LoadedModel, ModelLoadError, hub_config, is_hub_id, shown
from core.units import format_count

PASTE_KEY = "arch_pasted_config"  # the last pasted/uploaded text that gave a valid config
HUB_KEY = "arch_hub_id"  # the last Hub id whose config was fetched


@dataclass(frozen=True)
class View:
    """One architecture ready to show: where it came from, its config and its diagram."""

    name: str
    config: PretrainedConfig
    diagram: Diagram
    cli: str  # the `python -m core architecture ...` arguments that reproduce it


@st.cache_resource(show_spinner="Reading the module tree…", max_entries=8)
def _model_diagram(key: str, _lm: LoadedModel) -> Diagram:
    return build_diagram(_lm.model)


@st.cache_resource(show_spinner="Building the model on the meta device (no weights)…", max_entries=16)
def _reference(model_id: str) -> tuple[PretrainedConfig, Diagram]:
    config = reference_config(model_id)
    return config, diagram_from_config(config)


@st.cache_resource(show_spinner="Building the model on the meta device (no weights)…", max_entries=8)
def _from_text(text: str) -> tuple[PretrainedConfig, Diagram]:
    config = config_from_json_text(text)
    return config, _diagram_or_error(config)


@st.cache_resource(show_spinner="Fetching the config from the Hugging Face Hub…", max_entries=8)
def _from_hub(model_id: str) -> tuple[PretrainedConfig, Diagram]:
    config = hub_config(model_id)
    return config, _diagram_or_error(config)


def _diagram_or_error(config: PretrainedConfig) -> Diagram:
    """A user's config can name anything transformers knows; what cannot be built is a readable ValueError."""
    try:
        return diagram_from_config(config)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a vision model, or dimensions the model class rejects
        raise ValueError(f"transformers could not build a `{config.model_type}` model from this config "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}).") from exc


def model_view(lm: LoadedModel) -> View:
    return View(f"loaded: {lm.name}", lm.config, _model_diagram(lm.spec.key, lm), lm.spec.cli())


def reference_view(model_id: str) -> View:
    config, diagram = _reference(model_id)
    return View(model_id, config, diagram, f"--reference {model_id}")


def text_view(text: str, origin: str = "pasted config") -> View:
    """`origin`: "pasted config" or "uploaded NAME", as pasted_text recorded it, so the heading says which."""
    config, diagram = _from_text(text)
    return View(f"{origin} ({config.model_type})", config, diagram, "--config config.json")


def hub_view(model_id: str) -> View:
    """A Hub id only: a local folder or path belongs in the paste/upload box (its config.json)."""
    if not is_hub_id(model_id):
        raise ValueError(f"`{shown(model_id)}` is not a Hugging Face Hub id (`organisation/name`, letters, digits, "
                         "`-`, `_`, `.`). For a config.json on this computer, use **Paste or upload a config.json**.")
    config, diagram = _from_hub(model_id)
    return View(f"{model_id} (Hub config)", config, diagram, f"--hub {model_id}")


def show_error(exc: Exception) -> None:
    st.error(str(exc))


# ---------------------------------------------------------------- choosing an architecture


def reference_ids() -> list[str]:
    return list(reference_configs())


LATEST_KEY = "arch_config_latest"  # "paste" or "upload": whichever the user touched last is drawn
ORIGIN_KEY = "arch_config_origin"  # "pasted config" or "uploaded NAME": where the text pasted_text returned came from


def _touched(which: str) -> None:
    st.session_state[LATEST_KEY] = which


def pasted_text() -> str | None:
    """Paste box and uploader; returns the text to parse, or None when there is none.

    Both can hold a config at once: the one changed last is drawn, and a caption says which."""
    from ui.state import keep

    c1, c2 = st.columns([3, 2])
    with c1:
        text = keep(st.text_area, "config.json", height=180, key="arch_paste", url=False,
                    on_change=_touched, args=("paste",),
                    placeholder='{"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, ...}')
    upload = c2.file_uploader("…or upload a config.json", type=["json"], key="arch_upload",
                              on_change=_touched, args=("upload",))
    use_upload = upload is not None and (st.session_state.get(LATEST_KEY) == "upload" or not (text or "").strip())
    if not use_upload:
        st.session_state[ORIGIN_KEY] = "pasted config"
        if upload is not None:
            st.caption(f"Drawing the **pasted text** (changed last); the uploaded `{shown(upload.name)}` is ignored "
                       "until you upload again or clear the text.")
        return text
    if (text or "").strip():
        st.caption(f"Drawing the **uploaded file** `{shown(upload.name)}` (changed last); the pasted text is "
                   "ignored until you edit it again.")
    st.session_state[ORIGIN_KEY] = f"uploaded {upload.name}"
    try:
        return upload.getvalue().decode("utf-8")
    except UnicodeDecodeError:
        st.error(f"`{shown(upload.name)}` is not UTF-8 text, so it cannot be a config.json.")
        return None


def default_kv_dtype(view: View) -> str:
    """The dtype the model runs in: the loaded model's, or the one its config declares, else bfloat16."""
    dtype = getattr(view.config, "dtype", None) or getattr(view.config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "bfloat16"
    return name if name in BYTES_PER_ELEMENT else "bfloat16"


def default_block(diagram: Diagram) -> str:
    """The block selected first: the query projection (or GPT-2's fused QKV), else the first box."""
    return next((b.id for b in diagram.blocks if b.kind in ("q", "qkv")), diagram.blocks[0].id)


# ---------------------------------------------------------------- one block in detail


def block_details(block: Block, diagram: Diagram) -> None:
    """Shapes, parameter count, formula and a one-line explanation of the selected box."""
    st.markdown(f"**{block.title}**")
    if block.explanation:
        st.markdown(block.explanation[0].upper() + block.explanation[1:] + ".")
    if block.formula:
        st.latex(block.formula)
    c1, c2 = st.columns(2)
    # Short figures (a metric cuts what does not fit its column); the exact count is in the help.
    if block.stack is not None:
        c1.metric("Parameters, one layer", format_count(block.params_per_layer), help=f"{block.params_per_layer:,}")
        c2.metric(f"All {block.repeats} layers", format_count(block.params), help=f"{block.params:,}")
    else:
        c1.metric("Parameters", format_count(block.params), help=f"{block.params:,}")
        c2.metric("Share of the model", f"{block.params / max(diagram.total_params, 1):.1%}")
    if block.tied_to:
        owner = diagram.block(block.tied_to)
        st.caption(f"Reuses the weights of **{owner.title}** (the same Parameter object): counted once, there.")
    if block.io:
        st.markdown(f"Activations: `{block.io}`")
    if block.shapes:
        st.dataframe(pd.DataFrame([{"parameter": name, "shape": " × ".join(map(str, shape)),
                                    "elements": f"{_prod(shape):,}"} for name, shape in block.shapes]),
                     hide_index=True, width="stretch")
    if block.modules:
        st.caption("Modules: " + ", ".join(f"`{m}`" for m in block.modules))


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


__all__ = ["LATEST_KEY", "View", "model_view", "reference_view", "text_view", "hub_view", "show_error", "reference_ids",
           "pasted_text", "default_block", "default_kv_dtype", "block_details", "PASTE_KEY", "ORIGIN_KEY", "HUB_KEY", "ModelLoadError"]
