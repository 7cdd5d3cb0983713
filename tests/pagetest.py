"""Run page scripts in Streamlit's AppTest: `from pagetest import run_page, assert_clean`."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_page(path: str, model: str = "tiny-llama", timeout: float = 180, **session_state):
    """Run one page script in AppTest with `model` picked; returns the AppTest after the first run."""
    from streamlit.testing.v1 import AppTest

    from core.models.loading import ModelSpec
    from ui.models import SPEC_KEY

    at = AppTest.from_file(str(ROOT / path), default_timeout=timeout)
    at.session_state[SPEC_KEY] = ModelSpec(model)
    for k, v in session_state.items():
        at.session_state[k] = v
    return at.run()


def assert_clean(at) -> None:
    """No exception element on the page."""
    assert not at.exception, [e.value for e in at.exception]
