"""The Parameter statistics page, weight tying and weight memory (core/models/params.py additions), with real values."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from core.models.params import check_tying, count_parameters, weight_memory
from core.inspect.weights import compute_weight_stats
from pagetest import assert_clean, run_page

PAGE = "pages/2_Parameters.py"


@pytest.mark.parametrize("source,tied", [("tiny-gpt2", True), ("tiny-llama", True), ("tiny-qwen2", False)])
def test_tying_checked_two_ways(load, source, tied):
    model = load(source).model
    t = check_tying(model)
    assert t["same_storage"] is tied and t["equal_values"] is tied
    assert t["config_says_tied"] is tied
    assert t["output_name"] == "lm_head.weight"
    assert t["input_name"] in ("transformer.wte.weight", "model.embed_tokens.weight")
    assert t["shape"] == [49152, 64]


@pytest.mark.embedded
def test_tying_on_embedded_and_a_copy(embedded):
    t = check_tying(embedded.model)
    assert t["same_storage"] and t["equal_values"]
    # Equal values without shared storage: a copied lm_head (a tiny stand-in, the shared model is never touched).
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=50,
                                  tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    t = check_tying(model)
    assert not t["same_storage"] and t["equal_values"]


@pytest.mark.embedded
def test_weight_memory_counts_tensor_by_tensor(load, embedded):
    for lm in (load("tiny-qwen2"), embedded):
        total = count_parameters(lm.model)["total"]
        table = {row["format"]: row for row in weight_memory(lm.model)}
        assert table["float32"]["weights_bytes"] == 4 * total
        assert table["bfloat16"]["total_bytes"] == 2 * total
    # Embedded: bitsandbytes quantizes the linear layers only; the tied embedding (28,311,552 = 49,152 x 576)
    # and the norms stay in bfloat16, so int8 is not "1 byte per parameter" (the count this page used to show).
    linear = [m.weight for m in embedded.model.modules() if isinstance(m, torch.nn.Linear)
              and m is not embedded.model.get_output_embeddings()]
    quantized = sum(w.numel() for w in linear)
    assert total - quantized == 28_311_552 + 61 * 576
    assert table["int8"]["weights_bytes"] == quantized + 2 * (total - quantized)
    assert table["int8"]["scales_bytes"] == 4 * sum(w.shape[0] for w in linear)
    assert table["4-bit (NF4)"]["weights_bytes"] == quantized // 2 + 2 * (total - quantized)
    assert table["4-bit (NF4)"]["scales_bytes"] == 4 * sum(-(-w.numel() // 64) for w in linear)
    assert table["float32"]["weights_bytes"] == 4 * 134_515_008


def test_csv_is_one_row_per_parameter(load):
    from ui.weights import stats_frame

    lm = load("tiny-gpt2")
    frame = stats_frame(compute_weight_stats(lm.model))
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False)))
    assert len(back) == len(list(lm.model.parameters())) == 28
    row = back[back["name"] == "transformer.h.1.mlp.c_fc.weight"].iloc[0]
    weight = lm.model.transformer.h[1].mlp.c_fc.weight.detach().double()
    assert row["frobenius"] == pytest.approx(float(torch.linalg.norm(weight)), rel=1e-6)
    assert row["min"] == pytest.approx(float(weight.min()))
    assert row["near_zero_share"] == pytest.approx(float((weight.abs() < 1e-3).double().mean()))
    assert row["layer"] == 1 and row["shape"] == "64 × 256"


@pytest.mark.parametrize("source", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_page_runs_on_tiny_models(load, source):
    at = run_page(PAGE, source)
    assert_clean(at)
    counts = count_parameters(load(source).model)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == f"{counts['total'] / 1e6:,.1f} M"
    embed = counts["by_component"]["embeddings"]
    assert metrics["Embedding share"] == f"{embed / counts['total']:.1%}"
    tied = source != "tiny-qwen2"
    assert metrics["Tied embeddings"] == ("yes" if tied else "no")
    tying_text = next(m.value for m in at.markdown if "Same storage" in m.value)
    assert f"**Same storage:** {'yes' if tied else 'no'}" in tying_text
    assert f"**Equal values:** {'yes' if tied else 'no'}" in tying_text
    assert at.get("download_button")[0].proto.label == "Download the table (CSV)"
    table = at.dataframe[1].value
    assert len(table) == len(list(load(source).model.parameters()))
    assert len(at.get("vega_lite_chart")) == 3  # components, layers, across the layers

    at.selectbox(key="p_stat").set_value("near_zero_share").run()
    assert_clean(at)
    at.multiselect(key="p_kinds").set_value([]).run()
    assert_clean(at)
    assert any("at least one" in i.value for i in at.info)


@pytest.mark.embedded
def test_page_runs_on_embedded(embedded):
    at = run_page(PAGE, "embedded")
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "134.5 M"
    assert metrics["Embedding share"] == f"{49152 * 576 / 134_515_008:.1%}"
    assert metrics["Tied embeddings"] == "yes"
    memory = at.dataframe[0].value
    assert list(memory["format"]) == ["float32", "bfloat16", "int8", "4-bit (NF4)"]
    assert memory.iloc[0]["weights"] == "513.1 MiB"  # 134,515,008 x 4 bytes, binary units
    # int8: 106,168,320 linear weights x 1 byte + 28,346,688 others x 2 bytes (not 134.5 M x 1 byte)
    assert memory.iloc[2]["weights"] == "155.3 MiB"
    assert len(at.dataframe[1].value) == 272
    at.selectbox(key="p_stat").set_value("frobenius").run()
    assert_clean(at)
