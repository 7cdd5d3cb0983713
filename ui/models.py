"""The sidebar model picker and the cached wrappers around core.models.loading / core.models.capture.

One model instance per spec serves every session (st.cache_resource); sessions only keep the spec.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.inspect import survey
from core.inspect.stepwise import PARITY_TOLERANCE, RELATIVE_TOLERANCE
from core.models.capture import Capture, InputError, run_forward
from core.runs import saved_models
from ui.navigation import ensure_app_navigation
from ui.state import set_params
from ui.text import code, md
from core.models import loading
from core.models.loading import (
    AUTO_DTYPE,
    DEVICES,
    DTYPES,
    EMBEDDED,
    QUANTIZATIONS,
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    load_model,
    parse_spec,
)

SPEC_KEY = "lab_model_spec"
ERROR_KEY = "lab_model_error"
HUB_CHOICE = "Hugging Face Hub id or local folder…"
_CHOICES = {
    EMBEDDED: "SmolLM2-135M-Instruct (embedded, offline)",
    "tiny-gpt2": "tiny-gpt2 (random, GPT-2 style)",
    "tiny-llama": "tiny-llama (random, Llama style)",
    "tiny-qwen2": "tiny-qwen2 (random, Qwen2 style)",
    "tiny-bert": "tiny-bert (random, BERT style encoder)",
    "tiny-t5": "tiny-t5 (random, T5 style encoder-decoder)",
    HUB_CHOICE: HUB_CHOICE,
}
ENCODER_PAGE = "pages/24_Encoder_attention.py"  # the one page for encoder and encoder-decoder models
# The spec in the URL: ?model=...&dtype=...&device=...&quant=... (defaults are left out).
URL_PARAMS = {"model": "source", "dtype": "dtype", "device": "device", "quant": "quantization"}
_loaded_keys: set[str] = set()  # process-wide: which specs are already in the resource cache
_loaded_lock = threading.Lock()


def default_spec() -> ModelSpec:
    """The embedded model, unless LLM_LAB_DEFAULT_MODEL names another (tests use a tiny one)."""
    return ModelSpec(os.environ.get("LLM_LAB_DEFAULT_MODEL", EMBEDDED))


def current_spec() -> ModelSpec:
    return st.session_state.get(SPEC_KEY) or default_spec()


def choices() -> dict[str, str]:
    """Picker entries: source -> label. Saved training runs (core.runs) come after the tiny models."""
    entries = {k: v for k, v in _CHOICES.items() if k != HUB_CHOICE}
    try:
        runs = saved_models()
    except OSError:  # an unreadable runs folder must not break every page
        runs = []
    entries.update({str(run.path): run.label for run in runs if loading.local_folder_allowed(str(run.path))})
    entries[HUB_CHOICE] = HUB_CHOICE
    return entries


def spec_from_link() -> ModelSpec | None:
    """The spec a link asks for (None when it names none); a bad one raises ModelLoadError."""
    asked = {field: st.query_params.get(param) for param, field in URL_PARAMS.items()}
    if not any(asked.values()):
        return None
    base = default_spec()
    # No dtype in the link: `auto` (bfloat16 for a model above ~1B parameters on the CPU).
    return parse_spec(asked["source"] or base.source, asked["dtype"] or AUTO_DTYPE,
                      asked["device"] or base.device, asked["quantization"] or base.quantization)


def _write_link(spec: ModelSpec) -> None:
    base = default_spec()
    set_params(**{param: (getattr(spec, field) if getattr(spec, field) != getattr(base, field) else None)
                  for param, field in URL_PARAMS.items()})


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_model(key: str, _spec: ModelSpec) -> LoadedModel:
    return load_model(_spec)


def get_model(spec: ModelSpec) -> LoadedModel:
    """The shared instance for `spec`; a visible status while it loads for the first time."""
    with _loaded_lock:
        known = spec.key in _loaded_keys
    if known:
        lm = _cached_model(spec.key, spec)
        survey.survey(lm.model, lm.spec.key)  # a no-op once started; restarts after an eviction
        return lm
    first = ("The first load dequantizes the GGUF file shipped in the wheel (15–25 s on 2 free CPU cores, "
             "longer when they are busy); it is then cached on disk as safetensors and later loads take about a "
             "second (a few seconds on busy cores).") if spec.source == EMBEDDED else ""
    with st.status(f"Loading {md(spec.label)}…", expanded=bool(first)) as status:
        if first:
            st.write(first)
        try:
            lm = _cached_model(spec.key, spec)
        except ModelLoadError:
            status.update(label=f"Could not load {md(spec.label)}: the reason is in the sidebar", state="error",
                          expanded=False)
            raise
        status.update(label=f"Loaded {md(spec.label)} in {lm.load_seconds:.1f} s", state="complete", expanded=False)
    with _loaded_lock:
        _loaded_keys.add(spec.key)
    # The pass over every weight (Parameters, Weights) starts now, in the background, once per model.
    survey.survey(lm.model, lm.spec.key)
    return lm


def literal(text: str) -> str:
    """`text` for st.error / st.markdown exactly as typed: Markdown escaped (ui.text.md), and a word joiner
    (U+2060, invisible) inside `://`, `www.` and `@`, because the renderer links a bare URL, `www.` name or
    e-mail address found in the text even when it is escaped. A `?model=` link must not put a clickable
    link in the sidebar."""
    escaped = md(text).replace("\\://", "\\:\u2060//").replace("@", "@\u2060")
    return re.sub(r"(?i)(www)(\\\.)", "\\1\u2060\\2", escaped)


@st.cache_data(show_spinner=False, ttl=600, max_entries=64)
def _auto_dtype(source: str, device: str) -> str:
    return loading.default_dtype(source, device)


def _picker_form(spec: ModelSpec) -> ModelSpec | None:
    """Sidebar widgets; returns a new spec when the user asks for a load."""
    entries = choices()
    in_list = spec.source in entries
    with st.sidebar.form("model_picker"):
        st.markdown("**Model**")
        keys = list(entries)
        choice = st.selectbox("Model", keys, index=keys.index(spec.source if in_list else HUB_CHOICE),
                              format_func=entries.get, label_visibility="collapsed")
        hub_id = st.text_input("Hub id or folder (when chosen above)", value="" if in_list else spec.source,
                               placeholder="HuggingFaceTB/SmolLM2-360M-Instruct")
        dtypes = [AUTO_DTYPE, *DTYPES]
        shown_dtype = AUTO_DTYPE if spec.dtype == _auto_dtype(spec.source, spec.device) else spec.dtype
        dtype = st.selectbox("dtype", dtypes, index=dtypes.index(shown_dtype),
                             format_func=lambda d: "auto (bfloat16 above 1B parameters on CPU)" if d == AUTO_DTYPE else d,
                             help="bfloat16 halves the memory of the weights; the forward pass page's parity check "
                                  "then judges the relative error (tolerance "
                                  f"{RELATIVE_TOLERANCE['bfloat16']:g}) instead of max |Δ| ≤ {PARITY_TOLERANCE:g}")
        c1, c2 = st.columns(2)
        device = c1.selectbox("device", list(DEVICES), index=list(DEVICES).index(spec.device),
                              help="auto: the GPU when there is one (spread over GPU and CPU by "
                                   "accelerate when too big for one), else the CPU")
        quant = c2.selectbox("quantization", list(QUANTIZATIONS),
                             index=list(QUANTIZATIONS).index(spec.quantization),
                             help="8-bit / 4-bit NF4 through bitsandbytes (CPU or CUDA)")
        if not st.form_submit_button("Load model", width="stretch"):
            return None
    source = hub_id if choice == HUB_CHOICE else choice
    return parse_spec(source, dtype, device, quant)


def model_picker(causal: bool = True) -> LoadedModel:
    """Render the shared sidebar picker and return the loaded model (the default when none is picked).

    A failed load shows its reason and keeps the model that was loaded before. `causal` (every page but
    Encoder attention): with an encoder or encoder-decoder model loaded, the page says it needs a causal LM,
    points to the Encoder attention page and stops here, so no page meets a model it cannot run.
    """
    ensure_app_navigation()
    if SPEC_KEY not in st.session_state:  # a new session: a link may name the model
        _seed_from_link()
    spec = current_spec()
    try:
        new = _picker_form(spec)
        if new is not None:
            st.session_state.pop(ERROR_KEY, None)  # a new choice (even the current model) clears old news
            if new != spec:
                get_model(new)  # raises before we switch, so a failure keeps the old model
                st.session_state[SPEC_KEY] = spec = new
    except ModelLoadError as exc:
        st.session_state[ERROR_KEY] = str(exc)
    if st.session_state.get(ERROR_KEY):
        st.sidebar.error(literal(st.session_state[ERROR_KEY]))
    try:
        lm = get_model(spec)
    except ModelLoadError as exc:  # e.g. the Hub went away after a restart: fall back to the default
        st.session_state[ERROR_KEY] = str(exc)
        st.session_state[SPEC_KEY] = spec = default_spec()
        lm = get_model(spec)
    _write_link(lm.spec)
    st.sidebar.caption(f"Loaded: {code(lm.name)} · {lm.summary()}")  # a code span: a folder name shows literally
    if causal and lm.kind != "causal":
        needs_causal(lm)
    return lm


def needs_causal(lm: LoadedModel) -> None:
    """Say that this page needs a causal LM, link the page that shows this model, and stop the script."""
    what = {"encoder": "an encoder (BERT style: it reads the text both ways and predicts masked tokens)",
            "encoder-decoder": "an encoder-decoder (T5 style: an encoder reads the text, a decoder writes "
                               "another one)"}[lm.kind]
    st.info(f"{code(lm.name)} is {what}. This page needs a **causal language model** (one that predicts the "
            "next token, such as the embedded SmolLM2 or tiny-llama): choose one in the sidebar. The "
            "**Encoder attention** page shows this model's self-attention and cross-attention.", icon="ℹ️")
    page_link(ENCODER_PAGE, "Encoder attention: this model's heads", "🔀")
    st.stop()


def page_link(path: str, label: str, icon: str) -> None:
    """A link to another page, with this session's model in its URL. st.page_link (same tab, same session)
    where Home.py's st.navigation registered the page, as in the app; a plain relative link (a new tab)
    where it did not: a page run alone, as in AppTest."""
    params = {p: st.query_params.get(p) for p in URL_PARAMS if st.query_params.get(p)}
    try:
        st.page_link(path, label=label, icon=icon, query_params=params)
    except StreamlitAPIException:
        url_path = Path(path).stem.split("_", 1)[1]  # as ui.navigation.PageInfo.url_path
        st.markdown(f"[{icon} {md(label)}]({url_path}{'?' + urlencode(params) if params else ''})")


def choose_model(source: str) -> None:
    """A button's on_click: `source` becomes this session's model for the run the click starts, where
    model_picker loads it with its status and its fallback. (Loading here and calling st.rerun would start
    the load's background survey while the rerun compiles the page: CPython 3.11's parser is not safe for
    two threads at once.)"""
    st.session_state[SPEC_KEY] = parse_spec(source)
    st.session_state.pop(ERROR_KEY, None)


def _seed_from_link() -> None:
    """Open the model a link names; a bad or unloadable one falls back to the default with a message."""
    try:
        spec = spec_from_link()
        if spec is None:
            return
        get_model(spec)
    except ModelLoadError as exc:
        st.session_state[ERROR_KEY] = f"The link's model could not be opened, so the default is shown: {exc}"
        st.session_state[SPEC_KEY] = default_spec()
        return
    st.session_state[SPEC_KEY] = spec


# A 512-token capture of the embedded model holds ~0.4 GB of attentions and logits: keep a few, shared.
@st.cache_resource(show_spinner="Running the model…", max_entries=12, ttl=3600)
def _cached_forward(key: str, text: str, max_tokens: int, hook_modules: tuple[str, ...],
                    _lm: LoadedModel) -> Capture:
    return run_forward(_lm, text, max_tokens=max_tokens, hook_modules=hook_modules)


def forward(lm: LoadedModel, text: str, max_tokens: int = 512, hook_modules: tuple[str, ...] = ()) -> Capture | None:
    """A cached capture (shared, read-only), or None after showing why the text cannot be used."""
    try:
        cap = _cached_forward(lm.spec.key, text, max_tokens, tuple(hook_modules), lm)
    except InputError as exc:
        st.info(str(exc))
        return None
    if cap.truncation_notice:
        st.warning(cap.truncation_notice)
    if cap.byte_fragment_notice:
        st.caption(f"ℹ️ {cap.byte_fragment_notice}")
    return cap
