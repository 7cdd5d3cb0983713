"""Weight statistics (core/inspect/weights.py), the `weights` CLI command and the Weights page, with real values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from core.inspect import matrix as M
from core.inspect import weights as W
from pagetest import assert_clean, run_page

PAGE = "pages/6_Weights.py"


def numpy_stats(x: np.ndarray, threshold: float = W.NEAR_ZERO) -> dict[str, float]:
    """The textbook formulas in float64: population std, excess kurtosis m4 / m2^2 - 3."""
    x = np.asarray(x, dtype=np.float64).ravel()
    d = x - x.mean()
    m2, m4 = (d ** 2).mean(), (d ** 4).mean()
    return {"count": x.size, "mean": x.mean(), "std": math.sqrt(m2), "min": x.min(), "max": x.max(),
            "max_abs": np.abs(x).max(), "frobenius": math.sqrt((x ** 2).sum()), "kurtosis": m4 / m2 ** 2 - 3,
            "near_zero_share": (np.abs(x) < threshold).mean()}


@pytest.fixture(scope="module")
def embedded_stats(embedded):
    return W.compute_weight_stats(embedded.model)


# ---------------------------------------------------------------- one tensor


def test_stats_of_a_known_tensor():
    stats, hist = W.tensor_stats(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), (0.0, 5.0, 5))
    assert stats["count"] == 4
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["std"] == pytest.approx(math.sqrt(1.25))  # population std
    assert stats["kurtosis"] == pytest.approx(2.5625 / 1.5625 - 3)  # excess kurtosis of {1, 2, 3, 4}
    assert stats["frobenius"] == pytest.approx(math.sqrt(30))
    assert (stats["min"], stats["max"], stats["max_abs"]) == (1.0, 4.0, 4.0)
    assert stats["near_zero_share"] == 0.0
    assert hist.tolist() == [0, 1, 1, 1, 1]


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_stats_match_numpy_across_chunks(monkeypatch, chunk):
    monkeypatch.setattr(W, "CHUNK", chunk)  # 7: many chunks, a short last one
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 23, generator=g) ** 3 * 0.01  # heavy tails, some weights near zero
    stats, hist = W.tensor_stats(x, (-0.05, 0.05, 16), threshold=1e-3)
    ref = numpy_stats(x.numpy(), 1e-3)
    for key, value in ref.items():
        assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    assert hist.sum() == x.numel()  # tails beyond the range land in the edge bins
    inside = ((x > -0.05) & (x < 0.05)).sum().item()
    assert hist[1:-1].sum() <= inside <= hist.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunked_equals_one_shot(monkeypatch, dtype):
    """Issue 19: one pass in chunks gives the statistics of the whole tensor at once (bf16 / fp16 bit for
    bit: integer counts of each value; float32 up to the order of float64 additions)."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(301, 257, generator=g) ** 3 * 0.02 + 0.001).to(dtype)
    edges = (-0.05, 0.05, 40)
    monkeypatch.setattr(W, "CHUNK", x.numel())
    whole, whole_hist = W.tensor_stats(x, edges)
    monkeypatch.setattr(W, "CHUNK", 1000)  # 78 chunks, a short last one
    chunked, chunked_hist = W.tensor_stats(x, edges)
    assert chunked_hist.tolist() == whole_hist.tolist() and whole_hist.sum() == x.numel()
    for key in W.STATS:
        if dtype == torch.float32:
            # float32 sums of 1,000 vs 77,357 weights: the same to 1e-5 of the spread
            assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-5 * whole["std"]), key
        else:
            assert chunked[key] == whole[key], key
    ref = numpy_stats(x.float().numpy())  # and both are the textbook values of the stored weights
    for key, value in ref.items():
        assert whole[key] == pytest.approx(value, rel=1e-6 if dtype != torch.float32 else 1e-5,
                                           abs=1e-12 if dtype != torch.float32 else 1e-5 * ref["std"]), key
    bins = np.clip(np.floor((np.clip(x.double().numpy().ravel(), -0.05, 0.05) + 0.05) * 400), 0, 39)
    assert np.abs(np.bincount(bins.astype(int), minlength=40) - whole_hist).sum() <= 2  # float32 rounding at an edge


def test_value_counts_are_the_stored_values():
    b = torch.tensor([0.5, -0.25, 0.5, 1e-4, -1e-4, 3.0]).bfloat16()
    values, counts = W.value_counts(b)
    assert dict(zip(values.tolist(), counts.tolist())) == {
        float(v): c for v, c in zip(*torch.unique(b.float(), return_counts=True))}
    stats, _ = W.tensor_stats(b)
    assert stats["near_zero_share"] == pytest.approx(2 / 6)  # |1e-4| < 1e-3, exactly as stored
    assert (stats["min"], stats["max"]) == (-0.25, 3.0)


def test_offset_tensor_keeps_precision_and_bf16_works():
    # A norm weight: values near 1 with a tiny spread; raw moments around 0 would cancel.
    x = 1 + 1e-4 * torch.randn(5000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stats, _ = W.tensor_stats(x.float())
    ref = numpy_stats(x.float().numpy())
    assert stats["std"] == pytest.approx(ref["std"], rel=1e-3)
    assert stats["kurtosis"] == pytest.approx(ref["kurtosis"], abs=0.05)
    b = torch.randn(3000, generator=torch.Generator().manual_seed(3)).bfloat16()
    stats, _ = W.tensor_stats(b)
    assert stats["frobenius"] == pytest.approx(float(torch.linalg.norm(b.float())), rel=1e-5)


def test_constant_tensor_has_no_kurtosis():
    stats, hist = W.tensor_stats(torch.ones(10), (0.5, 1.5, 4))
    assert stats["std"] == 0 and math.isnan(stats["kurtosis"])
    assert hist.sum() == 10


# ---------------------------------------------------------------- whole models


def test_every_parameter_matches_torch(tiny):
    ws = W.compute_weight_stats(tiny.model)
    params = dict(tiny.model.named_parameters())
    assert [r["name"] for r in ws.rows] == list(params)
    for r in ws.rows:
        p = params[r["name"]].detach().double()  # float32 torch.linalg.norm of 3M weights is off by 6e-5
        assert r["count"] == p.numel()
        assert r["frobenius"] == pytest.approx(float(torch.linalg.norm(p)), rel=1e-5, abs=1e-9)
        assert r["mean"] == pytest.approx(float(p.mean()), rel=1e-4, abs=1e-7)
        assert r["std"] == pytest.approx(float(p.std(unbiased=False)), rel=1e-4, abs=1e-7)
        assert r["max_abs"] == float(p.abs().max())
        hist = ws.hist_counts[r["kind"]][r["layer"] if r["layer"] is not None else 0]
        assert hist.sum() == p.numel()
    # The [layers, kinds] table is the same numbers.
    for r in ws.rows:
        if r["layer"] is not None:
            assert ws.table["frobenius"][r["layer"], ws.kinds.index(r["kind"])] == r["frobenius"]


def test_matrix_kinds_follow_the_family(load):
    gpt2 = W.compute_weight_stats(load("tiny-gpt2").model)
    assert [W.module_name(k) for k in gpt2.matrix_kinds] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    qwen = W.compute_weight_stats(load("tiny-qwen2").model)
    assert [W.short_name(k) for k in qwen.matrix_kinds] == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                           "gate_proj", "up_proj", "down_proj"]
    assert "self_attn.q_proj.bias" in qwen.kinds  # Qwen2's QKV biases are kept, as 1-D kinds
    assert qwen.n_layers == 2 and qwen.table["std"].shape == (2, len(qwen.kinds))


@pytest.mark.embedded
def test_embedded_model_statistics(embedded, embedded_stats):
    ws = embedded_stats
    assert ws.n_layers == 30 and len(ws.rows) == 272
    assert sum(r["count"] for r in ws.rows) == 134_515_008  # tied lm_head counted once
    q = ws.row("model.layers.7.self_attn.q_proj.weight")
    p = embedded.model.get_parameter(q["name"]).detach().cpu()
    assert q["frobenius"] == pytest.approx(float(torch.linalg.norm(p.double())), rel=1e-6)
    assert q["kurtosis"] == pytest.approx(numpy_stats(p.numpy())["kurtosis"], rel=1e-4)
    for kind in ws.matrix_kinds:
        assert ws.hist_counts[kind].sum(axis=1).tolist() == [
            embedded.model.get_parameter(ws.name_of(layer, kind)).numel() for layer in range(30)]


def test_disk_cache_round_trip(load, tmp_path):
    model = load("tiny-llama").model
    cold = W.weight_stats(model, "tiny-llama|float32|auto|none", cache_dir=tmp_path)
    warm = W.weight_stats(model, "tiny-llama|float32|auto|none", cache_dir=tmp_path)
    assert (cold.source, warm.source) == ("computed", "disk cache")
    assert json.dumps(warm.rows) == json.dumps(cold.rows)  # NaN kurtosis of the norms survives too
    for k in cold.hist_edges:
        np.testing.assert_array_equal(warm.hist_counts[k], cold.hist_counts[k])
    np.testing.assert_array_equal(warm.table["std"], cold.table["std"])
    assert W.fingerprint(model) != W.fingerprint(load("tiny-qwen2").model)
    # Read back without Python's parser (numpy's .npz header is parsed with ast, unsafe beside a compiling
    # thread on CPython 3.11); a damaged file is recomputed, not an error.
    import ast

    path = W.cache_file(model, "tiny-llama|float32|auto|none", root=tmp_path)
    real_parse = ast.parse
    try:
        ast.parse = lambda *a, **k: pytest.fail("the cache was read with Python's parser")
        assert W.weight_stats(model, "tiny-llama|float32|auto|none", cache_dir=tmp_path).source == "disk cache"
    finally:
        ast.parse = real_parse
    path.write_bytes(b"not a file of statistics")
    assert W.weight_stats(model, "tiny-llama|float32|auto|none", cache_dir=tmp_path).source == "computed"


# ---------------------------------------------------------------- one matrix up close


def test_effective_rank_of_a_low_rank_matrix():
    g = torch.Generator().manual_seed(4)
    u, _ = torch.linalg.qr(torch.randn(60, 5, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 5, generator=g, dtype=torch.float64))
    w = (u @ v.T).float()  # five singular values equal to 1, the rest 0
    s = M.spectrum(w)
    assert s.singular_values[:5] == pytest.approx([1.0] * 5, abs=1e-5)
    assert s.effective_rank == pytest.approx(5.0, rel=1e-4)
    assert s.stable_rank == pytest.approx(5.0, rel=1e-4)
    assert M.effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1.0)


def test_gram_spectrum_matches_svdvals():
    w = torch.randn(300, 40, generator=torch.Generator().manual_seed(5))
    direct, gram = M.spectrum(w), M.spectrum(w, max_direct=0)
    assert "Gram" in gram.method
    np.testing.assert_allclose(gram.singular_values, direct.singular_values, rtol=1e-4)
    np.testing.assert_allclose(M.spectrum(w.T, max_direct=0).singular_values, direct.singular_values, rtol=1e-4)


def test_pooling_bounds_and_values():
    assert M.pooled_shape(49152, 576) == (285, 70)
    assert M.pooled_shape(64, 192) == (64, 192)  # small: one pixel per weight
    for rows, cols in [(49152, 576), (576, 1536), (8960, 1536), (1, 100_000)]:
        r, c = M.pooled_shape(rows, cols)
        assert r * c <= 20_000 and r <= rows and c <= cols
    # 4 x 4 blocks of a matrix that is constant on each block pool to those constants.
    blocks = torch.arange(12.0).reshape(3, 4)
    w = blocks.repeat_interleave(40, 0).repeat_interleave(50, 1)  # 120 x 200 = 24,000 cells
    out = M.pool_matrix(w, max_cells=12)
    np.testing.assert_allclose(out, blocks.numpy())
    signed = torch.tensor([[1.0, -5.0], [2.0, 0.5]]).repeat_interleave(100, 0).repeat_interleave(100, 1)
    assert M.pool_matrix(signed, max_cells=4, mode="absmax").tolist() == [[1.0, 5.0], [2.0, 0.5]]
    with pytest.raises(ValueError):
        M.pool_matrix(torch.ones(3))


# ---------------------------------------------------------------- report and CLI


def test_report_keys_by_layer_and_module(load):
    ws = W.compute_weight_stats(load("tiny-gpt2").model)
    rep = W.report(ws)
    assert set(rep["layers"]) == {"0", "1"}
    assert set(rep["layers"]["1"]) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert rep["layers"]["0"]["attn.c_attn"]["shape"] == [64, 192]
    assert "transformer.wte.weight" in rep["outside_layers"]
    full = W.report(ws, layer=1, all_parameters=True, histograms=True)
    assert "ln_1.weight" in full["layers"]["1"] and full["layers"]["1"]["ln_1.weight"]["kurtosis"] is None
    assert sum(full["histograms"]["mlp.c_fc"]["counts"]["1"]) == 64 * 256
    with pytest.raises(ValueError, match="layers 0 to 1"):
        W.report(ws, layer=2)
    with pytest.raises(ValueError, match="no matrix"):
        W.report(ws, matrix="q_proj")


def test_cli_weights_json(capsys, load):
    from core.cli import main

    model = load("tiny-llama").model
    assert main(["weights", "--model", "tiny-llama", "--json", "--no-cache"]) == 0
    out = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
    q = out["layers"]["1"]["self_attn.q_proj"]
    weight = model.model.layers[1].self_attn.q_proj.weight.detach().double()
    assert q["frobenius"] == pytest.approx(float(torch.linalg.norm(weight)), rel=1e-6)
    assert {"mean", "std", "kurtosis", "max_abs"} <= set(q)
    assert main(["weights", "--model", "tiny-llama", "--layer", "0", "--matrix", "mlp.down_proj",
                 "--spectrum"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spectrum"]["parameter"] == "model.layers.0.mlp.down_proj.weight"
    assert len(out["spectrum"]["singular_values"]) == 64


@pytest.mark.parametrize("argv,message", [
    (["--layer", "7"], "layer 7 does not exist"),
    (["--matrix", "c_attn"], "no matrix 'c_attn'"),
    (["--threshold", "0"], "--threshold must be a positive number"),
    (["--spectrum"], "--spectrum needs one matrix"),
    (["--spectrum", "--layer", "0", "--matrix", "input_layernorm.weight"], "needs a 2-D weight matrix"),
])
def test_cli_bad_input(capsys, argv, message):
    from core.cli import main

    assert main(["weights", "--model", "tiny-llama", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------- the page


def _charts(at):
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def _rows_sent(chart) -> int:
    """How many rows of data an Altair chart sends to the browser (Arrow IPC in the proto)."""
    import pyarrow as pa

    return sum(pa.ipc.open_stream(d.data.data).read_all().num_rows for d in chart.proto.datasets)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_page_runs_on_tiny_models(model, load):
    at = run_page(PAGE, model)
    assert_clean(at)
    ws = W.compute_weight_stats(load(model).model)
    # One line chart + one histogram heatmap per matrix kind; the heatmap tab is open, the SVD not run.
    assert len(_charts(at)) == 1 + len(ws.matrix_kinds)
    first = ws.row(ws.name_of(0, ws.matrix_kinds[0]))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frobenius norm"] == f"{first['frobenius']:.4g}"
    assert "Full rank" not in metrics
    assert len(at.get("image")) == 1

    at.session_state["w_tab"] = "Singular values"  # the user opens the spectrum tab: computed on demand
    at.run()
    assert_clean(at)
    assert len(_charts(at)) == 1 + len(ws.matrix_kinds) + 1 and not at.get("image")
    spectrum = M.spectrum(load(model).model.get_parameter(ws.name_of(0, ws.matrix_kinds[0])))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Full rank"] == str(min(first["shape"]))
    assert metrics["Effective rank"] == f"{spectrum.effective_rank:.1f}"
    at.session_state["w_tab"] = "Heatmap"

    at.selectbox(key="w_stat").set_value("kurtosis").run()
    at.select_slider(key="w_layer").set_value(1).run()
    at.radio(key="w_pool").set_value("absmax").run()
    assert_clean(at)
    last = ws.row(ws.name_of(1, ws.matrix_kinds[0]))
    assert {m.label: m.value for m in at.metric}["Max |w|"] == f"{last['max_abs']:.4g}"

    at.multiselect(key="w_kinds").set_value([]).run()
    assert_clean(at)
    assert any("at least one" in i.value for i in at.info)


@pytest.mark.embedded
def test_page_embedded_and_embedding_matrix(embedded, embedded_stats):
    at = run_page(PAGE, "embedded")
    assert_clean(at)
    kurt = embedded_stats.row("model.layers.0.self_attn.q_proj.weight")["kurtosis"]
    assert {m.label: m.value for m in at.metric}["Excess kurtosis"] == f"{kurt:.3g}"
    at.selectbox(key="w_matrix").set_value("model.embed_tokens.weight").run()
    assert_clean(at)
    assert any("285 × 70" in c.value for c in at.caption)  # the 49152 x 576 embedding, pooled
    at.session_state["w_tab"] = "Singular values"
    at.run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Full rank"] == "576"
    charts = at.get("vega_lite_chart")
    assert _rows_sent(charts[0]) == 30 * 7  # layers x kinds, never one row per weight
    assert _rows_sent(charts[1]) == 30 * 80  # q_proj histogram: layers x bins


def test_page_survives_a_model_change():
    from core.models.loading import ModelSpec
    from ui.models import SPEC_KEY

    at = run_page(PAGE, "tiny-gpt2")
    at.selectbox(key="w_matrix").set_value("mlp.c_fc.weight").run()
    at.multiselect(key="w_kinds").set_value(["attn.c_proj.weight"]).run()
    at.session_state[SPEC_KEY] = ModelSpec("tiny-qwen2")
    at.run()
    assert_clean(at)
    assert not at.info  # the GPT-2 choices were dropped, the Qwen2 defaults apply
    assert at.selectbox(key="w_matrix").value == "self_attn.q_proj.weight"


def test_parameters_without_values_are_skipped(load):
    from core.models.params import meta_model_from_config

    meta = meta_model_from_config(load("tiny-llama").config)
    ws = W.compute_weight_stats(meta)
    assert ws.rows == [] and len(ws.skipped) == len(list(meta.parameters()))
    assert W.report(ws)["layers"] == {}


# ---------------------------------------------------------------- 8-bit weights, dequantized


def test_8bit_weights_are_dequantized_and_match_the_models_own_matmul(load, tmp_path):
    """Issue 20: an 8-bit model showed "parameters hold no values here" and `weights --quantization 8bit` gave
    "layers": {}. LLM.int8 stores int8 codes CB and one scale SCB per output row: w = CB * SCB / 127. The
    dequantized matrix must be the original within one code step per row, give the model's own 8-bit
    matmul, and every linear weight must have statistics."""
    pytest.importorskip("bitsandbytes")
    from core.models.dequantize import float_values, quantization_of
    from core.models.loading import ModelSpec, load_model

    fp32 = load("tiny-llama")
    fp32.model.save_pretrained(tmp_path)
    fp32.tokenizer.save_pretrained(tmp_path)
    q8 = load_model(ModelSpec(str(tmp_path), quantization="8bit"))
    name = "model.layers.1.self_attn.q_proj"
    layer = q8.model.get_submodule(name)
    assert quantization_of(layer.weight) == "int8" and layer.weight.dtype == torch.int8
    w = float_values(layer.weight)
    w_ref = fp32.model.get_submodule(name).weight.detach().float()
    step = w_ref.abs().amax(dim=1, keepdim=True) / 127  # one code step per output row
    err = (w - w_ref).abs()
    assert (err <= step).all() and err.mean() < step.mean() / 3  # rounding (after an fp16 cast on the way in)
    x = torch.randn(4, w.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y_model = layer(x).float()  # bitsandbytes' own int8 matmul (it quantizes x per row too)
    y_ours = x @ w.T
    assert torch.allclose(y_ours, y_model, rtol=0.05, atol=0.02 * y_model.abs().max())
    stats = W.compute_weight_stats(q8.model)
    assert not [s for s in stats.skipped if s.endswith("proj.weight")]  # after a forward pass too (SCB moved)
    assert layer.weight.SCB is None and layer.state.SCB is not None
    assert torch.equal(W.matrix(q8.model, f"{name}.weight"), w)
    row = stats.row(f"{name}.weight")
    assert row["dtype"] == "int8 (dequantized)" and row["max_abs"] == pytest.approx(float(w.abs().max()))
    report = W.report(stats)
    assert report["layers"] and len(report["layers"]) == fp32.config.num_hidden_layers
