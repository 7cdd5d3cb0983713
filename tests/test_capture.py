"""The one forward pass with capture: parity with the model's own outputs, limits, bad input."""

import pytest
import torch

from core.models.capture import (MAX_TOKENS, InputError, generation_room, greedy_continuation, run_forward, token_display,
                          tokenize_for_model)


def test_capture_matches_model_outputs(tiny):
    cap = run_forward(tiny, "The quick brown fox jumps over the lazy dog.")
    config = tiny.config
    with torch.inference_mode():
        logits = tiny.model(torch.tensor([cap.ids], device=tiny.device)).logits[0].cpu()
    assert torch.allclose(cap.logits, logits, atol=1e-6)
    assert len(cap.hidden_states) == config.num_hidden_layers + 1
    assert len(cap.attentions) == config.num_hidden_layers
    seq = len(cap.ids)
    assert cap.attentions[0].shape == (config.num_attention_heads, seq, seq)
    assert cap.hidden_states[0].shape == (seq, config.hidden_size)
    # Softmax rows sum to one; a causal model never looks ahead.
    for att in cap.attentions:
        assert torch.allclose(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5)
        assert torch.all(att.triu(diagonal=1) == 0)


def test_hooks_record_module_outputs(load):
    lm = load("tiny-llama")
    cap = run_forward(lm, "Hooks see the final norm.", hook_modules=("model.norm", "model.layers.1.mlp"))
    # The LM head applied to the hooked final-norm output gives the model's logits.
    with torch.inference_mode():
        logits = lm.model.lm_head(cap.module_outputs["model.norm"].to(lm.device)).cpu()
    assert torch.allclose(logits, cap.logits, atol=1e-5)
    assert cap.module_inputs["model.layers.1.mlp"].shape == (len(cap.ids), 64)
    # Hooks are removed afterwards.
    assert not lm.model.model.norm._forward_hooks


def test_unknown_hook_module_is_an_error(load):
    with pytest.raises(KeyError):
        run_forward(load("tiny-llama"), "x", hook_modules=("model.nope",))


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \n"])
def test_empty_text_is_refused(load, text):
    with pytest.raises(InputError, match="empty"):
        run_forward(load("tiny-gpt2"), text)


def test_long_text_is_truncated_with_notice(load):
    lm = load("tiny-llama")
    text = "word " * 4000  # 20,000 characters
    ids, n = tokenize_for_model(lm, text)
    assert n > MAX_TOKENS
    cap = run_forward(lm, text, max_tokens=64)
    assert len(cap.ids) == 64 and cap.truncated
    assert "only the first 64" in cap.truncation_notice


def test_context_length_caps_tokens(load):
    lm = load("tiny-gpt2")  # 256 positions
    cap = run_forward(lm, "word " * 1000)
    assert len(cap.ids) == 256


@pytest.mark.embedded
def test_emoji_and_cjk(embedded):
    cap = run_forward(embedded, "I love 🍕 and 日本語!")
    assert embedded.decode(cap.ids) == "I love 🍕 and 日本語!"
    # repeated byte fragments (each decodes to �) would merge on a chart axis: the labels tell them apart
    assert len(set(cap.tokens)) < len(cap.tokens)
    assert cap.labels == [f"{i}·{token_display(t)}" for i, t in enumerate(cap.tokens)]
    assert len(set(cap.labels)) == len(cap.labels)
    fragments = sum("\ufffd" in t for t in cap.tokens)
    assert fragments >= 2 and cap.byte_fragment_notice.startswith(f"{fragments} of the {cap.seq_len} tokens")
    assert run_forward(embedded, "I love pizza").byte_fragment_notice is None


def test_greedy_continuation_stops_at_the_context_end(load):
    lm = load("tiny-gpt2")  # 256 learned positions: one more would index past the table
    ids = run_forward(lm, "word " * 1000).ids
    assert len(ids) == 256 and generation_room(lm, len(ids)) == 0
    assert greedy_continuation(lm, ids, 12) == []
    assert 1 <= len(greedy_continuation(lm, ids[:250], 12)) <= 6  # may stop early at an end-of-text token
    assert generation_room(lm, 250) == 6


def test_token_display_makes_whitespace_visible():
    assert token_display(" the") == "␣the"
    assert token_display("\n") == "⏎"
    assert token_display("") == "∅"
