"""Token embeddings and position encodings against the models' own weights and modules, and the page."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pagetest import assert_clean, run_page
from shown_command import run_shown_command

from core.inspect import embeddings as emb

PAGE = "pages/4b_Embeddings_and_positions.py"


# ---------------------------------------------------------------- token embeddings


def test_row_norms_and_cosine_match_torch(tiny):
    W = tiny.model.get_input_embeddings().weight.detach().cpu()
    norms = emb.row_norms(tiny)
    assert torch.allclose(norms, W.norm(dim=-1), rtol=1e-5)
    v = W[123]
    sims = emb.cosine_to_all(tiny, v, norms)
    expected = torch.nn.functional.cosine_similarity(W, v[None, :], dim=-1)
    assert torch.allclose(sims, expected, atol=1e-5)


@pytest.mark.embedded
def test_neighbours_start_with_the_token_itself(embedded):
    tid = embedded.encode(" king")[0]
    near = emb.nearest_neighbours(embedded, tid, 10)
    assert near[0]["id"] == tid and near[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert [n["cosine"] for n in near] == sorted((n["cosine"] for n in near), reverse=True)
    # a trained model: the capitalised variant and the other royal are close
    tokens = [n["token"] for n in near]
    assert " King" in tokens and " queen" in tokens
    W = embedded.model.get_input_embeddings().weight.detach().cpu()
    j = near[3]["id"]
    assert near[3]["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(W[tid], W[j], dim=0)),
                                              abs=1e-5)


def test_token_vector_is_the_row(tiny):
    W = tiny.model.get_input_embeddings().weight.detach().cpu()
    assert torch.equal(emb.token_vector(tiny, 42), W[42].float())
    with pytest.raises(ValueError):
        emb.token_vector(tiny, W.shape[0])


@pytest.mark.embedded
def test_pca_matches_numpy_svd(embedded):
    ids = [embedded.encode(" " + w)[0] for w in ("king", "queen", "man", "woman", "cat", "dog", "one", "two")]
    X = torch.stack([emb.token_vector(embedded, i) for i in ids])
    coords, ratio = emb.pca_2d(X)
    Xc = X.double().numpy() - X.double().numpy().mean(axis=0)
    _U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    ref = Xc @ Vt[:2].T
    assert np.allclose(np.abs(coords), np.abs(ref), atol=1e-8)
    assert np.allclose(ratio, S[:2] ** 2 / (S**2).sum())
    assert np.allclose(coords.mean(axis=0), 0, atol=1e-10)


def test_pca_needs_two_tokens():
    with pytest.raises(ValueError):
        emb.pca_2d(torch.ones(1, 4))


# ---------------------------------------------------------------- positions


def test_sinusoidal_known_values():
    pe = emb.sinusoidal_encoding(50, 8)
    assert pe.shape == (50, 8)
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 4))
    for pos in (1, 7, 49):
        for i in range(4):
            angle = pos / 10_000 ** (2 * i / 8)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert emb.sinusoidal_encoding(3, 5).shape == (3, 5)  # odd d: the last column is a sine


def test_position_kinds(load):
    assert emb.position_kind(load("tiny-gpt2")) == "learned"
    assert emb.position_kind(load("tiny-llama")) == "rope"
    assert emb.position_kind(load("tiny-qwen2")) == "rope"


def test_learned_position_similarity_gpt2(load):
    lm = load("tiny-gpt2")
    wpe = lm.model.transformer.wpe.weight.detach()
    sim = emb.learned_position_similarity(lm, 10)
    assert sim.shape == (10, 10)
    assert torch.allclose(sim.diagonal(), torch.ones(10), atol=1e-6)
    assert sim[2, 7].item() == pytest.approx(float(torch.nn.functional.cosine_similarity(wpe[2], wpe[7], dim=0)),
                                             abs=1e-6)
    assert emb.learned_position_similarity(lm, 10_000).shape == (256, 256)  # capped at the table size
    with pytest.raises(ValueError):
        emb.learned_position_similarity(load("tiny-llama"), 4)


@pytest.mark.parametrize("source,theta", [("tiny-llama", 10_000.0), ("tiny-qwen2", 10_000.0),
                                          pytest.param("embedded", 100_000.0, marks=pytest.mark.embedded)])
def test_rope_formula_matches_the_models_rotary_emb(load, source, theta):
    lm = load(source)
    assert emb.rope_theta(lm.config) == theta
    formula = emb.rope_inv_freq(lm.config)
    assert torch.allclose(emb.model_inv_freq(lm), formula, rtol=1e-6)
    cos, sin = emb.model_rope_cos_sin(lm, 64)
    angles = emb.rope_angles(formula, 64)
    half = formula.shape[0]
    assert cos.shape == (64, 2 * half)
    assert emb.rope_max_difference(lm, formula, 64) < 1e-5  # float32 angles up to 63 rad
    for part in (slice(0, half), slice(half, 2 * half)):  # transformers repeats the angles: (θ, θ)
        assert torch.allclose(cos[:, part].double(), torch.cos(angles), atol=2e-6)
        assert torch.allclose(sin[:, part].double(), torch.sin(angles), atol=2e-6)


def test_rotate_pair_matches_apply_rotary_pos_emb(load):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = load("tiny-llama")
    cos, sin = emb.model_rope_cos_sin(lm, 12)
    d = cos.shape[-1]
    i = 3
    q = torch.zeros(1, 1, 12, d)
    q[..., i], q[..., i + d // 2] = 0.6, -0.8  # one 2-D pair (x_i, x_{i+d/2}) at every position
    q_rot, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
    ours = emb.rotate_pair((0.6, -0.8), emb.rope_angles(emb.model_inv_freq(lm), 12)[:, i])
    assert torch.allclose(q_rot[0, 0, :, i].double(), ours[:, 0], atol=1e-6)
    assert torch.allclose(q_rot[0, 0, :, i + d // 2].double(), ours[:, 1], atol=1e-6)


@pytest.mark.embedded
def test_rope_relative_score_depends_on_distance_only(load):
    inv = emb.model_inv_freq(load("embedded"))
    score = emb.rope_relative_score(inv, 100)
    assert score[0].item() == pytest.approx(1.0)
    # q at position m, k at n, both the all-ones vector: the dot product equals 2 * sum cos((m-n) θ_i)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = load("embedded")
    cos, sin = emb.model_rope_cos_sin(lm, 80)
    ones = torch.ones(1, 1, 80, cos.shape[-1])
    rot, _ = apply_rotary_pos_emb(ones, ones, cos[None], sin[None])
    dots = rot[0, 0] @ rot[0, 0].T / cos.shape[-1]
    assert dots[70, 30].item() == pytest.approx(score[40].item(), abs=1e-4)
    assert dots[45, 5].item() == pytest.approx(score[40].item(), abs=1e-4)
    assert emb.wavelengths(inv)[0].item() == pytest.approx(2 * math.pi)


# ---------------------------------------------------------------- CLI


def test_cli_embeddings(capsys):
    from core.cli import main

    assert main(["embeddings", "--model", "tiny-gpt2", "--tokens", " king, queen, man", "--k", "3",
                 "--positions", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["position_kind"] == "learned"
    king = out["tokens"][" king"]
    assert king["neighbours"][0]["id"] == king["id"]
    assert len(out["learned_similarity"]) == 4 and len(out["pca"]["coords"]) == 3


# ---------------------------------------------------------------- the page


def _table(at, column: str):
    """The first dataframe on the page that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.mark.parametrize("source", ["tiny-gpt2", "tiny-llama", "tiny-qwen2",
                                    pytest.param("embedded", marks=pytest.mark.embedded)])
def test_page_runs(source):
    at = run_page(PAGE, source)
    assert_clean(at)
    assert [h.value for h in at.header][:2] == ["1. Token embeddings", "2. Positions"]
    assert not at.warning
    infos = " ".join(i.value for i in at.info)
    assert ("no learned position table" in infos) == (source != "tiny-gpt2")
    assert ("does not use RoPE" in infos) == (source == "tiny-gpt2")
    assert len(at.dataframe) >= 1  # neighbours


def test_page_bad_text_inputs():
    at = run_page(PAGE, "tiny-gpt2")
    at.text_input(key="emb_words").set_value(" , ,").run()
    assert_clean(at)
    assert any("Type one or more words" in i.value for i in at.info)
    at.text_input(key="emb_words").set_value("😀, 日本").run()
    assert_clean(at)


def test_page_shows_backtick_and_markdown_tokens_literally():
    """A word with backticks or Markdown keeps its code span: the caption and the vector title show it as typed."""
    at = run_page(PAGE, "tiny-llama", emb_words="**bold** $x^2$ `tick`, cat")
    assert_clean(at)
    note = next(c.value for c in at.caption if c.value.startswith("Split into several tokens"))
    assert "`` **bold** $x^2$ `tick` ``" in note  # a longer fence holds the backticks inside
    title = next(m.value for m in at.markdown if m.value.startswith("**The vector of"))
    assert title.count("`") % 2 == 0


def test_page_runs_the_command_it_shows(load):
    """The command under "How this was computed" exits 0 and gives the neighbours the page shows."""
    at = run_page(PAGE, "tiny-llama", emb_words="king, queen")
    assert_clean(at)
    command = next(c.value for c in at.code if c.value.startswith("python -m core embeddings"))
    out = run_shown_command(command)
    near = _table(at, "cosine")
    king = out["tokens"][" king"]
    assert [n["id"] for n in king["neighbours"]] == near["id"].tolist()
    assert [round(n["cosine"], 4) for n in king["neighbours"]] == pytest.approx(near["cosine"].tolist(), abs=1e-4)


@pytest.mark.embedded
def test_page_widgets_embedded():
    at = run_page(PAGE, "embedded")
    at.checkbox(key="emb_add_near").check().run()
    at.slider(key="emb_k").set_value(20).run()
    assert_clean(at)
    near = _table(at, "cosine")
    assert len(near) == 20 and near["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    at.slider(key="rope_pair").set_value(31).run()
    at.slider(key="pos_n").set_value(512).run()
    assert_clean(at)
    # another model with a smaller head: the frequency slider is clamped, no stale-range error
    from core.models.loading import ModelSpec
    from ui.models import SPEC_KEY

    at.session_state[SPEC_KEY] = ModelSpec("tiny-llama")
    at.run()
    assert_clean(at)
    assert at.slider(key="rope_pair").value == 7


def test_rope_summary_is_the_models_own(load):
    lm = load("tiny-llama")
    rope = emb.rope_summary(lm, n_positions=64, max_distance=32)
    assert rope.theta == 10_000.0 and rope.rope_type == "default" and rope.follows_formula
    d = lm.config.hidden_size // lm.config.num_attention_heads  # default RoPE: theta_i = 10000^(-2i/d)
    formula = 1.0 / 10_000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    torch.testing.assert_close(rope.inv_freq, formula, rtol=1e-6, atol=0)
    assert rope.wavelengths[0].item() == pytest.approx(2 * math.pi)  # theta_0 = 1 radian per position
    assert rope.cos_table.shape == (rope.inv_freq.shape[0], 64) and rope.relative_score.shape == (33,)
    assert rope.max_difference < 1e-5
    with pytest.raises(ValueError, match="no rotary"):
        emb.rope_summary(load("tiny-gpt2"))


def test_map_labels_of_close_points_do_not_overlap():
    """Issue 20: Paris, France and London were written over each other on the 2-D map. place_labels gives
    each label a spot whose box (estimated at 6.6 px per character, 14 px high) is free of the others."""
    import numpy as np

    from ui.charts import place_labels

    x, y = np.array([-1.05, -1.03, -0.95, 2.0, 2.3]), np.array([-0.75, -0.73, -0.72, -0.5, -0.1])
    names = ["␣Paris", "␣France", "␣London", "␣two", "␣one"]
    width, height = 640, 420
    lx, ly = place_labels(x, y, names, width=width, height=height)
    sx = (lx - x.min()) / np.ptp(x) * width  # back to pixels, as place_labels measured them
    sy = (1 - (ly - y.min()) / np.ptp(y)) * height
    boxes = [(a, b - 7, a + 6.6 * len(n) + 2, b + 7) for a, b, n in zip(sx, sy, names)]
    for i in range(len(boxes)):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (names[i], names[j])
    assert np.allclose(place_labels(x[3:], y[3:], names[3:], log=False)[1], y[3:])  # free: right of the point
