"""The hand-computed forward pass (core/inspect/stepwise.py), the `forward` CLI command and the Forward pass page."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch
from pagetest import assert_clean, run_page
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

from core.inspect import stepwise as sw
from core.models.capture import run_forward
from core.cli import main
from core.models.loading import LoadedModel, ModelSpec

PAGE = "pages/3_Forward_pass.py"
TEXT = "The cat sat on the mat because it was tired. Language models read text one token at a time."


def capture_for(lm, text=TEXT):
    return run_forward(lm, text, hook_modules=sw.parity_hooks(lm))


# ---------------------------------------------------------------- parity with the model


def assert_parity(lm, p: sw.Parity) -> None:
    n = lm.config.num_hidden_layers
    assert len(p.per_layer) == n and len(p.attn_weights) == n
    assert p.embeddings <= sw.PARITY_TOLERANCE
    assert max(p.per_layer) <= sw.PARITY_TOLERANCE, p.per_layer
    assert max(p.attn_weights) <= 1e-5
    assert p.final_norm <= sw.PARITY_TOLERANCE
    assert p.logits <= sw.PARITY_TOLERANCE
    assert p.chained_logits is not None and p.chained_logits <= 1e-3
    assert p.ok


def test_parity_every_layer_tiny(tiny):
    assert_parity(tiny, sw.parity(tiny, capture_for(tiny), chained=True))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chained_check_is_forward_by_hand_with_each_layers_weights_copied_once(dtype, monkeypatch):
    """parity runs the chained pass layer by layer beside the checks, sharing each layer's float32 copies:
    the same figure as forward_by_hand alone, and in bf16 one copy per parameter instead of two."""
    from core.models.loading import load_model, parse_spec

    lm = load_model(parse_spec("tiny-llama", dtype))
    cap = capture_for(lm)
    alone = sw._diff(sw.forward_by_hand(lm, cap.ids).logits, cap.logits)
    copies, params = [], {p.data_ptr() for p in lm.model.parameters()}
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self.data_ptr() in params and out.data_ptr() != self.data_ptr():
            copies.append(self.data_ptr())
        return out

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    p = sw.parity(lm, cap, chained=True)
    assert p.chained_logits == alone
    if dtype == "bfloat16":  # every parameter used by the hand pass converted exactly once per parity
        assert copies and len(copies) == len(set(copies))


@pytest.mark.embedded
def test_parity_every_layer_embedded(embedded):
    cap = capture_for(embedded, TEXT + " Emoji 🌍 and 中文 too.")
    assert_parity(embedded, sw.parity(embedded, cap, chained=True))


def test_parity_detects_a_wrong_input(load):
    """The check has teeth: feeding layer 1 the embeddings instead of hidden_states[1] is caught."""
    lm = load("tiny-llama")
    cap = capture_for(lm)
    wrong = sw.layer_by_hand(lm, 1, cap.hidden_states[0]).layer_output
    assert (wrong - sw.layer_targets(lm, cap)[1]).abs().max() > 1e-3


def test_last_hidden_state_is_final_norm(load):
    """transformers 5: hidden_states[-1] is the final-normed output, not the last block's raw output."""
    lm = load("tiny-llama")
    cap = capture_for(lm)
    raw = sw.layer_targets(lm, cap)[-1]  # the last block's output, before the final norm
    assert (raw - cap.hidden_states[-1]).abs().max() > 1e-2
    final = sw.final_by_hand(lm, raw)
    torch.testing.assert_close(final.final_norm, cap.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(final.logits, cap.logits, atol=1e-4, rtol=0)


def test_layer_targets_need_the_hook(load):
    lm = load("tiny-gpt2")
    with pytest.raises(ValueError, match="parity_hooks"):
        sw.layer_targets(lm, run_forward(lm, TEXT))


# ---------------------------------------------------------------- the pieces, against known math


@pytest.mark.embedded
def test_rope_tables_match_the_models_rotary_embedding(embedded):
    rope = sw.rope_tables(embedded, 12)
    base = embedded.model.model
    x = torch.zeros(1, 12, embedded.config.hidden_size)
    cos, sin = base.rotary_emb(x, torch.arange(12)[None])
    torch.testing.assert_close(rope.cos, cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(rope.sin, sin[0], atol=1e-6, rtol=0)
    assert rope.theta == 100000.0 and rope.inv_freq.shape == (32,)
    assert float(rope.inv_freq[0]) == 1.0  # dims (0, 32) turn one radian per position
    torch.testing.assert_close(rope.angles[5, 0], torch.tensor(5.0))


def test_rope_preserves_length_and_position_zero(load):
    lm = load("tiny-llama")
    steps = sw.layer_by_hand(lm, 0, capture_for(lm).hidden_states[0])
    torch.testing.assert_close(steps.query_rope.norm(dim=-1), steps.query_states.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps.query_rope[:, 0], steps.query_states[:, 0])  # angle 0 at position 0


@pytest.mark.embedded
def test_gqa_grouping_and_repeat_kv(embedded, load):
    a = sw.anatomy(embedded)
    assert (a.n_heads, a.n_kv_heads, a.head_dim) == (9, 3, 64)
    assert a.kv_groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert sw.anatomy(load("tiny-qwen2")).kv_groups == [[0, 1, 2, 3]]
    kv = torch.randn(3, 5, 4)
    torch.testing.assert_close(sw.repeat_kv(kv, 3), hf_repeat_kv(kv[None], 3)[0])


def test_layer_steps_shapes_mask_and_softmax(load):
    lm = load("tiny-qwen2")  # 4 heads sharing 1 KV head, head_dim 16, QKV biases
    cap = capture_for(lm)
    seq = cap.seq_len
    s = sw.layer_by_hand(lm, 1, cap.hidden_states[1])
    assert s.query_states.shape == (4, seq, 16)
    assert s.key_states.shape == s.value_states.shape == (1, seq, 16)
    assert s.key_repeated.shape == (4, seq, 16)
    assert s.scores.shape == s.attn_weights.shape == (4, seq, seq)
    assert s.mlp_gate.shape == (seq, 172) and s.layer_output.shape == (seq, 64)
    assert s.scaling == 16 ** -0.5
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    assert torch.isinf(s.mask[future]).all() and (s.mask[~future] == 0).all()
    assert (s.attn_weights[:, future] == 0).all()
    torch.testing.assert_close(s.attn_weights.sum(-1), torch.ones(4, seq))
    q_proj = lm.model.model.layers[1].self_attn.q_proj
    assert q_proj.bias is not None  # the biases are really used
    torch.testing.assert_close(s.q_proj, s.attn_norm @ q_proj.weight.detach().cpu().T + q_proj.bias.detach().cpu(),
                               atol=1e-5, rtol=0)


def test_norms_written_out(load):
    lm = load("tiny-llama")
    x = torch.randn(3, 64)
    module = lm.model.model.layers[0].input_layernorm
    weight = module.weight.detach().cpu()
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + module.variance_epsilon) * weight
    torch.testing.assert_close(sw.rms_norm(x, module), expected)
    gpt2 = load("tiny-gpt2")
    ln = gpt2.model.transformer.h[0].ln_1
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(sw.layer_norm(x, ln), (x - mean) / torch.sqrt(var + ln.eps) * ln.weight.detach().cpu()
                               + ln.bias.detach().cpu())
    stats = sw.norm_statistics(x, "RMSNorm", 1e-6)
    torch.testing.assert_close(stats["rms"], torch.sqrt((x ** 2).mean(-1) + 1e-6))


def test_anatomy_of_each_family(load):
    gpt2, llama = sw.anatomy(load("tiny-gpt2")), sw.anatomy(load("tiny-llama"))
    assert (gpt2.norm_kind, gpt2.mlp_kind, gpt2.positions) == ("LayerNorm", "GELU MLP", "learned")
    assert gpt2.intermediate_size == 256  # n_inner=None means 4 * hidden
    assert (llama.norm_kind, llama.mlp_kind, llama.positions) == ("RMSNorm", "SwiGLU", "RoPE")
    assert gpt2.layer_names == ("transformer.h.0", "transformer.h.1")
    assert llama.final_norm_name == "model.norm"


def test_unsupported_family_says_so():
    config = AutoConfig.for_model("gpt_neox", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100)
    model = AutoModelForCausalLM.from_config(config)
    lm = LoadedModel(model=model, tokenizer=None, spec=ModelSpec("some/neox"), load_seconds=0.0, loaded_from="test")
    with pytest.raises(sw.UnsupportedModel, match="gpt_neox"):
        sw.anatomy(lm)


def test_residual_norms(load):
    lm = load("tiny-gpt2")
    cap = capture_for(lm)
    norms = sw.residual_norms(lm, cap)
    assert norms.shape == (3, cap.seq_len)
    torch.testing.assert_close(norms[1], cap.hidden_states[1].norm(dim=-1))


# ---------------------------------------------------------------- CLI


def run_cli(*args: str) -> tuple[int, dict | None]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, json.loads(out.getvalue()) if code == 0 else None


def test_cli_forward_with_parity(load):
    code, result = run_cli("forward", "--model", "tiny-gpt2", "--text", "Hello world", "--top-k", "3",
                           "--check-parity", "--generate", "2")
    assert code == 0
    lm = load("tiny-gpt2")
    assert result["ids"] == lm.encode("Hello world") and result["tokens"] == ["Hello", " world"]
    probs = run_forward(lm, "Hello world").next_token_probs()
    top = torch.topk(probs, 3)
    assert [r["id"] for r in result["top_k"]] == top.indices.tolist()
    assert result["top_k"][0]["prob"] == pytest.approx(float(top.values[0]), rel=1e-5)
    assert set(result["top_k"][0]) == {"token", "id", "prob"}
    assert len(result["parity"]["per_layer"]) == 2
    assert max(result["parity"]["per_layer"]) <= 1e-4 and result["parity"]["ok"]
    assert len(result["continuation"]["ids"]) == 2


def test_cli_forward_bad_input():
    assert run_cli("forward", "--model", "tiny-llama", "--text", "   ")[0] == 2
    assert run_cli("forward", "--model", "tiny-llama", "--text", "hi", "--top-k", "0")[0] == 2
    assert run_cli("forward", "--model", "tiny-llama", "--text", "hi", "--position", "99")[0] == 2


# ---------------------------------------------------------------- the page


def sidebar_selectbox(at, label):
    return next(s for s in at.selectbox if s.label == label)


def parity_captions(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith(("✅", "❌"))]


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-qwen2",
                                   pytest.param("embedded", marks=pytest.mark.embedded)])
def test_page_runs_and_checks_parity(model, load):
    at = run_page(PAGE, model)
    assert_clean(at)
    assert at.success and "every layer" in at.success[0].value
    assert all(c.startswith("✅") for c in parity_captions(at)) and len(parity_captions(at)) >= 6
    assert not at.error
    layers = 30 if model == "embedded" else 2
    at.slider(key="fp_layer").set_value(layers - 1).run()
    assert_clean(at)
    assert any(c.startswith(f"✅ Layer {layers - 1}:") for c in parity_captions(at))
    at.slider(key="fp_head").set_value(1).run()
    at.slider(key="fp_dims").set_value(20).run()
    sidebar_selectbox(at, "Token to follow").set_value(0).run()
    at.slider(key="fp_topk").set_value(3).run()
    assert_clean(at)
    top = next(df.value for df in at.dataframe if "hand prob" in df.value.columns)
    assert len(top) == 3
    lm = load(model)
    probs = run_forward(lm, at.text_area(key="fp_text").value).next_token_probs(0)  # token 0 is followed now
    assert top["id"].tolist() == torch.topk(probs, 3).indices.tolist()
    # the hand row is sliced from the whole sequence's logits, as the model computes them: bit-for-bit equal
    assert top["hand prob"].tolist() == top["prob"].tolist()
    z = next(df.value for df in at.dataframe if "z (by hand)" in df.value.index)
    assert (z.loc["z (by hand)"] == z.loc["z (model)"]).all()  # issue 20: 1.7484 vs 1.7483 under "identical"


@pytest.mark.parametrize("text, expect", [
    ("", "info"),
    ("   \n ", "info"),
    ("a " * 10_000, "warning"),
    ("你好，世界 🌍🚀 こんにちは", None),
])
def test_page_bad_input(text, expect):
    at = run_page(PAGE, "tiny-llama", fp_text=text)
    assert_clean(at)
    if expect == "info":
        assert at.info and "empty" in at.info[0].value
    elif expect == "warning":
        assert at.warning and "only the first" in at.warning[0].value
    else:
        assert at.success


def test_page_long_text_on_learned_positions_has_no_room_to_generate(load):
    at = run_page(PAGE, "tiny-gpt2", fp_text="a " * 10_000)  # fills all 256 learned positions
    assert_clean(at)
    assert any("no more tokens fit" in i.value for i in at.info)
    text = "a" + " a" * 249  # 250 tokens: 6 positions left of 256
    assert len(load("tiny-gpt2").encode(text)) == 250
    at.text_area(key="fp_text").set_value(text).run()
    assert_clean(at)
    assert any("only 6 more tokens fit" in i.value for i in at.info)


@pytest.mark.parametrize("model,symbol", [("tiny-gpt2", r"\mathrm{GELU}(h' W_{fc}"),
                                          ("tiny-llama", r"W_{down}\big(\mathrm{SiLU}(W_{gate} h')")])
def test_page_mlp_formula_uses_the_models_activation(model, symbol):
    at = run_page(PAGE, model)
    assert any(symbol in l.value for l in at.latex)


def test_every_written_out_activation_has_its_formula():
    from ui.forward import ACTIVATION_FORMULAS, activation_formula  # the formulas live beside the page

    assert set(ACTIVATION_FORMULAS) == set(sw.ACTIVATIONS)
    assert activation_formula("relu") == (r"\mathrm{ReLU}", r"\mathrm{ReLU}(z) = \max(0, z)")
    assert "erf" in activation_formula("gelu")[1] and "tanh" in activation_formula("gelu_new")[1]
    assert activation_formula("quick_gelu")[0] == r"\mathrm{quick\_gelu}"


def test_page_keeps_sliders_in_range_when_the_model_changes():
    at = run_page(PAGE, "tiny-llama", fp_layer=25, fp_head=8)
    assert_clean(at)
    assert at.slider(key="fp_layer").value == 1 and at.slider(key="fp_head").value == 3


def test_page_on_an_unsupported_family_explains_and_still_predicts(monkeypatch):
    def refuse(_lm):
        raise sw.UnsupportedModel("The step-by-step hand computation covers GPT-2 style and Llama style models")

    monkeypatch.setattr(sw, "anatomy", refuse)
    at = run_page(PAGE, "tiny-llama")
    assert_clean(at)
    assert at.warning and "GPT-2 style and Llama style" in at.warning[0].value
    assert not at.success  # no parity claim without a hand computation
    assert any("prob" in df.value.columns for df in at.dataframe)  # top-k from the model itself


def from_config(model_type: str, **fields) -> LoadedModel:
    """A small random model of another family, speaking the embedded tokenizer."""
    from core.models.loading import embedded_tokenizer

    tokenizer = embedded_tokenizer()
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=128, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=ModelSpec(f"test-{model_type}"), load_seconds=0.0,
                       loaded_from="test")


@pytest.mark.parametrize("model_type, fields", [
    ("mistral", {"sliding_window": 5}),  # a window shorter than the text: the mask is banded
    ("qwen3", {"head_dim": 16}),  # q_norm / k_norm on each head, head_dim not hidden / heads
    ("llama", {"attention_bias": True, "mlp_bias": True, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                             "rope_theta": 500.0}}),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True, "activation_function": "relu"}),
])
def test_parity_on_other_families(model_type, fields):
    lm = from_config(model_type, **fields)
    cap = capture_for(lm)
    p = sw.parity(lm, cap, chained=True)
    assert max(p.per_layer) <= sw.PARITY_TOLERANCE and p.final_norm <= sw.PARITY_TOLERANCE, p
    assert max(p.attn_weights) <= 1e-5 and p.logits <= sw.PARITY_TOLERANCE
    if model_type == "mistral":
        mask = sw.layer_by_hand(lm, 0, cap.hidden_states[0]).mask
        assert torch.isinf(mask[10, 5]) and mask[10, 6] == 0 and torch.isinf(mask[10, 11])


def test_page_runs_the_command_it_shows():
    """The command under "How this was computed" exits 0 with the top-k and parity figures the page shows."""
    from shown_command import run_shown_command

    at = run_page(PAGE, "tiny-llama")
    assert_clean(at)
    command = next(c.value for c in at.code if c.value.startswith("python -m core forward"))
    out = run_shown_command(command)
    top = next(df.value for df in at.dataframe if "hand prob" in df.value.columns)
    assert top["id"].tolist() == [r["id"] for r in out["top_k"]]
    assert top["prob"].tolist() == pytest.approx([r["prob"] for r in out["top_k"]], abs=1e-6)
    assert f"worst max |Δ| = **{out['parity']['worst']:.2e}**" in at.success[0].value


def test_page_in_bfloat16_states_the_relative_error_and_where():
    """Issue 9: "differs by up to 1.27e+02, which is bfloat16 rounding" puzzled students."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from ui.models import SPEC_KEY

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / PAGE), default_timeout=180)
    at.session_state[SPEC_KEY] = ModelSpec("tiny-llama", dtype="bfloat16")
    at.run()
    assert_clean(at)
    banner = next(i.value for i in at.info if "runs in bfloat16" in i.value)
    assert "float32 reference" in banner and "‖Δ‖ / ‖model‖" in banner and "largest at **" in banner
    assert "%" in banner.split("differ from it by", 1)[1].split("at most", 1)[0]


def test_page_shows_markdown_tokens_literally():
    """Issue 9: token text renders literally: `**`, `$` and backticks are escaped wherever a token is written."""
    import re

    at = run_page(PAGE, "tiny-llama", fp_text="Say **bold** $x^2$ `")
    assert_clean(at)
    caption = next(c.value for c in at.caption if c.value.startswith("RMSNorm"))
    token = caption.split("following token **", 1)[1].split("** (in the sidebar", 1)[0]
    assert token.endswith("`") and not re.search(r"(?<!\\)[`$*]", token)
    for md in [m.value for m in at.markdown if m.value.startswith("Most likely after")]:
        label = md.split("Most likely after ", 1)[1].split(": **", 1)[0]
        assert not re.search(r"(?<!\\)[`$*]", label)


def test_mlp_norm_statistics_use_the_mlp_norms_epsilon():
    """The MLP norm's rms is sqrt(mean(x'^2) + eps of post_attention_layernorm), not of the attention norm."""
    from core.models.loading import load_model

    lm = load_model("tiny-llama")  # a private copy: its epsilons are changed below
    block = lm.model.get_submodule(sw.anatomy(lm).layer_names[0])
    block.input_layernorm.variance_epsilon = 1e-6
    block.post_attention_layernorm.variance_epsilon = 0.5
    cap = run_forward(lm, TEXT)
    steps = sw.layer_by_hand(lm, 0, cap.hidden_states[0])
    x = steps.hidden_after_attn
    torch.testing.assert_close(steps.extras["mlp_norm_rms"], torch.sqrt(x.pow(2).mean(-1) + 0.5))
    x0 = steps.layer_input
    torch.testing.assert_close(steps.extras["attn_norm_rms"], torch.sqrt(x0.pow(2).mean(-1) + 1e-6))


def test_page_names_the_followed_token_plainly():
    """Issue 20: the norm chart was titled "Length of 23·␣comes's residual stream"."""
    at = run_page(PAGE, "tiny-llama", fp_text="The cat comes")
    assert_clean(at)
    titles = [json.loads(c.proto.spec).get("title", "") for c in at.get("vega_lite_chart")]
    title = next(t for t in titles if "residual stream" in str(t))
    assert "'s" not in title and "·" not in title and title.startswith("Length of the residual stream at token ")
