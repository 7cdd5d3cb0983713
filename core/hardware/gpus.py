"""The accelerator table (data/accelerators.csv): datasheet figures, one row per chip, with its source.

Compute figures are dense tensor-core TFLOPS (NVIDIA's headline figures are often "with sparsity", twice
as high). Chips without BF16 (T4, V100) have an empty `bf16_tflops`; their FP16 tensor figure stands in
when a peak is needed, and `peak_source` says so.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache

from core.data import DATA_DIR

# A bare "A100" means the 80 GB part: the one current clouds rent and the one the planner should assume.
PREFERRED = {"a100": "A100 80GB"}


@dataclass(frozen=True)
class Accelerator:
    name: str
    vendor: str
    year: int
    kind: str  # "training" (SXM flagships) | "inference" (low-power PCIe cards)
    memory_gb: float  # decimal GB, as datasheets write it
    bandwidth_gbs: float  # memory bandwidth, GB/s (decimal)
    bf16_tflops: float | None  # dense tensor TFLOPS; None: no BF16 on this chip
    fp16_tflops: float | None
    fp8_tflops: float | None
    tdp_w: float | None
    notes: str
    source: str

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 1e9)

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_gbs * 1e9

    def peak_flops(self, dtype: str = "bf16") -> float:
        """Dense tensor FLOP/s for a 16-bit (or fp8) matmul; BF16 falls back to FP16 where BF16 is absent."""
        if dtype == "fp8" and self.fp8_tflops:
            return self.fp8_tflops * 1e12
        tflops = self.bf16_tflops or self.fp16_tflops
        if not tflops:
            raise ValueError(f"{self.name} has no 16-bit tensor figure in the table")
        return tflops * 1e12

    def peak_source(self, dtype: str = "bf16") -> str:
        if dtype == "fp8" and self.fp8_tflops:
            return "FP8"
        return "BF16" if self.bf16_tflops else "FP16 (no BF16 on this chip)"


def _number(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


@lru_cache(maxsize=1)
def accelerators() -> tuple[Accelerator, ...]:
    """Every row of data/accelerators.csv, in file order (by year)."""
    with (DATA_DIR / "accelerators.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return tuple(Accelerator(
        name=r["name"], vendor=r["vendor"], year=int(r["year"]), kind=r["class"], memory_gb=float(r["memory_gb"]),
        bandwidth_gbs=float(r["bandwidth_gbs"]), bf16_tflops=_number(r["bf16_tflops"]),
        fp16_tflops=_number(r["fp16_tflops"]), fp8_tflops=_number(r["fp8_tflops"]),
        tdp_w=_number(r["tdp_w"]), notes=r["notes"], source=r["source"]) for r in rows)


def gpu_names() -> list[str]:
    return [a.name for a in accelerators()]


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_gpu(name: str) -> Accelerator:
    """Loose lookup: case- and space-insensitive; an exact name, else a unique prefix, else the preferred
    part for an ambiguous family name (`A100` -> `A100 80GB`). ValueError lists the known names."""
    key = _squash(name or "")
    table = accelerators()
    known = ", ".join(a.name for a in table)
    if not key:
        raise ValueError(f"no GPU name given; known: {known}")
    exact = [a for a in table if _squash(a.name) == key]
    if exact:
        return exact[0]
    if key in PREFERRED:
        return next(a for a in table if a.name == PREFERRED[key])
    matches = [a for a in table if _squash(a.name).startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{name!r} matches several GPUs ({', '.join(a.name for a in matches)}); be more precise")
    raise ValueError(f"unknown GPU {name!r}; known: {known}")


def table_rows() -> list[dict]:
    """The table as plain rows (for a DataFrame), compute in TFLOPS, memory in GB, bandwidth in GB/s."""
    return [{"name": a.name, "year": a.year, "class": a.kind, "memory_gb": a.memory_gb, "bandwidth_gbs": a.bandwidth_gbs,
             "bf16_tflops": a.bf16_tflops, "fp16_tflops": a.fp16_tflops, "fp8_tflops": a.fp8_tflops,
             "tdp_w": a.tdp_w, "notes": a.notes, "source": a.source} for a in accelerators()]
