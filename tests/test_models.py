"""The one loader: specs, the embedded model and its cache, tiny models, Hub errors, memory checks."""

import json
import threading
import time

import pytest
import torch

from core.models import loading as models
from core.models import memory
from core.data import reference_configs
from core.models.loading import ModelLoadError, ModelSpec, check_fits, load_model, parse_spec


@pytest.mark.parametrize("bad,fragment", [
    ("", "Enter a model"),
    ("   ", "Enter a model"),
    ("not a valid id!!", "not a valid Hugging Face model id"),
    ("org/name/extra", "not a valid Hugging Face model id"),
    ("a" * 300, "not a valid Hugging Face model id"),
])
def test_parse_spec_rejects_bad_ids(bad, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        parse_spec(bad)


def test_parse_spec_rejects_bad_options():
    with pytest.raises(ModelLoadError, match="dtype"):
        parse_spec("embedded", dtype="float8")
    with pytest.raises(ModelLoadError, match="quantization"):
        parse_spec("embedded", quantization="2bit")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="No CUDA GPU"):
            parse_spec("embedded", device="cuda")


def test_offline_hub_id_is_a_clear_fast_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_model(parse_spec("HuggingFaceTB/SmolLM2-360M-Instruct"))
    assert time.perf_counter() - start < 5  # no 20-second retry loop


def test_model_too_big_is_refused_with_figures(tmp_path, monkeypatch):
    if memory.available_bytes("auto") > 30 * 2**30:  # a big GPU host: pretend to be this 24 GiB machine
        monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * 2**30)
    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(reference_configs()["mistralai/Mistral-7B-v0.1"]))
    with pytest.raises(ModelLoadError, match=r"needs about 27\.0 GiB") as err:
        load_model(parse_spec(str(folder)))
    assert "GiB is free" in str(err.value)


def test_check_fits_accounts_for_quantization(monkeypatch):
    from core.data import reference_config

    config = reference_config("mistralai/Mistral-7B-v0.1")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)
    with pytest.raises(ModelLoadError):
        check_fits(config, ModelSpec("x", "bfloat16"))
    need = check_fits(config, ModelSpec("x", "float32", quantization="4bit"))
    # per tensor (issue 18): 6,979,321,856 linear weights at 0.5 byte + an fp32 absmax per 64 of them; the
    # 262,410,240 others (embeddings, LM head, norms) stay in float32
    assert need == 6_979_321_856 // 2 + 4 * (6_979_321_856 // 64) + 4 * 262_410_240


@pytest.mark.embedded
def test_embedded_card(embedded):
    card = embedded.card()
    assert card["architecture"] == "LlamaForCausalLM"
    assert card["parameters"] == 134_515_008
    assert (card["layers"], card["hidden_size"], card["heads"], card["kv_heads"]) == (30, 576, 9, 3)
    assert (card["vocab_size"], card["context_length"], card["head_dim"]) == (49152, 8192, 64)
    assert card["tied_embeddings"] is True
    assert card["kind"] == "decoder-only"
    # fp32 weights plus a few buffers (RoPE inverse frequencies)
    assert 134_515_008 * 4 <= card["memory_bytes"] < 134_515_008 * 4 + 2**20
    # Shared between sessions: nothing may train it in place.
    assert not any(p.requires_grad for p in embedded.model.parameters())
    assert embedded.model.config._attn_implementation == "eager"


@pytest.mark.embedded
def test_embedded_knows_paris(embedded):
    from core.models.capture import run_forward, top_k

    cap = run_forward(embedded, "The capital of France is")
    assert top_k(embedded, cap.next_token_probs(), 1)[0]["token"] == " Paris"


@pytest.mark.embedded
def test_gguf_load_writes_a_cache_with_identical_weights(tmp_path, monkeypatch, embedded):
    monkeypatch.setenv("LLM_LAB_CACHE", str(tmp_path))
    first = load_model("embedded")
    assert first.loaded_from.startswith("GGUF")
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").is_file()
    second = load_model("embedded")
    assert second.loaded_from.startswith("safetensors cache")
    ids = torch.tensor([first.encode("Cached weights give the same logits.")], device=first.device)
    with torch.inference_mode():
        a = first.model(ids).logits
        b = second.model(ids).logits
        c = embedded.model(ids).logits
    assert torch.equal(a, b)
    assert torch.equal(a, c)
    assert not list(tmp_path.glob("*.tmp-*"))  # no half-written cache left behind


def test_tiny_models_are_seeded(tiny):
    again = load_model(tiny.spec)
    for (name, p), (_, q) in zip(tiny.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(p, q), name


def test_tiny_model_shapes(load):
    assert load("tiny-gpt2").model.transformer.wpe.weight.shape == (256, 64)
    llama = load("tiny-llama").model
    assert llama.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)  # 2 KV heads x head_dim 16
    qwen = load("tiny-qwen2").model
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None
    assert qwen.lm_head.weight is not qwen.model.embed_tokens.weight


def test_tokenizer_is_safe_across_threads(load):
    lm = load("tiny-llama")
    errors: list[BaseException] = []
    text = "Several sessions share one tokenizer. " * 50

    def work():
        try:
            for _ in range(20):
                assert lm.encode(text) == expected
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    expected = lm.encode(text)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.embedded
def test_quantized_4bit_embedded_still_predicts(embedded):
    pytest.importorskip("bitsandbytes")
    lm = load_model(parse_spec("embedded", quantization="4bit"))
    from core.models.capture import run_forward, top_k

    cap = run_forward(lm, "The capital of France is")
    assert top_k(lm, cap.next_token_probs(), 1)[0]["token"] == " Paris"
    assert lm.card()["memory_bytes"] < embedded.card()["memory_bytes"] / 2
    assert lm.card()["parameters"] == 134_515_008


def test_without_the_wheel_the_default_comes_from_the_hub(tmp_path, monkeypatch):
    # Streamlit Community Cloud installs requirements.txt only: no GGUF, so the same model from the Hub.
    monkeypatch.setenv("LLM_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: None)
    with pytest.raises(ModelLoadError, match="HuggingFaceTB/SmolLM2-135M-Instruct.*cannot be downloaded"):
        load_model("embedded")
