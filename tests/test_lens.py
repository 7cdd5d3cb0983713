"""core/inspect/lens.py: the final-norm resolver, exact parity with the model's logits, ranks; CLI; page."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from core.inspect import lens as L
from core.models.capture import run_forward
from core.cli import main
from pagetest import assert_clean, run_page

TEXT = "The capital of France is Paris. The capital of Italy is"
NORMS = {"tiny-gpt2": "transformer.ln_f", "tiny-llama": "model.norm", "tiny-qwen2": "model.norm",
         "embedded": "model.norm"}
MODELS = ["tiny-gpt2", "tiny-llama", "tiny-qwen2", pytest.param("embedded", marks=pytest.mark.embedded)]


def lens_capture(lm, text=TEXT):
    return run_forward(lm, text, attentions=False, hook_modules=L.lens_hook_modules(lm.model))


@pytest.mark.parametrize("source", MODELS)
def test_final_norm_resolver(source, load):
    lm = load(source)
    name = L.final_norm_name(lm.model)
    assert name == NORMS[source]
    assert "norm" in type(lm.model.get_submodule(name)).__name__.lower()


def test_final_norm_resolver_generic_and_missing():
    class Base(nn.Module):
        def __init__(self, norm: bool):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])
            if norm:
                self.ln_out = nn.LayerNorm(4)

    class Wrapper(nn.Module):
        base_model_prefix = "decoder"

        def __init__(self, norm: bool):
            super().__init__()
            self.decoder = Base(norm)

    assert L.final_norm_name(Wrapper(True)) == "decoder.ln_out"
    assert L.final_norm_name(Wrapper(False)) is None


@pytest.mark.parametrize("source", MODELS)
def test_last_layer_equals_the_models_logits(source, load):
    lm = load(source)
    cap = lens_capture(lm)
    # transformers 5 already normalises the last hidden state: the lens must not normalise it twice
    norm = lm.model.get_submodule(NORMS[source])
    with torch.inference_mode():
        normed = norm(cap.module_inputs[NORMS[source]].to(lm.device)).cpu()
    assert torch.allclose(normed, cap.hidden_states[-1], atol=1e-6)
    stream = L.residual_stream(lm.model, cap)
    assert len(stream) == lm.config.num_hidden_layers + 1
    assert torch.allclose(L.lens_logits(lm.model, stream[-1]), cap.logits, atol=1e-5, rtol=0)
    assert L.final_layer_difference(lm.model, cap) < 1e-5
    lens = L.logit_lens(lm.model, cap)
    assert lens.layers == lm.config.num_hidden_layers
    assert torch.equal(lens.top_ids[-1, :, 0], cap.logits.argmax(-1))
    assert (lens.target_ranks[-1] == 1).all()
    assert torch.allclose(lens.top_probs[-1, :, 0], torch.softmax(cap.logits, -1).max(-1).values, atol=1e-6)


def test_intermediate_layer_by_hand_rmsnorm(load):
    """tiny-llama, layer 1: RMSNorm written out, then the (tied) unembedding matrix."""
    lm = load("tiny-llama")
    cap = lens_capture(lm)
    h = cap.hidden_states[1]  # output of block 0
    norm = lm.model.model.norm
    x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.detach().cpu()
    logits = x @ lm.model.model.embed_tokens.weight.detach().cpu().T  # tied embeddings
    assert torch.allclose(L.lens_logits(lm.model, h), logits, atol=1e-4)
    lens = L.logit_lens(lm.model, cap)
    assert torch.equal(lens.top_ids[1, :, 0], logits.argmax(-1))
    # rank = 1 + number of tokens with a higher logit, read off a full sort at one position
    p = 3
    target = int(lens.target_ids[p])
    order = torch.argsort(logits[p], descending=True)
    assert int(lens.target_ranks[1, p]) == int((order == target).nonzero()) + 1


def test_next_token_targets_and_positions(load):
    lm = load("tiny-gpt2")
    cap = lens_capture(lm)
    targets = L.next_token_targets(cap)
    assert targets[:-1] == cap.ids[1:] and targets[-1] == -1
    full = L.logit_lens(lm.model, cap, targets)
    assert (full.target_ranks[:, -1] == 0).all() and torch.isnan(full.target_probs[:, -1]).all()
    part = L.logit_lens(lm.model, cap, targets, positions=[2, 5])
    assert part.top_ids.shape == (3, 2, 3)
    assert torch.equal(part.top_ids, full.top_ids[:, [2, 5]])
    assert torch.equal(part.target_ranks, full.target_ranks[:, [2, 5]])
    with pytest.raises(ValueError):
        L.logit_lens(lm.model, cap, positions=[cap.seq_len])


def test_missing_hook_is_a_clear_error(load):
    lm = load("tiny-qwen2")
    with pytest.raises(ValueError, match="hook_modules"):
        L.residual_stream(lm.model, run_forward(lm, TEXT))


def test_cli_lens(capsys, load):
    assert main(["lens", "--model", "tiny-llama", "--text", TEXT, "--positions", "0,-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["final_norm"] == "model.norm" and len(out["layers"]) == 3
    cap = lens_capture(load("tiny-llama"))
    assert out["positions"] == [0, cap.seq_len - 1]
    assert out["layers"][-1]["tracked_rank"] == [1, 1]
    assert out["last_layer_max_abs_diff_vs_logits"] < 1e-5
    assert main(["lens", "--model", "tiny-llama", "--text", TEXT, "--positions", "x"]) == 2
    assert "comma-separated" in capsys.readouterr().err


@pytest.mark.parametrize("model", MODELS)
def test_page_runs(model):
    at = run_page("pages/7_Logit_lens.py", model)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Final norm applied"] == NORMS[model].split(".")[-1]
    diff = float(metrics["Last layer vs the model's logits"].split("=")[1])
    assert diff < 1e-4
    at.radio(key="lens_track").set_value("next").run()
    at.slider(key="lens_window").set_value(0).run()
    at.selectbox(key="lens_position").set_value(2).run()
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == 4


@pytest.mark.parametrize("text, kind, words", [
    ("   ", "info", "empty"),
    ("word " * 4000, "warning", "only the first 256"),
])
def test_page_bad_input(text, kind, words):
    at = run_page("pages/7_Logit_lens.py", "tiny-llama")
    at.text_area(key="lens_text").set_value(text).run()
    assert_clean(at)
    assert any(words in e.value for e in getattr(at, kind))


def test_page_one_token_and_emoji():
    at = run_page("pages/7_Logit_lens.py", "tiny-qwen2")
    at.text_area(key="lens_text").set_value("Hello").run()
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == 4  # one position still has a prediction
    at.radio(key="lens_track").set_value("next").run()
    assert_clean(at)
    assert any("single token" in e.value for e in at.info)
    at.text_area(key="lens_text").set_value("😀🎉 你好世界").run()
    assert_clean(at)
    assert not math.isnan(float(at.metric[2].value.split("=")[1]))


def test_page_runs_the_command_it_shows():
    """The command under "How this was computed" exits 0 with the layers, parity and tracked token shown."""
    from shown_command import run_shown_command

    at = run_page("pages/7_Logit_lens.py", "tiny-llama")
    assert_clean(at)
    command = next(c.value for c in at.code if c.value.startswith("python -m core lens"))
    out = run_shown_command(command)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers read"] == str(len(out["layers"]))
    assert metrics["Final norm applied"] == out["final_norm"].split(".")[-1]
    assert metrics["Last layer vs the model's logits"] == f"max |Δ| = {out['last_layer_max_abs_diff_vs_logits']:.1e}"
    from core.models.capture import token_display

    tracked = next(m.value for m in at.markdown if m.value.startswith("Tracked token at"))
    assert token_display(out["tracked_tokens"][-1]) in tracked


def test_page_position_follows_a_shorter_text():
    """Issue 9: the Position box kept a position of an earlier, longer text while the page tracked another.

    The browser keeps showing its own value of a keyed widget unless the server sends one (`set_value`):
    forgetting the stale value on the server alone left `255·␣over` on screen."""
    at = run_page("pages/7_Logit_lens.py", "tiny-llama", lens_text="word " * 40)
    assert_clean(at)
    at.selectbox(key="lens_position").set_value(30).run()
    at.text_area(key="lens_text").set_value("The cat sat").run()
    assert_clean(at)
    box = at.selectbox(key="lens_position")
    n = len(box.options)
    assert box.value == n - 1  # the new text's last position
    assert box.proto.set_value and box.proto.raw_value == box.options[-1]  # ...sent to the browser too


def test_first_top_layer():
    """The first layer from which the tracked token stays the top prediction (None if it is not at the end)."""
    ranks = torch.tensor([[5, 1, 3], [1, 1, 2], [2, 1, 1], [1, 1, 1]])  # [layers + 1, positions]
    lens = L.LogitLens(torch.arange(3), torch.zeros(4, 3, 1, dtype=torch.long), torch.zeros(4, 3, 1),
                       torch.tensor([7, 8, -1]), ranks, torch.zeros(4, 3), "model.norm")
    assert lens.first_top_layer(0) == 3  # top at layer 1, lost at 2, top again from 3 on
    assert lens.first_top_layer(1) == 0
    assert lens.first_top_layer(2) is None  # nothing tracked there
    lens.target_ranks[-1, 0] = 2
    assert lens.first_top_layer(0) is None  # not the top prediction at the last layer
