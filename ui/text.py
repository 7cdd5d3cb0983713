"""Token text shown literally: tokens are arbitrary strings (`**`, `$x^2$`, backticks, `<span>`), and
Streamlit renders captions, markdown and chips as Markdown (with LaTeX between dollars) or HTML."""

from __future__ import annotations

import re

from core.models.capture import token_display

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:])")
_HTML_SPECIALS = frozenset("&<>\"'\\`*_{}[]()#+-.!|~$:")


def md(text: str) -> str:
    """`text` escaped for st.markdown / st.caption: every Markdown, LaTeX and HTML special is backslashed."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def code(text: str) -> str:
    """`text` as an inline code span that holds any backticks it contains (CommonMark: a longer fence)."""
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def token_md(token: str) -> str:
    """A token with its whitespace made visible (capture.token_display), safe for Markdown."""
    return md(token_display(token))


def html_text(text: str) -> str:
    """`text` safe inside HTML written with unsafe_allow_html, as element text or a quoted attribute.

    Markdown (and LaTeX between dollars) still runs over such HTML in Streamlit, so its specials become
    numeric entities too."""
    # One pass, one entity per character: escaping HTML first and then `#` would turn `'` into
    # `&#x27;` and its `#` into `&#35;`, so the page showed the entity itself (`&#x27;s`).
    return "".join(f"&#{ord(c)};" if c in _HTML_SPECIALS else c for c in text)


def token_html(token: str) -> str:
    """A token with its whitespace made visible, for HTML (see html_text)."""
    return html_text(token_display(token))
