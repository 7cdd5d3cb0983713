"""Issue 19 at a small shape: the straight safetensors loader, bf16 by default above ~1B parameters with the
parity check's stated tolerance, one shared survey per model for two pages, and bench/scale.py's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from core.data import reference_configs
from core.inspect import stepwise as sw
from core.inspect import survey
from core.inspect import weights as W
from core.models import loading
from core.models.capture import run_forward
from core.models.loading import embedded_tokenizer, load_model, parse_spec, tiny_config
from core.models.shapes import save_random_model
from pagetest import assert_clean, run_page
from tests_paths import ROOT

TEXT = "The capital of France is Paris. The capital of Italy is Rome, and the capital of Spain is"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved bf16 random models of the three tiny families (tied Llama, untied Qwen2 with biases, GPT-2)."""
    root = tmp_path_factory.mktemp("shapes")
    vocab = len(embedded_tokenizer())
    return {name: save_random_model(tiny_config(name, vocab), root / name, "bfloat16")
            for name in ("tiny-llama", "tiny-qwen2", "tiny-gpt2")}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_straight_load_equals_transformers(folders, name, dtype):
    """A bf16 folder opened in another dtype: the same tensors, buffers and logits as transformers' loader."""
    folder = folders[name]
    ours = loading.load_safetensors_folder(folder, AutoConfig.from_pretrained(folder), dtype)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()
    assert ours is not None
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()
    ids = torch.tensor([[1, 5, 300, 4000]])
    assert torch.equal(ours(ids).logits, theirs(ids).logits)
    if name == "tiny-llama":  # tied: one Parameter for the embedding and the LM head
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_straight_load_reads_converted_pieces(folders, monkeypatch):
    monkeypatch.setattr(loading, "READ_CHUNK", 1000)  # many pieces per tensor, a short last one
    folder = folders["tiny-qwen2"]
    ours = loading.load_safetensors_folder(folder, AutoConfig.from_pretrained(folder), torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_a_folder_it_cannot_read_falls_back_to_transformers(folders, tmp_path):
    folder = tmp_path / "renamed"
    folder.mkdir()
    for f in folders["tiny-llama"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "model.safetensors").rename(folder / "weights.safetensors")  # not a name it knows
    assert loading.load_safetensors_folder(folder, AutoConfig.from_pretrained(folder), torch.float32) is None


def test_load_model_uses_it_only_across_dtypes(folders):
    lm = load_model(parse_spec(str(folders["tiny-qwen2"]), "float32"))
    assert "straight" in lm.loaded_from and lm.model.dtype == torch.float32
    assert lm.card()["parameters"] == sum(p.numel() for p in lm.model.parameters())
    folder = folders["tiny-qwen2"]  # stored as asked: transformers maps the file in place
    assert loading.load_safetensors_folder(folder, AutoConfig.from_pretrained(folder), torch.bfloat16) is None
    same = load_model(parse_spec(str(folder), "bfloat16"))
    assert same.loaded_from == "local folder" and same.model.dtype == torch.bfloat16


def test_bf16_model_keeps_parity_within_the_stated_tolerance(folders):
    lm = load_model(parse_spec(str(folders["tiny-qwen2"]), "bfloat16"))
    cap = run_forward(lm, TEXT, hook_modules=sw.parity_hooks(lm))
    p = sw.parity(lm, cap)
    assert p.relative_tolerance == sw.RELATIVE_TOLERANCE["bfloat16"] == 2e-2
    assert p.ok, p.as_dict()
    assert 1e-4 < p.worst_relative[1] < p.relative_tolerance  # bf16 rounding is visible, and bounded
    assert p.worst > sw.PARITY_TOLERANCE  # the float32 bound would fail it: the tolerance must differ
    # The check can fail: a layer input off by 5 % is caught.
    cap.hidden_states[1] = cap.hidden_states[1] * 1.05
    assert not sw.parity(lm, cap).ok
    lm32 = load_model(parse_spec(str(folders["tiny-qwen2"]), "float32"))
    cap32 = run_forward(lm32, TEXT, hook_modules=sw.parity_hooks(lm32))
    p32 = sw.parity(lm32, cap32)
    assert p32.relative_tolerance is None and p32.ok and p32.worst <= sw.PARITY_TOLERANCE


def test_auto_dtype_is_bf16_above_a_billion_on_cpu(tmp_path, folders, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    big = tmp_path / "r1-1.5b"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(reference_configs()["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"]))
    small = tmp_path / "smollm"
    small.mkdir()
    (small / "config.json").write_text(json.dumps(reference_configs()["HuggingFaceTB/SmolLM2-135M-Instruct"]))
    assert loading.default_dtype(str(big)) == "bfloat16"  # 1.78B parameters
    assert loading.default_dtype(str(small)) == "float32"  # 135M
    assert loading.default_dtype("embedded") == "float32"
    assert parse_spec(str(big), "auto").dtype == "bfloat16"
    assert parse_spec(str(folders["tiny-llama"]), "auto").dtype == "float32"
    assert parse_spec(str(big), "float32").dtype == "float32"  # an explicit choice stays


def test_weights_survey_is_computed_once_for_two_pages(tmp_path, monkeypatch):
    """Weights and Parameter statistics need the same pass over every weight: one computation."""
    monkeypatch.setenv("LLM_LAB_CACHE", str(tmp_path))  # no disk cache from an earlier run
    survey.forget()
    calls = []
    real = W.compute_weight_stats

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(W, "compute_weight_stats", counting)
    assert_clean(run_page("pages/1_Architecture.py", model="tiny-qwen2"))  # a page that needs no weights
    (started,) = survey.status()  # the load started the pass in the background
    assert started["key"].startswith("tiny-qwen2|")
    deadline = time.monotonic() + 120
    while not survey.status()[0]["done"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls) == 1  # computed before any page asked for it
    first = run_page("pages/6_Weights.py", model="tiny-qwen2")
    assert_clean(first)
    second = run_page("pages/2_Parameters.py", model="tiny-qwen2")
    assert_clean(second)
    again = run_page("pages/6_Weights.py", model="tiny-qwen2")
    assert_clean(again)
    assert len(calls) == 1, len(calls)
    assert [s["done"] for s in survey.status()] == [True]


def test_survey_reports_progress_and_errors():
    model = load_model("tiny-gpt2").model
    survey.forget()
    job = survey.survey(model, "test|progress", background=False)
    assert job.progress == 1.0 and job.done_params == job.total_params == len(list(model.parameters()))
    assert job.wait_report().counts["total"] == sum(p.numel() for p in model.parameters())
    assert survey.survey(model, "test|progress") is job  # the same one, not a second pass

    class Broken(torch.nn.Module):
        def named_parameters(self, *a, **k):
            raise RuntimeError("boom")

    bad = survey.survey(Broken(), "test|broken", background=False)
    with pytest.raises(RuntimeError, match="boom"):
        bad.wait_weights()


def test_bench_runs_at_a_small_shape(tmp_path):
    """bench/scale.py's own code on a 2-layer shape: every command answers with real figures."""
    env = {**os.environ, "LLM_LAB_CACHE": str(tmp_path)}
    if (loading.embedded_cache_dir() / "tokenizer.json").is_file():  # reuse the embedded tokenizer's cache
        (tmp_path / loading.embedded_cache_dir().name).symlink_to(loading.embedded_cache_dir())
    out = subprocess.run([sys.executable, "bench/scale.py", "--shape", "tiny", "--dtype", "float32"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout
    assert "tiny-qwen2: 0.006B parameters, 0.03 GB of weights in float32" in lines
    assert "load " in lines and "straight" in lines  # a bf16 folder opened in float32
    assert "statistics " in lines and "ok True" in lines
    assert "failed" not in lines
