"""Encoder (BERT style) and encoder-decoder (T5 style) attention: loading by kind, the matrices checked against
the model's own outputs and against a computation by hand, the images for long inputs, the page, and the
other pages' "needs a causal LM" message."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from core.circuits import encoder_attention as E
from core.models.capture import InputError, hooks
from core.models.loading import load_model, model_kind, parse_spec
from pagetest import assert_clean, run_page

PAGE = "pages/24_Encoder_attention.py"
TEXT = "The chef who cooked the meal was praised because she had spent all day in the kitchen."
TARGET = "Der Koch wurde gelobt."
LONG = " ".join(["The quick brown fox jumps over the lazy dog while the chef cooks dinner."] * 34)  # 510 tokens


# ---------------------------------------------------------------- loading: one loader, three kinds


def test_tiny_encoders_load_with_their_kind(load):
    bert, t5, llama = load("tiny-bert"), load("tiny-t5"), load("tiny-llama")
    assert (bert.kind, type(bert.model).__name__) == ("encoder", "BertForMaskedLM")
    assert (t5.kind, type(t5.model).__name__) == ("encoder-decoder", "T5ForConditionalGeneration")
    assert llama.kind == "causal"
    assert bert.config._attn_implementation == t5.config._attn_implementation == "eager"
    assert bert.loaded_from == t5.loaded_from == "random init (seed 0)"
    # seeded: a second build has the same weights
    again = load_model("tiny-t5")
    assert torch.equal(again.model.shared.weight, t5.model.shared.weight)


@pytest.mark.parametrize("model_type, fields, kind", [
    ("bert", {"architectures": ["BertForMaskedLM"]}, "encoder"),
    ("bert", {"architectures": ["BertModel"]}, "encoder"),
    ("bert", {"is_decoder": True}, "causal"),  # BertLMHeadModel as a decoder: causal
    ("xlm-roberta", {"architectures": ["XLMRobertaModel"]}, "encoder"),  # transformers maps it to a causal LM too
    ("distilbert", {}, "encoder"),
    ("t5", {}, "encoder-decoder"),
    ("bart", {}, "encoder-decoder"),
    ("gpt2", {"architectures": ["GPT2LMHeadModel"]}, "causal"),
    ("llama", {}, "causal"),
])
def test_model_kind_from_the_config(model_type, fields, kind):
    assert model_kind(AutoConfig.for_model(model_type, **fields)) == kind


@pytest.mark.parametrize("source, cls", [("tiny-bert", "BertForMaskedLM"), ("tiny-t5", "T5ForConditionalGeneration")])
def test_a_saved_encoder_folder_loads_through_the_same_loader(load, tmp_path, source, cls):
    """The Hub / local-folder path (offline here: a saved folder) picks the Auto class from the config."""
    lm = load(source)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    for dtype in ("float32", "bfloat16"):  # bfloat16 reads the float32 files straight into bf16
        again = load_model(parse_spec(str(tmp_path), dtype))
        assert (again.kind, type(again.model).__name__) == (lm.kind, cls)
    again = load_model(str(tmp_path))
    a, b = E.encoder_attention(lm, TEXT, TARGET), E.encoder_attention(again, TEXT, TARGET)
    for which in a.available:
        assert torch.allclose(a.stack(which), b.stack(which), atol=1e-6)


def test_survey_runs_on_encoder_models(load):
    from core.inspect import survey

    for source in ("tiny-bert", "tiny-t5"):
        lm = load(source)
        found = survey.survey(lm.model, f"test-{source}", background=False)
        assert found.error is None and found.weights is not None and len(found.weights.rows) > 10


def test_sidebar_lists_the_tiny_encoders():
    from ui.models import choices

    entries = choices()
    assert "tiny-bert" in entries and "tiny-t5" in entries


# ---------------------------------------------------------------- the matrices


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[seq, heads * d] -> [heads, seq, d]."""
    return x.reshape(x.shape[0], heads, -1).transpose(0, 1)


def test_bert_matrices_are_the_models_and_match_a_hand_computation(load):
    lm = load("tiny-bert")
    att = E.encoder_attention(lm, TEXT)
    layers, heads = lm.config.num_hidden_layers, lm.config.num_attention_heads
    seq = len(att.source_ids)
    assert att.available == ("encoder",) and att.encoder.shape == (layers, heads, seq, seq)
    names = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(layers) for m in ("query", "key")]
    got: dict = {"inputs": {}, "outputs": {}}
    with torch.inference_mode(), hooks(lm.model, names, got):
        own = lm.model(input_ids=torch.tensor([att.source_ids]), output_attentions=True).attentions
    for i in range(layers):
        assert torch.allclose(att.encoder[i], own[i][0], atol=1e-6)  # the model's own output_attentions
        q = _heads(got["outputs"][names[2 * i]], heads)
        k = _heads(got["outputs"][names[2 * i + 1]], heads)
        by_hand = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        assert torch.allclose(att.encoder[i], by_hand, atol=1e-5)
    assert torch.allclose(att.encoder.sum(-1), torch.ones(att.encoder.shape[:-1]), atol=1e-5)
    # bidirectional: every head of every layer puts real weight on later tokens
    upper = torch.triu(att.encoder, diagonal=1).sum((-1, -2))  # [layers, heads]
    assert (upper > 0.5).all() and not att.causal("encoder")
    assert E.right_share(att, "encoder", 0, None) > 0.2


def test_t5_matrices_are_the_models_and_match_a_hand_computation(load):
    lm = load("tiny-t5")
    att = E.encoder_attention(lm, TEXT, TARGET)
    layers, heads = lm.config.num_layers, lm.config.num_heads
    src, tgt = len(att.source_ids), len(att.target_ids)
    assert att.target_ids[0] == lm.config.decoder_start_token_id and att.target_ids[1:] == lm.encode(TARGET)
    assert att.shapes() == {"encoder": [layers, heads, src, src], "decoder": [layers, heads, tgt, tgt],
                            "cross": [layers, heads, tgt, src]}

    def attn(part: str, i: int, sub: int, m: str) -> str:
        """The q or k projection: encoder self-attention, decoder self-attention (sub 0) or cross-attention (1)."""
        return f"{part}.block.{i}.layer.{sub}.{'EncDecAttention' if sub == 1 else 'SelfAttention'}.{m}"
    names = [attn(part, i, sub, m) for i in range(layers) for m in ("q", "k")
             for part, sub in (("encoder", 0), ("decoder", 0), ("decoder", 1))]
    got: dict = {"inputs": {}, "outputs": {}}
    with torch.inference_mode(), hooks(lm.model, names, got):
        out = lm.model(input_ids=torch.tensor([att.source_ids]), decoder_input_ids=torch.tensor([att.target_ids]),
                       output_attentions=True, use_cache=False)
        enc_bias = lm.model.encoder.block[0].layer[0].SelfAttention.compute_bias(src, src)[0]
        dec_bias = lm.model.decoder.block[0].layer[0].SelfAttention.compute_bias(tgt, tgt)[0]
    future = torch.triu(torch.ones(tgt, tgt, dtype=torch.bool), diagonal=1)
    for i in range(layers):
        # the model's own three sets, each in its place
        assert torch.allclose(att.encoder[i], out.encoder_attentions[i][0], atol=1e-6)
        assert torch.allclose(att.decoder[i], out.decoder_attentions[i][0], atol=1e-6)
        assert torch.allclose(att.cross[i], out.cross_attentions[i][0], atol=1e-6)
        # by hand: T5 does not scale q.k; relative position bias in self-attention, none in cross-attention
        def scores(part, sub):
            q = _heads(got["outputs"][attn(part, i, sub, "q")], heads)
            k = _heads(got["outputs"][attn(part, i, sub, "k")], heads)
            return q @ k.transpose(-1, -2)
        assert torch.allclose(att.encoder[i], torch.softmax(scores("encoder", 0) + enc_bias, -1), atol=1e-5)
        dec = (scores("decoder", 0) + dec_bias).masked_fill(future, float("-inf"))
        assert torch.allclose(att.decoder[i], torch.softmax(dec, -1), atol=1e-5)
        assert torch.allclose(att.cross[i], torch.softmax(scores("decoder", 1), -1), atol=1e-5)
    for which in att.available:
        stack = att.stack(which)
        assert torch.allclose(stack.sum(-1), torch.ones(stack.shape[:-1]), atol=1e-5)
    # the decoder is causal (exactly 0 above the diagonal), the encoder and cross-attention are not
    assert (att.decoder[..., future] == 0).all() and att.causal("decoder")
    assert torch.triu(att.encoder, diagonal=1).sum() > 1 and not att.causal("encoder")
    assert not att.causal("cross")
    assert E.right_share(att, "decoder", 1, 2) == 0.0


def test_input_errors(load):
    with pytest.raises(InputError, match="empty"):
        E.encoder_attention(load("tiny-bert"), "  \n")
    with pytest.raises(InputError, match="target is empty"):
        E.encoder_attention(load("tiny-t5"), TEXT, "")
    with pytest.raises(InputError, match="causal language model"):
        E.encoder_attention(load("tiny-llama"), TEXT)
    long = "word " * 1000
    att = E.encoder_attention(load("tiny-bert"), long)  # cut at BERT's 512 positions, with a notice
    n = len(load("tiny-bert").encode(long))
    assert n > 1000 and len(att.source_ids) == 512 and f"has {n:,} tokens" in att.notices[0]


def test_top_keys_leave_masked_keys_out(load):
    att = E.encoder_attention(load("tiny-t5"), TEXT, TARGET)
    matrix = E.head_matrix(att, "decoder", 0, 1)
    assert E.top_keys(matrix, 0) == [(0, pytest.approx(1.0))]  # the start token can only read itself
    top = E.top_keys(matrix, 5, k=3)
    assert [w for _, w in top] == sorted(matrix[5].tolist(), reverse=True)[:3] and all(k <= 5 for k, _ in top)


# ---------------------------------------------------------------- images for long inputs


@pytest.mark.parametrize("q, k, size", [(512, 512, (512, 512)), (300, 200, (400, 600)), (40, 40, (640, 640))])
def test_matrix_png_pixel_size(q, k, size):
    """(width, height) = (keys, queries) x whole pixels per cell, the longer side near 640."""
    from ui.encoder import matrix_png

    matrix = torch.softmax(torch.randn(q, k, generator=torch.Generator().manual_seed(0)), -1).numpy()
    img = Image.open(io.BytesIO(matrix_png(matrix, causal=False, sqrt=True)))
    assert img.size == size and img.mode == "RGB"


def test_cross_attention_grid_with_unequal_lengths():
    """A [tgt, src] cross-attention is resampled square for the all-heads picture (tiles are square): with 120
    decoder tokens and 7 encoder tokens, drawn unresampled, a tile would not fit its square."""
    from ui.encoder import grid

    assert E.square(torch.arange(6.0).reshape(1, 1, 2, 3), 6)[0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    rows = torch.softmax(torch.randn(2, 4, 120, 7, generator=torch.Generator().manual_seed(0)), -1)
    att = E.EncoderAttention("encoder-decoder", list(range(7)), ["t"] * 7, list(range(120)), ["t"] * 120,
                             torch.full((2, 4, 7, 7), 1 / 7), torch.full((2, 4, 120, 120), 0.0), rows, 7, 119)
    picture, top = grid(load_model("tiny-t5"), att, "cross", sqrt=False)
    assert set(picture.boxes) == {(layer, head) for layer in range(2) for head in range(4)}
    assert 0 < top <= float(rows.max())


def test_matrix_png_greys_the_masked_future():
    from ui.attention import MASKED_RGB
    from ui.encoder import matrix_png

    matrix = np.tril(np.ones((512, 512), np.float32))
    matrix /= matrix.sum(-1, keepdims=True)
    pixels = np.asarray(Image.open(io.BytesIO(matrix_png(matrix, causal=True, sqrt=False))))
    assert pixels.shape == (512, 512, 3)
    assert tuple(pixels[0, 511]) == MASKED_RGB and tuple(pixels[511, 0]) != MASKED_RGB


# ---------------------------------------------------------------- the page


def test_page_on_tiny_bert(load):
    at = run_page(PAGE, "tiny-bert")
    assert_clean(at)
    assert [s.value for s in at.subheader] == ["Every head of the encoder self-attention", "Layer 0, mean of all heads",
                                               "What one token reads"]
    assert not [r for r in at.radio if r.key == "enc_which"]  # an encoder has one attention: no picker
    assert at.get("vega_lite_chart") and len(at.get("image")) == 1  # short text: hover chart + the all-heads grid
    at.slider(key="enc_layer").set_value(1).run()
    at.selectbox(key="enc_head").set_value(2).run()
    at.selectbox(key="enc_query").set_value(3).run()
    assert_clean(at)
    att = E.encoder_attention(load("tiny-bert"), at.text_area(key="enc_text").value)
    top = E.top_keys(E.head_matrix(att, "encoder", 1, 2), 3)
    shown = next(m.value for m in at.markdown if m.value.count(": **") == len(top))
    assert [float(x.split("**")[1]) for x in shown.split("  \n")] == [round(w, 3) for _, w in top]
    right = E.right_share(att, "encoder", 1, 2)
    assert any(f"on average {right:.0%}" in c.value for c in at.caption)


def test_page_on_tiny_t5_shows_all_three_attentions():
    at = run_page(PAGE, "tiny-t5")
    assert_clean(at)
    assert at.radio(key="enc_which").options == ["encoder self-attention", "decoder self-attention", "cross-attention"]
    for which, title in (("decoder", "decoder self-attention"), ("cross", "cross-attention")):
        at.radio(key="enc_which").set_value(which).run()
        assert_clean(at)
        assert at.subheader[0].value == f"Every head of the {title}"
        spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
        assert spec["title"].startswith(title)
        assert any(c.value.startswith("Causal:") for c in at.caption) == (which == "decoder")


def test_page_draws_a_long_input_as_images():
    at = run_page(PAGE, "tiny-bert", enc_text=LONG, enc_head=1)
    assert_clean(at)
    assert not at.warning, [w.value for w in at.warning]
    assert any(c.value.startswith("510 tokens") for c in at.caption)
    assert not at.get("vega_lite_chart") and len(at.get("image")) == 2  # grid + the 510 x 510 matrix, both PNG
    assert any("510 × 510 drawn as an image" in str(i.proto) for i in at.get("image"))


@pytest.mark.parametrize("model, key, text, kind, words", [
    ("tiny-bert", "enc_text", "   ", "info", "empty"),
    ("tiny-bert", "enc_text", "word " * 5000, "warning", "at most 512 tokens"),
    ("tiny-bert", "enc_text", "Hello", "info", "single token"),
    ("tiny-t5", "enc_target", " ", "info", "target is empty"),
    ("tiny-t5", "enc_target", "word " * 5000, "warning", "The target has"),
])
def test_page_bad_input(model, key, text, kind, words):
    at = run_page(PAGE, model)
    at.text_area(key=key).set_value(text).run()
    assert_clean(at)
    assert any(words in e.value for e in getattr(at, kind)), [e.value for e in getattr(at, kind)]


def test_page_emoji():
    at = run_page(PAGE, "tiny-t5")
    at.text_area(key="enc_text").set_value("🙂🎉 你好，世界！ café").run()
    at.text_area(key="enc_target").set_value("😀 merci").run()
    assert_clean(at)
    assert any("fragments of a multi-byte character" in c.value for c in at.caption)
    assert at.get("vega_lite_chart")


def test_page_with_a_causal_model_offers_the_tiny_encoders():
    at = run_page(PAGE, "tiny-llama")
    assert_clean(at)
    assert any("is a causal language model" in m.value for m in at.info)
    assert not at.subheader
    at.button(key="enc_load_t5").click().run()
    assert_clean(at)
    assert at.radio(key="enc_which").value == "encoder"  # now showing tiny-t5


def test_page_runs_the_command_it_shows():
    from shown_command import run_shown_command

    at = run_page(PAGE, "tiny-t5", enc_which="cross", enc_layer=1, enc_head=3)
    assert_clean(at)
    command = next(c.value for c in at.code if c.value.startswith("python -m core encoder-attention"))
    assert "--model tiny-t5" in command and "--which cross --layer 1 --head 3" in command and "--target" in command
    out = run_shown_command(command)
    att = E.encoder_attention(load_model("tiny-t5"), at.text_area(key="enc_text").value,
                              at.text_area(key="enc_target").value)
    assert out["shapes"] == att.shapes()
    assert np.allclose(out["attention"]["matrix"], E.head_matrix(att, "cross", 1, 3).numpy(), atol=1e-5)
    assert all(e < 1e-5 for e in out["row_sum_max_error"].values())
    assert out["causal"] == {"encoder": False, "decoder": True, "cross": False}


# ---------------------------------------------------------------- every other page needs a causal LM


def _other_pages() -> list[str]:
    from ui.navigation import available_pages

    return [p.path for p in available_pages() if p.path != PAGE]


@pytest.mark.parametrize("path", _other_pages())
def test_other_pages_say_they_need_a_causal_lm(path):
    at = run_page(path, "tiny-t5")
    assert_clean(at)
    assert "needs a **causal language model**" in " ".join(m.value for m in at.info)
    # run alone (no st.navigation), the page link falls back to a plain link, with the model in its URL
    assert any("(Encoder_attention?model=tiny-t5)" in m.value for m in at.markdown)


def test_cli_refuses_an_encoder_for_a_causal_command(capsys):
    from core.cli import main

    assert main(["forward", "--model", "tiny-bert", "--text", "Hello world"]) == 2
    assert "needs a causal language model" in capsys.readouterr().err
    assert main(["encoder-attention", "--model", "tiny-bert", "--text", TEXT, "--which", "cross"]) == 2
    assert "no cross-attention" in capsys.readouterr().err
    assert main(["encoder-attention", "--model", "tiny-bert", "--text", TEXT, "--head", "-1",
                 "--which", "encoder"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "encoder" and out["causal"] == {"encoder": False}
    assert len(out["attention"]["matrix"]) == len(out["source_tokens"])
