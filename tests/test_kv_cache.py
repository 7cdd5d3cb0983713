"""core/decode/kv_cache.py: the formula against the cache's real tensors, cached vs uncached decoding, CLI, page."""

from __future__ import annotations

import json

import pytest

from core.cli import main
from core.decode import kv_cache as K
from core.decode.comparator import prompt_ids
from core.inspect.architecture import config_dims
from core.models.capture import greedy_continuation
from pagetest import assert_clean, run_page

PROMPT = "The history of the printing press begins"


def test_formula_equals_the_bytes_the_cache_holds(tiny):
    ids = prompt_ids(tiny, PROMPT)
    size = K.cache_size(tiny, ids)
    d = config_dims(tiny.config)
    expected = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * len(ids) * 4  # float32
    assert size.formula_bytes == size.actual_bytes == expected
    assert size.layer_shapes == [(1, d["kv_heads"], len(ids), d["head_dim"])] * d["layers"]
    longer = K.cache_size(tiny, ids * 3)
    assert longer.actual_bytes == 3 * size.actual_bytes  # grows linearly with the tokens
    assert K.formula_bytes(tiny, len(ids), batch=2) == 2 * expected


def test_with_and_without_cache_give_the_models_own_greedy_tokens(load):
    lm = load("tiny-llama")
    ids = prompt_ids(lm, PROMPT)
    m = K.measure(lm, ids, 12)
    assert m.same_tokens and m.with_cache.token_ids == greedy_continuation(lm, ids, 12)
    assert len(m.with_cache.seconds) == len(m.without_cache.seconds) == 12
    assert all(s > 0 for s in m.with_cache.seconds + m.without_cache.seconds)
    assert m.speedup == pytest.approx(m.without_cache.total / m.with_cache.total)


def test_bad_lengths(load):
    lm = load("tiny-gpt2")
    ids = prompt_ids(lm, PROMPT)
    with pytest.raises(ValueError, match="between 1 and"):
        K.measure(lm, ids, 0)
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        K.measure(lm, ids * 40, 10)


def test_cli_kv_cache(capsys):
    assert main(["kv-cache", "--model", "tiny-qwen2", "--text", PROMPT, "--new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same_tokens"] and len(out["with_cache"]["per_token_s"]) == 4
    assert out["cache"]["formula_bytes"] == out["cache"]["actual_bytes"] > 0


def test_page_measures_on_request():
    at = run_page("pages/14_KV_cache.py")
    assert_clean(at)
    assert not at.metric  # nothing is timed before the button
    assert any("agree exactly" in s.value for s in at.success)
    at.slider(key="kv_new").set_value(6)
    at.button(key="kv_go").click().run()
    assert_clean(at)
    assert [m.label for m in at.metric] == ["With cache", "Without cache", "Speed-up", "Decode step (cached)"]
    at.text_area(key="kv_prompt").set_value("  ").run()
    assert_clean(at)
    assert any("empty" in i.value for i in at.info)


@pytest.mark.parametrize("tokens", [5, 7, 8, 20])
def test_sliding_window_formula_matches_transformers_dynamic_cache(tokens):
    """A Mistral-style model with an 8-token window: past the window transformers' cache stops at 7 tokens."""
    import torch
    from transformers import DynamicCache, MistralConfig, MistralForCausalLM

    from core.models.memory import kv_cache_bytes

    cfg = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=100, sliding_window=8, max_position_embeddings=64)
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg).eval()
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 100, (2, tokens)), past_key_values=DynamicCache(config=cfg),
                    use_cache=True)
    real = K.cache_tensor_bytes(out.past_key_values)
    size = kv_cache_bytes(cfg, tokens, 2, "float32")
    assert size.bytes == real == 2 * 2 * 2 * 16 * 4 * 2 * min(tokens, 7)
    assert [layer.keys.shape[2] for layer in out.past_key_values.layers] == list(size.layer_tokens)


def test_where_the_runs_part_the_gap_is_measured_not_assumed(load):
    from core.decode.kv_cache import DecodeTiming, KVMeasurement
    from ui.kv_cache import difference_text

    lm = load("tiny-llama")
    ids = prompt_ids(lm, PROMPT)
    m = K.measure(lm, ids, 6)
    assert len(m.with_cache.top2_gaps) == 6 and all(g >= 0 for g in m.with_cache.top2_gaps)
    assert m.first_difference() is None and difference_text(m) == "Both runs produced the same tokens."
    # a made-up pair of runs that part at token 2, once at a near tie and once far from one
    near = KVMeasurement(3, DecodeTiming(True, [1, 2, 3], [0.1] * 3, [1.0, 2e-5, 1.0]),
                         DecodeTiming(False, [1, 5, 3], [0.2] * 3, [1.0, 1e-5, 1.0]))
    assert near.first_difference() == (1, 2e-5, 1e-5) and "near tie" in difference_text(near)
    far = KVMeasurement(3, DecodeTiming(True, [1, 2, 3], [0.1] * 3, [1.0, 0.5, 1.0]),
                        DecodeTiming(False, [1, 5, 3], [0.2] * 3, [1.0, 0.4, 1.0]))
    assert "not a near tie" in difference_text(far)
