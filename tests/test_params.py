"""Parameter accounting against published counts (configs from data/model_configs.json)."""

import pytest

from core.data import reference_config, reference_configs
from core.models.params import classify, count_parameters, layer_of

PUBLISHED = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
    "gpt2": 124_439_808,
    "distilgpt2": 81_912_576,
}


@pytest.mark.parametrize("model_id,expected", PUBLISHED.items())
def test_counts_match_published(model_id, expected):
    report = count_parameters(reference_config(model_id))
    assert report["total"] == expected
    assert report["tied_embeddings"] is True
    assert "lm_head" not in report["by_component"]  # tied: counted once, under the embeddings


def test_components_and_layers_add_up():
    report = count_parameters(reference_config("gpt2"))
    assert sum(report["by_component"].values()) == report["total"]
    assert report["n_layers"] == 12
    per_layer = report["per_layer"]
    # Every GPT-2 block has the same shape: 7,087,872 parameters.
    assert {row["total"] for row in per_layer} == {7_087_872}
    outside_layers = report["total"] - sum(row["total"] for row in per_layer)
    # wte + wpe + ln_f
    assert outside_layers == 50257 * 768 + 1024 * 768 + 2 * 768


def test_untied_model_counts_lm_head():
    report = count_parameters(reference_config("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"))
    assert report["tied_embeddings"] is False
    assert report["by_component"]["lm_head"] == 151936 * 1536
    assert report["total"] == 1_777_088_000


def test_every_reference_config_builds_on_meta():
    for model_id in reference_configs():
        assert count_parameters(reference_config(model_id))["total"] > 0


def test_classify_names():
    assert classify("model.layers.3.self_attn.q_proj.weight") == "attention_q"
    assert classify("model.layers.3.mlp.gate_proj.weight") == "mlp"
    assert classify("transformer.h.0.attn.c_attn.weight") == "attention_qkv"
    assert classify("transformer.h.0.attn.c_proj.weight") == "attention_o"
    assert classify("transformer.h.0.mlp.c_proj.weight") == "mlp"
    assert classify("transformer.wpe.weight") == "position_embeddings"
    assert classify("model.layers.0.post_attention_layernorm.weight") == "norms"
    assert layer_of("model.layers.17.mlp.up_proj.weight") == 17
    assert layer_of("transformer.h.4.ln_1.bias") == 4
    assert layer_of("model.norm.weight") is None


@pytest.mark.embedded
def test_loaded_embedded_matches_config_count(embedded):
    assert count_parameters(embedded.model)["total"] == PUBLISHED["HuggingFaceTB/SmolLM2-135M-Instruct"]
