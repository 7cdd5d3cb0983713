"""Weight statistics (core.inspect.weights) on the embedded model and on a random model with the
DeepSeek-R1-Distill-Qwen-1.5B architecture in bf16: time (cold = no disk cache, warm = disk / memory
cache) and resident memory beyond the model.

    .venv/bin/python bench/weight_stats.py            # both models
    .venv/bin/python bench/weight_stats.py --only embedded

Targets (issue 4): embedded <= 5 s cold, <= 0.5 s warm, <= 1 GB beyond the model;
1.5B bf16 <= 30 s cold, <= 2 GB beyond the model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.inspect.matrix import pool_matrix, spectrum  # noqa: E402
from core.inspect.weights import weight_stats  # noqa: E402

REFERENCE = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def vm(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes, from /proc (no psutil)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def touch(model: torch.nn.Module) -> None:
    """Make every weight resident (safetensors loads are memory-mapped) so the baseline is the model."""
    for p in model.parameters():
        p.detach().sum()


def random_reference_model(model_id: str, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The architecture of `model_id` with random N(0, 0.02) weights, built on meta and filled in place
    (HF's own init of 1.78B parameters on 2 cores takes minutes)."""
    from core.data import reference_config
    from core.models.params import meta_model_from_config

    config = reference_config(model_id)
    model = meta_model_from_config(config).to(dtype)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.view(-1)
            if "norm" in name:
                flat.fill_(1.0)
                continue
            for i in range(0, flat.numel(), 1 << 24):
                flat[i:i + (1 << 24)].normal_(0.0, 0.02, generator=gen)
    model.tie_weights()
    return model.eval()


def measure(label: str, model: torch.nn.Module, key: str) -> dict[str, float]:
    n = sum(p.numel() for p in model.parameters())
    touch(model)
    base = vm("VmRSS")
    peak_ok = reset_peak()
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        cold = weight_stats(model, key, cache_dir=Path(cache))
        t_cold = time.perf_counter() - t
        peak = vm("VmHWM") if peak_ok else vm("VmRSS")
        t = time.perf_counter()
        warm = weight_stats(model, key, cache_dir=Path(cache))
        t_disk = time.perf_counter() - t
        assert warm.source == "disk cache", warm.source
    memo = {key: cold}  # what st.cache_resource does for the pages
    t = time.perf_counter()
    _ = memo[key]
    t_mem = time.perf_counter() - t
    out = {"params_M": n / 1e6, "matrices": len(cold.rows), "cold_s": t_cold, "warm_disk_s": t_disk,
           "warm_memory_s": t_mem, "model_rss_GB": base / 1e9, "peak_beyond_model_GB": (peak - base) / 1e9}
    print(f"{label}: {n / 1e6:,.0f}M params, {len(cold.rows)} parameters, {cold.n_layers} layers")
    print(f"  cold (no disk cache)      {t_cold:7.2f} s")
    print(f"  warm (disk cache, safetensors)   {t_disk:7.3f} s   (includes the fingerprint of the weights)")
    print(f"  warm (memory cache)       {t_mem * 1e6:7.1f} us")
    print(f"  RSS with the model        {base / 1e9:7.2f} GB")
    print(f"  peak RSS beyond the model {(peak - base) / 1e6:7.0f} MB"
          + ("" if peak_ok else " (VmHWM could not be reset: RSS after the run)"))
    on_demand(model, cold)
    return out


def on_demand(model: torch.nn.Module, stats) -> None:
    """What the page computes for one selected matrix: the biggest layer matrix and the embedding."""
    layer_mats = [r for r in stats.rows if r["layer"] == 0 and len(r["shape"]) == 2]
    biggest = max(layer_mats, key=lambda r: r["count"])["name"]
    embedding = next(r["name"] for r in stats.rows if r["layer"] is None and len(r["shape"]) == 2)
    for name in (biggest, embedding):
        w = model.get_parameter(name)
        reset_peak()
        base = vm("VmRSS")
        t = time.perf_counter()
        s = spectrum(w)
        t_svd = time.perf_counter() - t
        t = time.perf_counter()
        pooled = pool_matrix(w)
        t_pool = time.perf_counter() - t
        print(f"  on demand, {name} {tuple(w.shape)}: spectrum {t_svd:.2f} s ({s.method.split(' (')[0]}), "
              f"heatmap {pooled.shape[0]}x{pooled.shape[1]} in {t_pool:.2f} s, "
              f"peak +{(vm('VmHWM') - base) / 1e6:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["embedded", "1.5b"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "embedded"):
        from core.models.loading import load_model

        lm = load_model("embedded")
        r = measure("embedded SmolLM2-135M-Instruct (float32)", lm.model, lm.spec.key)
        ok = r["cold_s"] <= 5 and r["warm_disk_s"] <= 0.5 and r["peak_beyond_model_GB"] <= 1
        print(f"  targets (<= 5 s cold, <= 0.5 s warm, <= 1 GB): {'met' if ok else 'NOT met'}")
        del lm
    if args.only in (None, "1.5b"):
        t = time.perf_counter()
        model = random_reference_model(REFERENCE)
        print(f"built {REFERENCE} (random, bf16) in {time.perf_counter() - t:.1f} s")
        r = measure(f"{REFERENCE} architecture, random bf16", model, f"bench-random|{REFERENCE}|bfloat16")
        ok = r["cold_s"] <= 30 and r["peak_beyond_model_GB"] <= 2
        print(f"  targets (<= 30 s, <= 2 GB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
