"""Page state that survives navigation and travels as a link.

A page's main controls (the text, the layer, the statistic, the view) should come back when the user
returns to the page, when the browser reloads, and when a teacher sends the link to a class. Streamlit
1.67 does the two halves natively, and this module is the one place that switches them on:

- ``persist_state="session"``: the widget keeps its value while its page is not rendered (without it,
  Streamlit drops the widget's state on a page switch and the layer slider goes back to 0);
- ``bind="query-params"``: the value lives in the URL under the widget's key (``?w_layer=12``), so a reload,
  a bookmark or a shared link reopens the same view. Values equal to the default stay out of the URL.

What this module adds: a link value the widget cannot take (a layer the model does not have, an unknown
option, garbage) falls back to the default *with a message*, instead of being dropped silently; and the
"link to this view" box. The model spec travels too: ``ui.models.model_picker`` writes
``?model=...&dtype=...&quant=...`` on every page. State stays per session: the URL only seeds a new one.

How a page uses it::

    from ui import state

    lm = model_picker()
    stat = state.keep(st.selectbox, "Statistic", ["std", "mean"], key="p_stat")
    layer = state.keep(st.slider, "Layer", 0, n_layers - 1, 0, key="w_layer")
    text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, key="f_text", max_chars=2000)
    ...
    state.share_link()          # once per page, e.g. right after the title or before how_computed

Keys become URL parameter names: keep them short, unique across the app and stable (a renamed key breaks
old links, which then simply open the default view).
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

# Widgets whose second positional argument is the list of options (the URL holds the formatted option).
_OPTION_WIDGETS = {"selectbox", "radio", "select_slider", "multiselect", "pills", "segmented_control"}
_NUMBER_WIDGETS = {"slider", "number_input"}
MAX_ECHO = 60  # characters of a bad link value echoed back to the user


def short(value: object, limit: int = MAX_ECHO) -> str:
    """A user-supplied value shortened for display: a 3,000-character id must not fill the sidebar."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit - 21]}…{text[-20:]} ({len(text):,} characters)"


def _link_value(key: str) -> str | list[str] | None:
    """The raw value the URL holds for `key` on this run, or None."""
    try:
        values = st.query_params.get_all(key)
    except Exception:  # noqa: BLE001 - no script run context (plain Python import)
        return None
    if not values:
        return None
    return values if len(values) > 1 else values[0]


def _options_and_format(widget_name: str, args: tuple, kwargs: dict) -> tuple[list[str], Sequence] | None:
    options = kwargs.get("options", args[0] if args else None)
    if options is None:
        return None
    options = list(options)
    fmt: Callable[[Any], Any] = kwargs.get("format_func") or str
    return [str(fmt(o)) for o in options], options


def _number_range(widget_name: str, args: tuple, kwargs: dict) -> tuple[float, float] | None:
    lo = kwargs.get("min_value", args[0] if len(args) > 0 else None)
    hi = kwargs.get("max_value", args[1] if len(args) > 1 else None)
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


def link_problem(widget_name: str, label: str, raw: str | list[str], args: tuple, kwargs: dict) -> str | None:
    """Why a value from the URL cannot be used by this widget (None when it can)."""
    values = raw if isinstance(raw, list) else [raw]
    if widget_name in _OPTION_WIDGETS:
        found = _options_and_format(widget_name, args, kwargs)
        if found is None:
            return None
        formatted, _ = found
        bad = [v for v in values if v not in formatted]
        if bad:
            sample = ", ".join(formatted[:3]) + (f" … {formatted[-1]}" if len(formatted) > 3 else "")
            return (f"The link asks for **{label}** = `{short(bad[0])}`, which is not available here "
                    f"(choices: {sample}); showing the default instead.")
        return None
    if widget_name in _NUMBER_WIDGETS:
        bounds = _number_range(widget_name, args, kwargs)
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            return f"The link's **{label}** = `{short(values[0])}` is not a number; showing the default instead."
        if any(math.isnan(x) for x in numbers):
            return f"The link's **{label}** is not a number; showing the default instead."
        if bounds and any(not bounds[0] <= x <= bounds[1] for x in numbers):
            lo, hi = (f"{b:g}" for b in bounds)
            return (f"The link asks for **{label}** = `{short(values[0])}`, outside {lo}–{hi} for this model; "
                    "showing the default instead.")
        return None
    if widget_name in ("text_input", "text_area"):
        limit = kwargs.get("max_chars")
        if limit and len(values[0]) > limit:
            return (f"The link's **{label}** has {len(values[0]):,} characters, more than the {limit:,} this "
                    "box takes; showing the default instead.")
    if widget_name in ("toggle", "checkbox") and values[0].lower() not in ("true", "false"):
        return f"The link's **{label}** = `{short(values[0])}` is not true/false; showing the default instead."
    return None


def keep(widget: Callable, label: str, *args: Any, key: str, url: bool = True, **kwargs: Any) -> Any:
    """Render `widget(label, *args, key=key, **kwargs)` with its value kept across pages and in the URL.

    `url=False` keeps the value across pages only (for values that make no sense in a link, or are too
    long for one). A value from the link that the widget cannot take gets a visible message, once.
    """
    name = getattr(widget, "__name__", "")
    if url and key not in st.session_state:  # first render in this session: the link may seed it
        raw = _link_value(key)
        if raw is not None:
            problem = link_problem(name, label, raw, args, kwargs)
            if problem:
                st.warning(problem, icon="🔗")
                if name in _NUMBER_WIDGETS or name in ("text_input", "text_area"):
                    # Streamlit clamps an out-of-range number and truncates nothing: drop it ourselves.
                    _drop_param(key)
    extra = {"persist_state": "session"}
    if url:
        extra["bind"] = "query-params"
    return widget(label, *args, key=key, **extra, **kwargs)


def _drop_param(key: str) -> None:
    try:
        del st.query_params[key]
    except (KeyError, StreamlitAPIException):
        pass


def set_params(**values: str | None) -> None:
    """Write plain (unbound) URL parameters; None removes one. Only writes what changed."""
    for name, value in values.items():
        current = st.query_params.get(name)
        if value is None:
            if current is not None:
                _drop_param(name)
        elif current != value:
            st.query_params[name] = value


def view_url() -> str | None:
    """The full link to what this session shows now (page path, model and controls), when known."""
    base = st.context.url
    if not base:
        return None
    query = urlencode(st.query_params.to_dict())
    return f"{base}?{query}" if query else base


def share_link() -> None:
    """A small "Link to this view" popover: the full URL in a code box (with its copy button).

    A fragment, and the popover reruns it when opened: the link is read from the browser's URL at that
    moment, so it includes what the page's fragments changed since the last full run."""
    _share_link()


# The browser's address bar is the truth (bound widgets update it without a server round trip): the box
# reads location.href when it appears and on focus. Constant code; the only data is the escaped URL.
_LINK_BOX = """<div class="lab-link" style="display:flex;gap:.4rem;align-items:center">
<input readonly value="{url}" aria-label="Link to this view"
 style="flex:1;min-width:28rem;font-family:monospace;font-size:.8rem;padding:.35rem;border:1px solid #ccc;border-radius:.3rem">
<button type="button" style="padding:.3rem .7rem;border:1px solid #ccc;border-radius:.3rem;background:#fff">Copy</button>
</div>
<script>
for (const box of document.querySelectorAll(".lab-link")) {{
  const input = box.querySelector("input"), button = box.querySelector("button");
  input.value = window.location.href;
  input.addEventListener("focus", () => {{ input.value = window.location.href; input.select(); }});
  button.addEventListener("click", async () => {{
    input.value = window.location.href; input.select();
    try {{ await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }}
    catch (e) {{ document.execCommand("copy"); button.textContent = "Copied"; }}
  }});
}}
</script>"""


@st.fragment
def _share_link() -> None:
    box = st.popover("🔗 Link to this view", key="lab_share_link", on_change="rerun")
    if not box.open:
        return
    with box:
        url = view_url() or ""
        st.html(_LINK_BOX.format(url=html.escape(url, quote=True)), unsafe_allow_javascript=True)
        st.caption("Anyone opening it gets the same model, text and controls, in their own session.")
