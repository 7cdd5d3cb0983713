"""Architecture: the diagram read from the module tree, family detection, KV cache, comparison, the page."""

from __future__ import annotations

import json

import pytest
from pagetest import assert_clean, run_page

from core.inspect.architecture import (
    architecture_summary,
    comparison_rows,
    config_from_json_text,
    detect_family,
    kv_cache_per_token,
)
from core.data import reference_config, reference_configs
from core.inspect.diagram import build_diagram, diagram_from_config, to_dot
from core.models.params import count_parameters
from ui.text import md

PAGE = "pages/1_Architecture.py"
DEEPSEEK = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHIPPED = ("gpt2", "distilgpt2", SMOL, DEEPSEEK, "Qwen/Qwen2.5-1.5B-Instruct", "mistralai/Mistral-7B-v0.1",
           "bert-base-uncased", "t5-small")


@pytest.fixture(scope="module")
def ref_diagrams():
    return {k: diagram_from_config(reference_config(k)) for k in reference_configs()}


def kinds(d):
    return [b.kind for b in d.blocks]


# ---------------------------------------------------------------- the graph of the tiny models


def test_tiny_gpt2_has_learned_positions_fused_qkv_layernorm_gelu(load):
    d = build_diagram(load("tiny-gpt2").model)
    assert d.order_source.startswith("traced")
    assert d.blocks_of("positions")[0].modules == ("transformer.wpe",)
    assert d.blocks_of("positions")[0].shapes == (("transformer.wpe.weight", (256, 64)),)
    qkv = d.blocks_of("qkv")
    assert len(qkv) == 1 and qkv[0].modules == ("transformer.h.0.attn.c_attn",)
    assert ("transformer.h.0.attn.c_attn.weight", (64, 192)) in qkv[0].shapes  # Conv1D: [in, 3 * hidden]
    assert not d.blocks_of("q") and not d.blocks_of("rope") and not d.blocks_of("gate")
    assert {b.label.split("\n")[-1] for b in d.blocks_of("norm")} == {"LayerNorm"}
    assert [b.modules[0].rsplit(".", 1)[-1] for b in d.blocks_of("up") + d.blocks_of("down")] == ["c_fc", "c_proj"]
    assert d.blocks_of("act")[0].label.startswith("GELU")
    assert d.features["heads"] == d.features["kv_heads"] == 4 and d.features["head_dim"] == 16
    assert d.stacks[0].n_layers == 2 and d.stacks[0].path == "transformer.h"


def test_tiny_llama_has_rope_swiglu_and_gqa_groups_of_two(load):
    d = build_diagram(load("tiny-llama").model)
    assert d.blocks_of("rope")[0].modules == ("model.rotary_emb",)
    assert [b.modules[0].rsplit(".", 1)[-1] for b in d.blocks_of("q") + d.blocks_of("k") + d.blocks_of("v")] == \
        ["q_proj", "k_proj", "v_proj"]
    assert [b.kind for b in d.blocks if b.group == "MLP"] == ["gate", "up", "act", "down"]
    assert d.features["mlp"].startswith("SwiGLU")
    assert (d.features["heads"], d.features["kv_heads"], d.features["gqa_group"]) == (4, 2, 2)
    core = d.blocks_of("attention")[0]
    assert "GQA: 2 query heads per KV head" in core.label and core.label.startswith("causal")
    assert d.blocks_of("k")[0].shapes == (("model.layers.0.self_attn.k_proj.weight", (32, 64)),)  # 2 KV heads x 16
    # rotary positions feed the attention scores, not the residual stream
    rope = d.blocks_of("rope")[0].id
    assert [e.dst for e in d.edges if e.src == rope] == [core.id]
    assert {b.label.split("\n")[-1] for b in d.blocks if b.kind in ("norm", "final_norm")} == {"RMSNorm"}


def test_tiny_qwen2_has_qkv_bias_one_kv_head_and_an_untied_head(load):
    lm = load("tiny-qwen2")
    d = build_diagram(lm.model)
    assert d.features["qkv_bias"] is True
    assert d.features["kv_heads"] == 1 and "(MQA)" in d.blocks_of("attention")[0].label
    head = d.blocks_of("lm_head")[0]
    assert head.tied_to is None and head.params == lm.model.lm_head.weight.numel()
    assert d.features["tied_lm_head"] is False


def test_tied_head_reuses_the_embedding_parameter(load):
    lm = load("tiny-llama")
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    d = build_diagram(lm.model)
    head, emb = d.blocks_of("lm_head")[0], d.blocks_of("embedding")[0]
    assert head.tied_to == emb.id and head.params == 0 and emb.params == lm.model.model.embed_tokens.weight.numel()
    assert any(e.src == emb.id and e.dst == head.id and e.style == "dashed" for e in d.edges)


def test_layer_order_pre_norm_residual_flow(load):
    d = build_diagram(load("tiny-llama").model)
    by_id = {b.id: b for b in d.blocks}
    nxt = {}
    for e in d.edges:
        if e.style == "solid":
            nxt.setdefault(e.src, []).append(e.dst)
    walk, node = [], d.blocks_of("embedding")[0].id
    while node in nxt:  # follow the first solid edge: the main path through one layer
        node = nxt[node][0]
        walk.append(by_id[node])
    names = [b.modules[0].rsplit(".", 1)[-1] if b.modules else b.kind for b in walk]
    assert names[:3] == ["residual", "input_layernorm", "q_proj"]
    assert names[-4:] == ["residual", "norm", "lm_head", "output"]
    assert names.index("post_attention_layernorm") > names.index("o_proj")
    assert d.features["norm_placement"] == "pre-norm"


# ---------------------------------------------------------------- parameter counts match core.models.params


def test_block_parameters_match_core_params(tiny):
    d = build_diagram(tiny.model)
    counted = count_parameters(tiny.model)
    assert d.total_params == counted["total"]
    for b in d.blocks:
        if b.stack is not None:  # layers are identical in these models
            assert b.params == b.params_per_layer * b.repeats
    attn_q = sum(b.params for b in d.blocks_of("q")) or sum(b.params for b in d.blocks_of("qkv")) // 3
    assert attn_q == counted["by_component"]["attention_q"]
    mlp = sum(b.params for b in d.blocks if b.group == "MLP")
    assert mlp == counted["by_component"]["mlp"]


@pytest.mark.parametrize("model_id", SHIPPED)
def test_reference_diagrams_count_every_parameter_once(model_id, ref_diagrams):
    d = ref_diagrams[model_id]
    assert d.order_source.startswith("traced")
    assert d.total_params == count_parameters(reference_config(model_id))["total"]
    dot = to_dot(d)
    assert dot.startswith("digraph") and dot.count("{") == dot.count("}")
    assert all(f"_{b.id} [" in dot for b in d.blocks) and dot.count(" -> ") == len(d.edges)


# ---------------------------------------------------------------- reference configs, families, config-only mode


def test_smollm2_reference_30_layers_9_3_heads_tied(ref_diagrams):
    d = ref_diagrams[SMOL]
    assert d.stacks[0].n_layers == 30
    assert (d.features["heads"], d.features["kv_heads"], d.features["gqa_group"]) == (9, 3, 3)
    assert d.features["tied_lm_head"] is True
    assert d.total_params == 134_515_008


@pytest.mark.embedded
def test_embedded_model_matches_its_config_only_diagram(embedded, ref_diagrams):
    real, meta = build_diagram(embedded.model), ref_diagrams[SMOL]
    assert [(b.kind, b.label, b.params) for b in real.blocks] == [(b.kind, b.label, b.params) for b in meta.blocks]
    assert real.total_params == count_parameters(embedded.model)["total"]


def test_families_from_config_alone():
    expected = {"gpt2": ("decoder-only", "GPT-2 style"), DEEPSEEK: ("decoder-only", "Qwen2 style"),
                SMOL: ("decoder-only", "Llama style"), "mistralai/Mistral-7B-v0.1": ("decoder-only", "Llama style"),
                "bert-base-uncased": ("encoder-only", "BERT style"), "t5-small": ("encoder-decoder", "T5 style")}
    for model_id, (kind, name) in expected.items():
        fam = detect_family(reference_config(model_id))
        assert (fam.kind, fam.name) == (kind, name)


def test_bert_is_post_norm_with_segments_and_no_kv_cache(ref_diagrams):
    d = ref_diagrams["bert-base-uncased"]
    assert d.features["norm_placement"] == "post-norm"
    assert d.blocks_of("segments") and d.blocks_of("positions")
    assert not d.blocks_of("attention")[0].label.startswith("causal")
    assert kv_cache_per_token(reference_config("bert-base-uncased"))["bytes"] is None


def test_t5_encoder_decoder_with_cross_attention_from_the_encoder(ref_diagrams):
    d = ref_diagrams["t5-small"]
    assert [s.n_layers for s in d.stacks] == [6, 6]
    enc_final = [b for b in d.blocks_of("final_norm") if b.modules == ("encoder.final_layer_norm",)][0]
    cross = [b for b in d.blocks if b.group and b.group.startswith("cross-attention")]
    cross_kv = [b.id for b in cross if b.kind in ("k", "v")]
    assert sorted(e.dst for e in d.edges if e.src == enc_final.id) == sorted(cross_kv)
    self_cores = [b for b in d.blocks_of("attention") if b.group.startswith("self")]
    assert [b.label.startswith("causal") for b in self_cores] == [False, True]  # encoder, decoder
    assert "relative position bias" in d.features["positions"]
    assert d.blocks_of("lm_head")[0].tied_to is not None


def test_fallback_order_gives_the_same_llama_layer(load):
    model = load("tiny-llama").model
    traced, named = build_diagram(model), build_diagram(model, trace=False)
    assert named.order_source == "module registration order"
    assert kinds(traced) == kinds(named)


def test_shared_model_gets_no_hooks_and_an_unchanged_config(load):
    lm = load("tiny-gpt2")
    before = lm.config.to_dict()
    build_diagram(lm.model)
    assert all(not m._forward_pre_hooks for m in lm.model.modules())
    assert lm.config.to_dict() == before


# ---------------------------------------------------------------- KV cache and comparison


def test_deepseek_kv_cache_per_token():
    cfg = reference_config(DEEPSEEK)
    kv = kv_cache_per_token(cfg, "bfloat16")
    assert kv["bytes"] == 2 * 28 * 2 * 128 * 2 == 28_672
    assert kv_cache_per_token(cfg, "float32")["bytes"] == 57_344
    assert kv_cache_per_token(reference_config(SMOL), "bfloat16")["bytes"] == 2 * 30 * 3 * 64 * 2
    assert kv_cache_per_token(reference_config("t5-small"), "bfloat16")["bytes"] == 2 * 6 * 8 * 64 * 2
    assert "sliding window of 4,096" in kv_cache_per_token(reference_config("mistralai/Mistral-7B-v0.1"))["note"]
    with pytest.raises(ValueError):
        kv_cache_per_token(cfg, "float3")


def test_kv_cache_at_full_context_honours_the_sliding_window(ref_diagrams):
    """Mistral-7B at its 32,768-token context: transformers keeps 4,095 tokens per sliding layer, not 32,768."""
    mistral = "mistralai/Mistral-7B-v0.1"
    summary = architecture_summary(ref_diagrams[mistral], reference_config(mistral), "bfloat16")
    assert summary["KV cache per token (bfloat16)"] == 131_072
    assert summary["KV cache at full context (bfloat16)"] == 131_072 * 4_095
    # a model without a window keeps every token of its context
    smol = architecture_summary(ref_diagrams[SMOL], reference_config(SMOL), "bfloat16")
    assert smol["KV cache at full context (bfloat16)"] == 2 * 30 * 3 * 64 * 2 * 8192


def test_comparison_distilgpt2_vs_deepseek(ref_diagrams):
    a = architecture_summary(ref_diagrams["distilgpt2"], reference_config("distilgpt2"), "bfloat16")
    b = architecture_summary(ref_diagrams[DEEPSEEK], reference_config(DEEPSEEK), "bfloat16")
    rows = {r[""]: r for r in comparison_rows(a, b, "A", "B")}
    assert (rows["Layers"]["A"], rows["Layers"]["B"]) == ("6", "28")
    assert (rows["KV heads"]["A"], rows["KV heads"]["B"]) == ("12", "2")
    assert rows["Parameters"]["A"] == f"{count_parameters(reference_config('distilgpt2'))['total']:,}"
    assert rows["Parameters"]["B"] == "1,777,088,000"
    assert rows["KV cache per token (bfloat16)"]["A"].startswith("18,432 B")  # 2*6*12*64*2
    assert rows["KV cache per token (bfloat16)"]["B"].startswith("28,672 B")
    assert rows["Positions"]["A"] == "learned absolute" and rows["Positions"]["B"].startswith("rotary")
    assert rows["Tied LM head"]["A"] == "yes" and rows["Tied LM head"]["B"] == "no"
    assert rows["Layers"]["B / A"] == "× 4.67"


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   \n", "empty"), ("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
    ('"llama"', "JSON object"), ('{"hidden_size": 64}', "model_type"), ('{"model_type": "nope"}', "nope"),
    ('{"model_type": "llama", "num_hidden_layers": "abc"}', "positive whole number"),
    ('{"model_type": "llama", "num_hidden_layers": 5000}', "layers"),
    ('{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3}', "multiple"),
])
def test_bad_configs_raise_readable_errors(text, message):
    with pytest.raises(ValueError, match=message):
        config_from_json_text(text)


def test_pasted_config_builds_on_meta():
    cfg = config_from_json_text(json.dumps(reference_configs()["gpt2"]))
    assert diagram_from_config(cfg).total_params == 124_439_808


def test_cli_architecture(capsys):
    from core.cli import main

    assert main(["architecture", "--reference", DEEPSEEK]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_cache_per_token"]["bytes"] == 28_672 and out["family"]["kind"] == "decoder-only"
    assert out["summary"]["Parameters"] == 1_777_088_000 and out["dot"].startswith("digraph")
    assert main(["architecture", "--reference", "nope"]) == 2
    assert "no shipped reference config" in capsys.readouterr().err


# ---------------------------------------------------------------- the page


def _spec(at):
    return at.get("graphviz_chart")[0].proto.spec


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_page_on_tiny_models(model):
    at = run_page(PAGE, model)
    assert_clean(at)
    heads, kv = {"tiny-gpt2": (4, 4), "tiny-llama": (4, 2), "tiny-qwen2": (4, 1)}[model]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == "2"
    assert metrics["Heads / KV heads"] == f"{heads} / {kv}"
    assert metrics["KV cache per token"] == f"{2 * 2 * kv * 16 * 4:,} B"
    assert "digraph" in _spec(at)
    inspect = at.selectbox(key=at.selectbox[1].key)
    assert inspect.label == "Inspect a block"
    head = next(i for i, title in enumerate(inspect.options) if title.startswith("output head"))
    inspect.select_index(head).run()
    assert_clean(at)
    assert 'penwidth=3' in _spec(at) and at.latex


@pytest.mark.embedded
def test_page_on_embedded_model():
    at = run_page(PAGE, "embedded")
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == "30" and metrics["Heads / KV heads"] == "9 / 3"
    assert metrics["KV cache per token"] == "46,080 B"  # 2 * 30 * 3 * 64 * 4


def test_page_config_only_for_every_shipped_reference():
    at = run_page(PAGE, "tiny-llama")
    at.radio(key="arch_source").set_value("A shipped reference config").run()
    assert_clean(at)
    assert set(SHIPPED) <= set(at.selectbox(key="arch_reference").options)
    for model_id in SHIPPED:
        at.selectbox(key="arch_reference").set_value(model_id).run()
        assert_clean(at)
        assert not at.error and "digraph" in _spec(at)
        assert at.subheader[0].value.startswith(md(model_id))  # escaped: a heading renders Markdown
        if model_id == DEEPSEEK:
            assert {m.label: m.value for m in at.metric}["KV cache per token"] == "28,672 B"


def test_page_bad_pasted_configs_and_offline_hub():
    at = run_page(PAGE, "tiny-gpt2")
    at.radio(key="arch_source").set_value("Paste or upload a config.json").run()
    assert_clean(at)
    assert "Paste the contents" in at.info[0].value  # nothing pasted yet
    for text, message in [("{oops", "not valid JSON"), ("[1]", "JSON object"),
                          ('{"model_type": "not_a_model"}', "not_a_model"), ("  ", None),
                          ('{"model_type": "llama", "hidden_size": 65, "num_attention_heads": 4}',
                           "hidden size (65) is not a multiple of the number of attention heads (4)")]:
        at.text_area(key="arch_paste").set_value(text).run()
        assert_clean(at)
        if message:
            assert message in at.error[0].value
        else:
            assert not at.error and "Paste the contents" in at.info[0].value
    at.text_area(key="arch_paste").set_value(json.dumps(reference_configs()["distilgpt2"])).run()
    assert_clean(at)
    assert not at.error and {m.label: m.value for m in at.metric}["Layers"] == "6"
    assert "Pasted config" in at.selectbox(key="arch_cmp_a").options  # now comparable
    at.radio(key="arch_source").set_value("A Hugging Face Hub config").run()
    at.text_input(key="arch_hub_input").set_value("gpt2")
    at.button[0].click().run()
    assert_clean(at)
    assert at.error  # offline here: a readable message, no traceback


def test_page_comparison_table():
    at = run_page(PAGE, "tiny-llama")
    table = at.dataframe[-1].value
    row = table[table[""] == "KV cache per token (bfloat16)"].iloc[0]
    assert row.iloc[1].startswith("18,432 B") and row.iloc[2].startswith("28,672 B")
    at.selectbox(key="arch_cmp_a").set_value("Loaded model: tiny-llama").run()
    assert_clean(at)
    table = at.dataframe[-1].value
    assert table[table[""] == "Layers"].iloc[0].iloc[1] == "2"


LLAMA_405B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16384,
              "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def test_page_405b_config_fits_its_metric_boxes():
    """Issue 20: "Parameters 405,853…" was cut in its box and given in M for a 405B model; the heading must
    say where the config came from (an upload is not "pasted")."""
    from ui.architecture import text_view

    text = json.dumps(LLAMA_405B)
    total = count_parameters(config_from_json_text(text))["total"]
    assert total == 405_853_388_800  # Llama 3.1 405B: the published count
    at = run_page(PAGE, "tiny-gpt2")
    at.radio(key="arch_source").set_value("Paste or upload a config.json").run()
    at.text_area(key="arch_paste").set_value(text).run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "405.9 B"
    assert all(len(v) <= 12 for v in metrics.values()), metrics  # no 13-digit figure in a fifth of the page
    assert at.subheader[0].value.startswith("pasted config \\(llama\\)")
    assert text_view(text, "uploaded llama405b.json").name == "uploaded llama405b.json (llama)"
