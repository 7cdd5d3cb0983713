"""Issue 9 on Home, the picker, Architecture, Parameters and Weights, in AppTest: state seeded from a link
(good and bad values), picker defects, quantized models, and the Architecture page's input defects."""

from __future__ import annotations

import json
import logging

import pytest

from core.data import reference_configs
from pagetest import assert_clean, run_page
from ui.models import ERROR_KEY, HUB_CHOICE, SPEC_KEY


def _link(path: str, **query):
    """A page opened from a link: no model in the session yet, the URL holds the state."""
    from streamlit.testing.v1 import AppTest

    from tests_paths import ROOT

    at = AppTest.from_file(str(ROOT / path), default_timeout=180)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def _caption(at) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


def _pick(at, choice: str, hub_id: str = "", quantization: str = "none"):
    at.sidebar.selectbox[0].set_value(choice)
    for box in at.sidebar.selectbox[1:]:
        if box.label == "quantization":
            box.set_value(quantization)
    at.sidebar.text_input[0].set_value(hub_id)
    at.sidebar.button[0].click()
    return at.run()


# ---------------------------------------------------------------- the model and the controls from a link


def test_link_opens_the_model_and_the_controls():
    at = _link("pages/6_Weights.py", model="tiny-gpt2", w_layer="1", w_stat="standard deviation")
    assert_clean(at)
    assert at.session_state[SPEC_KEY].source == "tiny-gpt2"
    assert "tiny-gpt2" in _caption(at)
    assert at.select_slider(key="w_layer").value == 1
    assert at.selectbox(key="w_stat").value == "std"
    assert not at.warning


def test_bad_link_values_fall_back_with_a_message():
    at = _link("pages/6_Weights.py", model="no-such-org/no-such-model", w_layer="99", w_stat="garbage")
    assert_clean(at)
    assert at.session_state[SPEC_KEY].source == "tiny-llama"  # the default model instead
    assert "link's model could not be opened" in at.session_state[ERROR_KEY]
    warnings = " ".join(w.value for w in at.warning)
    assert "Layer" in warnings and "99" in warnings and "Statistic" in warnings
    assert at.select_slider(key="w_layer").value == 0
    assert at.selectbox(key="w_stat").value == "frobenius"


def test_garbage_link_options_are_refused():
    at = _link("pages/2_Parameters.py", model="tiny-llama", dtype="float99", p_stat="x" * 3000)
    assert_clean(at)
    assert "float99" in at.session_state[ERROR_KEY]
    warning = " ".join(w.value for w in at.warning)
    assert "Statistic" in warning and "3,000 characters" in warning  # the echo is shortened
    assert len(warning) < 400


def test_the_loaded_spec_is_written_to_the_url():
    at = run_page("Home.py", "tiny-llama")
    at = _pick(at, "tiny-qwen2")
    assert_clean(at)
    assert at.query_params["model"] in ("tiny-qwen2", ["tiny-qwen2"])


# ---------------------------------------------------------------- picker defects


def test_sidebar_of_a_4bit_model_agrees_with_home(tmp_path, monkeypatch, load):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path))
    lm = load("tiny-llama")
    folder = tmp_path / "tiny-run" / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    at = run_page("Home.py", "tiny-llama")
    assert "run: tiny-run" in at.sidebar.selectbox[0].options  # saved runs are offered by name
    at = _pick(at, str(folder), quantization="4bit")
    assert_clean(at)
    assert at.session_state[SPEC_KEY].quantization == "4bit"
    params = {m.label: m.value for m in at.metric}["Parameters"]
    n = sum(p.numel() for p in lm.model.parameters())
    assert params == f"{n / 1e6:,.1f} M"
    caption = _caption(at)
    assert f"{n / 1e6:,.1f}M params" in caption  # not the packed count (about half)
    assert "4-bit NF4" in caption and "· float32 ·" not in caption
    assert "run: tiny-run [4bit]" in caption  # a short label, not the whole path


@pytest.mark.parametrize("folder", ["/etc", "../../"])
def test_picker_says_a_folder_is_not_a_model(folder):
    at = run_page("Home.py", "tiny-llama")
    at = _pick(at, HUB_CHOICE, folder)
    assert_clean(at)
    assert "not a model folder" in at.session_state[ERROR_KEY]
    assert "remote code" not in at.session_state[ERROR_KEY]


def test_picker_shortens_a_long_id_and_clears_the_error():
    at = run_page("Home.py", "tiny-llama")
    at = _pick(at, HUB_CHOICE, "x" * 3000)
    assert_clean(at)
    error = at.session_state[ERROR_KEY]
    assert "3,000 characters" in error and len(error) < 400
    assert all(len(e.value) < 400 for e in at.sidebar.error)
    at = _pick(at, "tiny-llama")  # the model already loaded: the old error goes
    assert_clean(at)
    assert not at.session_state[ERROR_KEY] if ERROR_KEY in at.session_state else True
    assert not at.sidebar.error


def test_8bit_matmul_notice_is_logged_once(caplog):
    import core.models.loading  # noqa: F401 - installs the filter

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(50):
            logger.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "float32")
        logger.warning("something else")
    notices = [r for r in caplog.records if r.getMessage().startswith("MatMul8bitLt")]
    assert len(notices) <= 1  # once per process (another test may have used it up)
    assert any(r.getMessage() == "something else" for r in caplog.records)


# ---------------------------------------------------------------- quantized weights


def test_weights_page_on_an_8bit_model_shows_dequantized_statistics(tmp_path, load):
    pytest.importorskip("bitsandbytes")
    from core.inspect.weights import compute_weight_stats

    lm = load("tiny-llama")
    folder = tmp_path / "tiny8"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    at = run_page("pages/6_Weights.py", "tiny-llama")
    at = _pick(at, HUB_CHOICE, str(folder), quantization="8bit")
    assert_clean(at)
    assert at.session_state[SPEC_KEY].quantization == "8bit"
    assert not any("no weight matrices" in i.value for i in at.info)
    assert any("dequantized" in i.value for i in at.info)
    ref = compute_weight_stats(lm.model).row("model.layers.0.self_attn.q_proj.weight")
    std = float({m.label: m.value for m in at.metric}["Std"])
    assert std == pytest.approx(ref["std"], rel=0.02)  # int8 rounding moves the spread by well under 2 %
    assert any("int8 (dequantized)" in c.value for c in at.caption)


# ---------------------------------------------------------------- Architecture inputs


ARCH = "pages/1_Architecture.py"
PASTE = "Paste or upload a config.json"


def _config(**override) -> str:
    fields = dict(reference_configs()["distilgpt2"])
    fields.update(override)
    return json.dumps(fields)


def test_architecture_refuses_an_impossible_vocabulary():
    at = run_page(ARCH, "tiny-llama")
    at.radio(key="arch_source").set_value(PASTE).run()
    at.text_area(key="arch_paste").set_value(_config(vocab_size=10**12)).run()
    assert_clean(at)
    assert "vocabulary of 1,000,000,000,000" in at.error[0].value


def test_architecture_latest_of_paste_and_upload_wins():
    at = run_page(ARCH, "tiny-llama")
    at.radio(key="arch_source").set_value(PASTE).run()
    at.text_area(key="arch_paste").set_value(_config(n_layer=3)).run()
    assert {m.label: m.value for m in at.metric}["Layers"] == "3"
    at.file_uploader(key="arch_upload").upload("config.json", _config(n_layer=5).encode(), "application/json").run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Layers"] == "5"
    assert any("uploaded file" in c.value for c in at.caption)
    at.text_area(key="arch_paste").set_value(_config(n_layer=4)).run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Layers"] == "4"
    assert any("pasted text" in c.value for c in at.caption)


@pytest.mark.parametrize("path", ["/etc", "../../", "./models/x"])
def test_architecture_hub_box_refuses_local_paths(path):
    at = run_page(ARCH, "tiny-llama")
    at.radio(key="arch_source").set_value("A Hugging Face Hub config").run()
    at.text_input(key="arch_hub_input").set_value(path)
    at.button[0].click().run()
    assert_clean(at)
    assert "not a Hugging Face Hub id" in at.error[0].value
    assert "remote code" not in at.error[0].value


# ---------------------------------------------------------------- the command each page shows gives its numbers


def shown_commands(at) -> list[list[str]]:
    """The `python -m core ...` lines of the page's "How this was computed", as argv lists."""
    import shlex

    lines = [line for c in at.code if c.language == "bash" for line in c.value.splitlines()]
    assert lines and all(line.startswith("python -m core ") for line in lines), lines
    return [shlex.split(line)[3:] for line in lines]


def run_cli(capsys, argv: list[str]) -> dict:
    from core.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_home_command_gives_the_card(capsys):
    at = run_page("Home.py", "tiny-qwen2")
    (argv,) = shown_commands(at)
    card = run_cli(capsys, argv)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == f"{card['parameters'] / 1e6:,.1f} M"
    assert metrics["Heads / KV heads"] == f"{card['heads']} / {card['kv_heads']}"
    assert metrics["Vocabulary"] == f"{card['vocab_size']:,}"


def test_parameters_commands_give_the_page_numbers(capsys):
    at = run_page("pages/2_Parameters.py", "tiny-gpt2")
    params_argv, weights_argv = shown_commands(at)
    total = run_cli(capsys, params_argv)["total"]
    assert {m.label: m.value for m in at.metric}["Parameters"] == f"{total / 1e6:,.1f} M"
    stats = run_cli(capsys, weights_argv)
    table = at.dataframe[1].value
    row = table[table["name"] == "transformer.h.1.attn.c_attn.weight"].iloc[0]
    assert stats["layers"]["1"]["attn.c_attn"]["frobenius"] == pytest.approx(row["L2 norm"], rel=1e-9)


def test_weights_command_gives_the_metrics(capsys):
    at = run_page("pages/6_Weights.py", "tiny-llama")
    at.select_slider(key="w_layer").set_value(1).run()
    (argv,) = shown_commands(at)
    assert argv[argv.index("--layer") + 1] == "1"  # the command follows the chosen matrix
    out = run_cli(capsys, argv)
    q = out["layers"]["1"]["self_attn.q_proj"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frobenius norm"] == f"{q['frobenius']:.4g}"
    assert metrics["Max |w|"] == f"{q['max_abs']:.4g}"


def test_architecture_command_gives_the_metrics(capsys):
    at = run_page(ARCH, "tiny-llama")
    (argv,) = shown_commands(at)
    out = run_cli(capsys, argv)
    metrics = {m.label: m.value for m in at.metric}
    kv = out["kv_cache_per_token"]
    assert metrics["KV cache per token"] == f"{kv['bytes']:,.0f} B"  # in {kv['dtype']}, the selectbox above it
    assert metrics["Heads / KV heads"] == f"{out['features']['heads']} / {out['features']['kv_heads']}"


def test_no_widget_key_is_used_by_two_pages():
    """Kept widgets persist across pages (persist_state="session") and in the URL, so a key used on two pages
    hands one page's value to the other (Ablation's preset "Names (IOI)" reached Pre-training's preset box)."""
    import re

    from tests_paths import ROOT

    owners: dict[str, set[str]] = {}
    for path in [*sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py")), ROOT / "Home.py"]:
        code = re.sub(r'"""(.|\n)*?"""', "", path.read_text())  # docstrings mention keys as examples
        for key in re.findall(r'\bkey\s*=\s*"([^"{]+)"', code):
            owners.setdefault(key, set()).add(path.name)
    shared = {k: sorted(v) for k, v in owners.items() if len(v) > 1}
    assert not shared, shared
