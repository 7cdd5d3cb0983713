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
