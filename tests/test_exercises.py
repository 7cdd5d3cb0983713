"""Attention by hand: the seed's examples, random exercises, answer checking, the real head, the page."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.cli import main
from core.evaluate import attention_exercises as X
from core.models.capture import InputError, run_forward
from pagetest import assert_clean, run_page


def test_the_seed_examples_check_out():
    ex = X.seed_examples()
    assert math.isclose(ex["dot"].answers[0], -1.4, abs_tol=1e-12)
    assert round(ex["softmax"].answers[0], 3) == 0.659
    assert [round(a, 3) for a in ex["softmax"].answers] == [0.659, 0.242, 0.099]
    assert ex["weighted_sum"].answers[0] == 0.66
    assert [v[0] for v in ex["weighted_sum"].given["values"]] == [1, 0, 0]


@pytest.mark.parametrize("kind", X.KINDS)
def test_random_exercises_are_seeded_and_their_answers_are_right(kind):
    a, b, c = X.random_exercise(kind, 7), X.random_exercise(kind, 7), X.random_exercise(kind, 8)
    assert a == b and a.given != c.given
    g = a.given
    if kind == "dot":
        expected = [float(torch.tensor(g["q"], dtype=torch.float64) @ torch.tensor(g["k"], dtype=torch.float64))]
    elif kind == "softmax":
        expected = torch.softmax(torch.tensor(g["scores"], dtype=torch.float64), 0).tolist()
    else:
        assert math.isclose(sum(g["weights"]), 1.0) and all(w > 0 for w in g["weights"])
        w, v = torch.tensor(g["weights"], dtype=torch.float64), torch.tensor(g["values"], dtype=torch.float64)
        expected = (w @ v).tolist()
    assert all(math.isclose(x, y, abs_tol=1e-12) for x, y in zip(a.answers, expected))
    assert X.check(a, [repr(x) for x in expected]).ok
    assert len(a.steps) >= 2


def test_checking_answers():
    dot = X.seed_examples()["dot"]
    assert X.check(dot, ["-1.4"]).ok and X.check(dot, [" −1,405 "]).ok  # unicode minus, decimal comma
    wrong = X.check(dot, ["1.4"]).fields[0]
    assert not wrong.ok and wrong.value == 1.4
    for typed, words in (("", "empty"), ("   ", "empty"), ("abc", "not a number"), ("nan", "finite"),
                         (None, "empty")):
        field = X.check(dot, [typed]).fields[0]
        assert not field.ok and field.value is None and words in field.message
    soft = X.seed_examples()["softmax"]
    result = X.check(soft, ["0.659", "0.24"])  # the third is missing
    assert [f.ok for f in result.fields] == [True, True, False] and not result.complete
    assert not X.check(soft, ["0.67", "0.242", "0.099"]).ok  # 0.011 off is outside ± 0.005


def test_operations():
    assert X.dot((1.5, -0.5, 2.0), (0.8, 1.2, -1.0)) == pytest.approx(-1.4)
    assert sum(X.softmax([1000.0, 999.0, -5.0])) == pytest.approx(1.0)  # no overflow
    assert X.weighted_sum([0.5, 0.5], [[2, 4], [0, 0]]) == [1.0, 2.0]
    with pytest.raises(ValueError):
        X.dot([1, 2], [1])
    with pytest.raises(ValueError, match="unknown exercise kind"):
        X.random_exercise("matmul", 1)


def test_softmax_by_hand_equals_the_models_own_attention(tiny):
    cfg = tiny.config
    layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
    for layer, head in ((0, 0), (layers - 1, 3)):
        m = X.model_attention(tiny, "Once upon a time", layer, head)
        assert m.tokens == ["Once", " upon", " a"]
        assert torch.allclose(m.weights, m.model_weights, atol=1e-6)
        assert torch.allclose(m.weights.sum(), torch.tensor(1.0))
        # the model's own weights, read independently from a full forward pass
        own = run_forward(tiny, "Once upon a", max_tokens=3).attentions[layer][head, 2]
        assert torch.allclose(m.weights, own, atol=1e-6)
        assert m.rope == (tiny.spec.source != "tiny-gpt2")
        ex = X.model_exercise(m)
        assert X.check(ex, [f"{a:.4f}" for a in ex.answers]).ok


def test_q_and_k_are_the_projections_after_rope(load):
    """Independent of stepwise: q_proj/k_proj outputs rotated by RoPE (rotate-half form) give the same scores."""
    from core.models.capture import run_forward

    lm = load("tiny-llama")
    attn = "model.layers.1.self_attn"
    cap = run_forward(lm, "Once upon a", max_tokens=3, hook_modules=(f"{attn}.q_proj", f"{attn}.k_proj"))
    d, head, kv = 16, 2, 1  # 4 heads, 2 KV heads: head 2 reads KV head 1
    q = cap.module_outputs[f"{attn}.q_proj"].view(3, 4, d)[:, head]
    k = cap.module_outputs[f"{attn}.k_proj"].view(3, 2, d)[:, kv]
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    ang = torch.outer(torch.arange(3).float(), inv).repeat(1, 2)  # [3, d]

    def rope(x):
        return x * ang.cos() + torch.cat([-x[:, d // 2:], x[:, : d // 2]], -1) * ang.sin()

    scores = rope(k) @ rope(q)[2] / math.sqrt(d)
    m = X.model_attention(lm, "Once upon a", 1, head)
    assert m.kv_head == kv and torch.allclose(m.scaled, scores, atol=1e-5)


@pytest.mark.embedded
def test_real_head_on_the_embedded_model(embedded):
    m = X.model_attention(embedded, "The cat sat on the mat", 5, 4)
    assert m.head_dim == 64 and m.kv_head == 1 and m.max_weight_difference < 1e-5


def test_bad_input_for_the_real_head(load):
    lm = load("tiny-llama")
    with pytest.raises(InputError, match="needs three"):
        X.model_attention(lm, "Hello", 0, 0)
    with pytest.raises(InputError, match="empty"):
        X.model_attention(lm, "  ", 0, 0)
    with pytest.raises(InputError, match="Layer 9"):
        X.model_attention(lm, "The cat sat", 9, 0)
    with pytest.raises(InputError, match="Head 4"):
        X.model_attention(lm, "The cat sat", 0, 4)


def test_cli_by_hand(capsys):
    assert main(["by-hand", "--model", "tiny-llama", "--text", "The cat sat", "--layer", "1", "--head", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_weight_difference"] < 1e-6 and len(out["keys"]) == 3 and out["rope"] is True
    assert main(["by-hand", "--model", "tiny-llama", "--text", "Hi"]) == 2
    assert "needs three" in capsys.readouterr().err


def test_page_checks_typed_answers_and_keeps_numbers_across_reruns():
    at = run_page("pages/19_Attention_by_hand.py", "tiny-llama")
    assert_clean(at)
    at.text_input(key="abh_dot_0_0").input("-1.4").run()
    at.button(key="abh_dot_0_check").click().run()
    assert any("All 1 correct" in s.value for s in at.success)
    at.text_input(key="abh_softmax_0_0").input("zero point six").run()
    at.button(key="abh_softmax_0_check").click().run()
    assert_clean(at)
    assert any("is not a number" in w.value for w in at.warning)
    # a new exercise: fresh numbers that stay put while the learner types
    at.button(key="abh_weighted_sum_new").click().run()
    seed = at.session_state["abh_seed_weighted_sum"]
    assert seed != 0
    ex = X.random_exercise("weighted_sum", seed)
    for i, a in enumerate(ex.answers):
        at.text_input(key=f"abh_weighted_sum_{seed}_{i}").input(f"{a:.3f}").run()
    assert at.session_state["abh_seed_weighted_sum"] == seed
    at.button(key=f"abh_weighted_sum_{seed}_check").click().run()
    assert any(f"All {len(ex.answers)} correct" in s.value for s in at.success)


def test_page_real_head_exercise(load):
    at = run_page("pages/19_Attention_by_hand.py", "tiny-qwen2")
    assert not any(b.key.startswith("abh_model_") for b in at.button)  # nothing computed until the tab opens
    at.session_state["abh_tab"] = "4 · A real head"
    at.run()
    at.number_input(key="abh_layer").set_value(1).run()
    m = X.model_attention(load("tiny-qwen2"), at.text_input(key="abh_text").value, 1, 0)
    ex = X.model_exercise(m)
    check = next(b for b in at.button if b.key.startswith("abh_model_") and b.key.endswith("_check"))
    key = check.key.removesuffix("_check")
    for i, a in enumerate(ex.answers):
        at.text_input(key=f"{key}_{i}").input(f"{a:.4f}").run()
    at.button(key=check.key).click().run()
    assert_clean(at)
    assert any("All 7 correct" in s.value for s in at.success)
    at.text_input(key="abh_text").input("Hi").run()
    assert_clean(at)
    assert any("needs three" in i.value for i in at.info)


def test_page_shows_typed_tokens_literally(load):
    """Typed text is echoed as typed: `**bold**` must not become bold (Markdown) on the page (issue 20)."""
    at = run_page("pages/19_Attention_by_hand.py", "tiny-gpt2")
    at.session_state["abh_tab"] = "4 · A real head"
    at.run()
    at.text_input(key="abh_text").input("**bold** $x^2$ `c`").run()
    assert_clean(at)
    line = next(m.value for m in at.markdown if m.value.startswith("Tokens:"))
    m = X.model_attention(load("tiny-gpt2"), "**bold** $x^2$ `c`", 0, 0)
    from ui.text import token_md
    assert line.startswith("Tokens: " + ", ".join(f"**{token_md(t)}**" for t in m.tokens[:3]))
    assert "\\*\\*" in line  # the typed asterisks are escaped, so they show as asterisks
