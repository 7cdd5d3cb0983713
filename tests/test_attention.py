"""core/inspect/attention.py with hand-made attention of known math, on the real models, the CLI and the page."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.inspect import attention as A
from core.models.capture import InputError, run_forward
from core.cli import main
from pagetest import assert_clean, run_page

TEXT = "The cat sat on the mat. The cat sat on the mat again."


def uniform_causal(seq: int, layers: int = 1, heads: int = 1) -> torch.Tensor:
    """[layers, heads, seq, seq]: row i spreads 1/(i+1) over keys 0..i."""
    m = torch.tril(torch.ones(seq, seq))
    m = m / m.sum(-1, keepdim=True)
    return m.expand(layers, heads, seq, seq).clone()


def previous_token(seq: int) -> torch.Tensor:
    """[1, 1, seq, seq]: every token after the first attends only to the one before it."""
    m = torch.zeros(seq, seq)
    m[0, 0] = 1.0
    m[torch.arange(1, seq), torch.arange(seq - 1)] = 1.0
    return m[None, None]


# ---------------------------------------------------------------- known math


def test_uniform_causal_entropy_is_log_of_row_length():
    attn = uniform_causal(7)
    per_query = A.entropy_per_query(attn[0, 0])
    assert torch.allclose(per_query, torch.log(torch.arange(1, 8, dtype=torch.float32)), atol=1e-6)
    stats = A.head_statistics(attn)
    expected = sum(math.log(i + 1) for i in range(1, 7)) / 6
    assert stats["entropy"][0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert A.uniform_causal_entropy(7) == pytest.approx(expected)
    share = sum(1 / (i + 1) for i in range(1, 7)) / 6  # row i gives 1/(i+1) to each key
    for name in ("sink", "previous", "self"):
        assert stats[name][0, 0].item() == pytest.approx(share, abs=1e-6)
    assert stats["distance"][0, 0].item() == pytest.approx(sum(i / 2 for i in range(1, 7)) / 6, abs=1e-6)
    assert A.head_types(stats, 7) == [["broad"]]


def test_identity_attention_is_pure_self():
    attn = torch.eye(5)[None, None]
    stats = A.head_statistics(attn)
    assert stats["self"].item() == pytest.approx(1.0)
    assert stats["sink"].item() == 0.0 and stats["previous"].item() == 0.0
    assert stats["entropy"].item() == 0.0 and stats["distance"].item() == 0.0
    assert A.head_types(stats, 5) == [["self"]]


def test_previous_token_head_and_sink_head():
    stats = A.head_statistics(previous_token(6))
    assert stats["previous"].item() == pytest.approx(1.0)
    assert stats["distance"].item() == pytest.approx(1.0)
    assert A.head_types(stats, 6) == [["previous token"]]
    sink = torch.zeros(1, 1, 6, 6)
    sink[..., 0] = 1.0
    stats = A.head_statistics(sink)
    assert stats["sink"].item() == pytest.approx(1.0)
    assert A.head_types(stats, 6) == [["first token (sink)"]]


def test_statistics_need_two_tokens():
    with pytest.raises(InputError, match="at least two tokens"):
        A.head_statistics(torch.ones(1, 1, 1, 1))


def test_rollout_of_identity_is_identity():
    eye = torch.eye(6).expand(3, 2, 6, 6)
    rolled = A.attention_rollout(eye)
    assert rolled.shape == (3, 6, 6)
    assert torch.allclose(rolled, torch.eye(6).expand(3, 6, 6))


def test_rollout_mixes_residual_and_multiplies_layers():
    attn = torch.stack([uniform_causal(4)[0], previous_token(4)[0]])  # 2 layers, 1 head
    step = [0.5 * torch.eye(4) + 0.5 * attn[layer, 0] for layer in range(2)]  # rows already sum to 1
    rolled = A.attention_rollout(attn, residual=0.5)
    assert torch.allclose(rolled[0], step[0])
    assert torch.allclose(rolled[1], step[1] @ step[0])
    assert torch.allclose(rolled.sum(-1), torch.ones(2, 4))
    assert torch.allclose(A.attention_rollout(attn, residual=1.0), torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ValueError):
        A.attention_rollout(attn, residual=1.5)


def test_head_average_and_causal_check():
    attn = torch.cat([uniform_causal(4, 1, 1), torch.eye(4)[None, None]], dim=1)  # 1 layer, 2 heads
    assert torch.allclose(A.head_average(attn)[0], (uniform_causal(4)[0, 0] + torch.eye(4)) / 2)
    assert A.is_causal(attn)
    assert not A.is_causal(torch.full((1, 1, 3, 3), 1 / 3))


def test_token_edges_threshold_order_and_focus():
    m = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.05, 0.15, 0.8]])
    edges = A.token_edges(m, threshold=0.1)
    assert [(e.query, e.key) for e in edges] == [(0, 0), (2, 2), (1, 1), (1, 0), (2, 1)]
    assert edges[1].weight == pytest.approx(0.8)
    assert [(e.query, e.key) for e in A.token_edges(m, 0.1, query=1)] == [(1, 1), (1, 0)]


@pytest.mark.embedded
def test_kv_groups(load, embedded):
    assert A.kv_groups(load("tiny-gpt2").config) == [[0], [1], [2], [3]]
    assert A.kv_groups(load("tiny-llama").config) == [[0, 1], [2, 3]]
    assert A.kv_groups(load("tiny-qwen2").config) == [[0, 1, 2, 3]]
    assert A.kv_groups(embedded.config) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [A.kv_head_of(h, 9, 3) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


# ---------------------------------------------------------------- real models


def test_statistics_on_tiny_models(tiny):
    cap = run_forward(tiny, TEXT)
    attn = A.attention_stack(cap)
    layers, heads = tiny.config.num_hidden_layers, tiny.config.num_attention_heads
    assert attn.shape == (layers, heads, cap.seq_len, cap.seq_len)
    assert torch.allclose(attn.sum(-1), torch.ones(layers, heads, cap.seq_len), atol=1e-5)
    assert A.is_causal(attn)
    stats = A.head_statistics(attn)
    for name, value in stats.items():
        assert value.shape == (layers, heads), name
    for name in ("sink", "previous", "self"):
        assert ((stats[name] >= 0) & (stats[name] <= 1)).all()
    assert (stats["entropy"] >= 0).all() and (stats["entropy"] <= math.log(cap.seq_len) + 1e-5).all()
    assert (stats["distance"] >= 0).all() and (stats["distance"] <= cap.seq_len - 1).all()
    # hand check of one head against the raw tensor
    a = cap.attentions[1][2]
    assert stats["previous"][1, 2].item() == pytest.approx(
        sum(a[i, i - 1].item() for i in range(1, cap.seq_len)) / (cap.seq_len - 1), abs=1e-6)
    rolled = A.attention_rollout(attn)
    assert torch.allclose(rolled.sum(-1), torch.ones(layers, cap.seq_len), atol=1e-5)


@pytest.mark.embedded
def test_statistics_on_embedded(embedded):
    cap = run_forward(embedded, TEXT)
    stats = A.head_statistics(A.attention_stack(cap))
    assert stats["sink"].shape == (30, 9)
    # SmolLM2 has strong first-token sinks: some head puts most of its attention on token 0
    assert stats["sink"].max().item() > 0.5
    types = A.head_types(stats, cap.seq_len)
    assert len(types) == 30 and all(len(r) == 9 for r in types)
    assert {t for row in types for t in row} <= set(A.HEAD_TYPES)


# ---------------------------------------------------------------- CLI


def test_cli_attention_prints_the_heads_matrix(capsys, load):
    assert main(["attention", "--model", "tiny-llama", "--text", TEXT, "--layer", "1", "--head", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cap = run_forward(load("tiny-llama"), TEXT)
    assert out["tokens"] == cap.tokens
    assert out["kv_head"] == 1 and out["kv_group"] == [2, 3]
    assert torch.allclose(torch.tensor(out["attention"]), cap.attentions[1][3], atol=1e-6)
    assert set(out["statistics"]) == set(A.STATISTICS)


def test_cli_attention_bad_arguments(capsys):
    assert main(["attention", "--model", "tiny-gpt2", "--text", "hello there", "--layer", "7"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["attention", "--model", "tiny-gpt2", "--text", "   "]) == 2
    assert "empty" in capsys.readouterr().err


# ---------------------------------------------------------------- page


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_page_on_tiny_models(model, load):
    at = run_page("pages/5_Attention.py", model)
    assert_clean(at)
    assert at.subheader[0].value == "Every head at a glance"
    at.slider(key="attn_layer").set_value(1).run()
    at.selectbox(key="attn_head").set_value(2).run()
    assert_clean(at)
    cap = run_forward(load(model), at.text_area(key="attn_text").value, max_tokens=256)
    stats = A.head_statistics(A.attention_stack(cap))
    assert _metrics(at)["To previous token"] == f"{stats['previous'][1, 2].item():.3f}"
    at.radio(key="attn_view").set_value("average of the layer's heads").run()
    at.radio(key="attn_scale").set_value("weight").run()
    at.slider(key="attn_threshold").set_value(0.05).run()
    at.selectbox(key="attn_focus").set_value(cap.labels[3]).run()
    at.radio(key="attn_stat").set_value("entropy").run()
    at.slider(key="attn_residual").set_value(0.8).run()
    at.toggle(key="attn_compare").set_value(True).run()
    assert_clean(at)
    assert any("Text 2" in str(c.proto.spec) for c in at.get("vega_lite_chart"))
    # Both texts' statistics side by side, for the layer's head average chosen above.
    cap_2 = run_forward(load(model), at.text_area(key="attn_text2").value, max_tokens=256)
    stats_2 = A.head_statistics(A.attention_stack(cap_2))
    table = at.dataframe[0].value
    assert table.shape == (2, 5) and table.index[1] == f"Text 2 ({cap_2.seq_len} tokens)"
    assert table.loc[table.index[1], "To itself"] == pytest.approx(stats_2["self"][1].mean().item(), abs=1e-6)
    assert table.loc[table.index[0], "To itself"] == pytest.approx(stats["self"][1].mean().item(), abs=1e-6)
    at.text_area(key="attn_text2").set_value("  ").run()
    assert_clean(at)
    assert any("second text is empty" in m.value for m in at.info)


@pytest.mark.embedded
def test_page_on_embedded_with_gqa_note():
    at = run_page("pages/5_Attention.py", "embedded")
    assert_clean(at)
    at.slider(key="attn_layer").set_value(29).run()
    at.selectbox(key="attn_head").set_value(4).run()
    assert_clean(at)
    assert any("K/V head 1" in m.value and "3, 5" in m.value for m in at.markdown)
    assert at.get("image"), "the grid of all heads is an image"


@pytest.mark.parametrize("text, kind, words", [
    ("Hello", "info", "at least two tokens"),
    ("   \n ", "info", "empty"),
    ("word " * 4000, "warning", "only the first 256"),
])
def test_page_bad_input(text, kind, words):
    at = run_page("pages/5_Attention.py", "tiny-llama")
    at.text_area(key="attn_text").set_value(text).run()
    assert_clean(at)
    assert any(words in e.value for e in getattr(at, kind)), [e.value for e in getattr(at, kind)]


def test_page_emoji_and_cjk():
    at = run_page("pages/5_Attention.py", "tiny-qwen2")
    at.text_area(key="attn_text").set_value("🙂🎉 你好，世界！ café").run()
    assert_clean(at)
    assert not at.info and not at.warning
    assert any("fragments of a multi-byte character" in c.value for c in at.caption)  # why tokens show �
    assert at.get("vega_lite_chart")


def test_page_runs_the_command_it_shows():
    """The command under "How this was computed" exits 0 and gives the statistics the page shows."""
    from shown_command import run_shown_command

    at = run_page("pages/5_Attention.py", "tiny-llama", attn_layer=1, attn_head=2)
    assert_clean(at)
    command = next(c.value for c in at.code if c.value.startswith("python -m core attention"))
    assert "--layer 1 --head 2" in command
    out = run_shown_command(command)
    shown = _metrics(at)
    assert shown["Entropy (nats)"] == f"{out['statistics']['entropy']:.3f}"
    assert shown["To first token"] == f"{out['statistics']['sink']:.3f}"
    assert shown["Distance (tokens)"] == f"{out['statistics']['distance']:.1f}"
