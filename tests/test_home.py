"""Home and the shared sidebar model picker, in AppTest."""

import json

import pytest

from core.data import reference_configs
from pagetest import assert_clean, run_page
from ui.models import ERROR_KEY, HUB_CHOICE, SPEC_KEY


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("model,layers,heads", [("tiny-gpt2", "2", "4 / 4"), ("tiny-qwen2", "2", "4 / 1"),
                                                pytest.param("embedded", "30", "9 / 3", marks=pytest.mark.embedded)])
def test_home_shows_the_model_card(model, layers, heads):
    at = run_page("Home.py", model)
    assert_clean(at)
    m = metrics(at)
    assert m["Layers"] == layers
    assert m["Heads / KV heads"] == heads
    if model == "embedded":
        assert m["Parameters"] == "134.5 M"
        assert m["Vocabulary"] == "49,152"


def test_home_links_every_built_page():
    from ui.navigation import available_pages

    at = run_page("Home.py")
    assert_clean(at)
    expected = {p.title for p in available_pages()}
    shown = {getattr(l, "proto", l).label for l in at.get("page_link")}
    assert expected <= shown


def _pick(at, choice: str, hub_id: str = "", **options):
    boxes = at.sidebar.selectbox
    boxes[0].set_value(choice)
    for box in boxes[1:]:
        if box.label in options:
            box.set_value(options[box.label])
    at.sidebar.text_input[0].set_value(hub_id)
    at.sidebar.button[0].click()
    return at.run()


def test_picker_switches_to_another_model():
    at = run_page("Home.py", "tiny-llama")
    at = _pick(at, "tiny-gpt2")
    assert_clean(at)
    assert at.session_state[SPEC_KEY].source == "tiny-gpt2"
    assert metrics(at)["Heads / KV heads"] == "4 / 4"


@pytest.mark.parametrize("hub_id,fragment", [
    ("", "Enter a model"),
    ("bad id with spaces", "not a valid Hugging Face model id"),
    ("some-org/some-model-that-does-not-exist", "cannot be reached"),
])
def test_picker_bad_ids_keep_the_loaded_model(monkeypatch, hub_id, fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here; the same message online-less anywhere
    at = run_page("Home.py", "tiny-qwen2")
    at = _pick(at, HUB_CHOICE, hub_id)
    assert_clean(at)
    assert fragment in at.session_state[ERROR_KEY]
    assert any(fragment in e.value for e in at.sidebar.error)
    assert at.session_state[SPEC_KEY].source == "tiny-qwen2"
    assert metrics(at)["Heads / KV heads"] == "4 / 1"


def test_picker_refuses_a_model_too_big(tmp_path):
    folder = tmp_path / "mistral-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(reference_configs()["mistralai/Mistral-7B-v0.1"]))
    at = run_page("Home.py", "tiny-llama")
    at = _pick(at, HUB_CHOICE, str(folder), dtype="float32")  # "auto" would pick bf16 (13.5 GiB) above 1B on CPU
    assert_clean(at)
    assert "needs about 27.0 GiB" in at.session_state[ERROR_KEY]
    assert at.session_state[SPEC_KEY].source == "tiny-llama"
