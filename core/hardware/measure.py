"""This machine measured: how fast it multiplies matrices and how fast it moves memory.

Three numbers carry the hardware story:
- a plain Python triple loop: one multiply-add at a time, what a single interpreter thread can do;
- torch.matmul on the same machine: vectorised (SIMD) and spread over every core by BLAS, the same
  arithmetic thousands of times faster (on a GPU: thousands of cores, tensor cores);
- a large copy: bytes per second between memory and the cores, the limit of anything that reads more
  than it computes (decoding a token reads every weight once).

A matmul of [n, n] by [n, n] does n^3 multiply-adds = 2 n^3 FLOPs. A copy of b bytes reads b and writes b.
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Measurement:
    device: str  # "cpu" or "cuda"
    device_name: str
    threads: int
    python_loop_n: int
    python_loop_gflops: float
    matmul_n: int
    matmul_dtype: str
    matmul_gflops: float
    copy_bytes: int
    bandwidth_gbs: float  # (read + write) bytes / s / 1e9
    speedup_vs_python: float

    def as_dict(self) -> dict:
        return asdict(self)


def python_matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """C[i][j] = sum_k A[i][k] B[k][j], one multiply-add at a time."""
    n, m, p = len(a), len(b), len(b[0])
    c = [[0.0] * p for _ in range(n)]
    for i in range(n):
        for j in range(p):
            s = 0.0
            for k in range(m):
                s += a[i][k] * b[k][j]
            c[i][j] = s
    return c


def python_loop_gflops(n: int = 64) -> float:
    rng = random.Random(0)
    a = [[rng.random() for _ in range(n)] for _ in range(n)]
    b = [[rng.random() for _ in range(n)] for _ in range(n)]
    start = time.perf_counter()
    python_matmul(a, b)
    return 2 * n ** 3 / (time.perf_counter() - start) / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, device: str, repeats: int) -> float:
    """The fastest of `repeats` timed calls after one warm-up: the least disturbed by other processes."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int = 1024, device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _best_seconds(lambda: torch.matmul(a, b), device, repeats) / 1e9


def copy_bandwidth_gbs(n_bytes: int = 256 * 2**20, device: str = "cpu", repeats: int = 5) -> float:
    src = torch.ones(n_bytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), device, repeats) / 1e9


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(device: str = "cpu", matmul_n: int = 1024, loop_n: int = 64, copy_mib: int = 256) -> Measurement:
    """All three figures on `device` ("cpu", or "cuda" where present). Takes about 2-5 s on a CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is visible on this machine")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if not (16 <= matmul_n <= 8192 and 4 <= loop_n <= 200 and 1 <= copy_mib <= 4096):
        raise ValueError("sizes out of range: matmul 16..8192, loop 4..200, copy 1..4096 MiB")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    loop = python_loop_gflops(loop_n)
    mm = matmul_gflops(matmul_n, device, dtype)
    bw = copy_bandwidth_gbs(copy_mib * 2**20, device)
    name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    return Measurement(device=device, device_name=name, threads=torch.get_num_threads(),
                       python_loop_n=loop_n, python_loop_gflops=loop, matmul_n=matmul_n,
                       matmul_dtype=str(dtype).replace("torch.", ""), matmul_gflops=mm,
                       copy_bytes=copy_mib * 2**20, bandwidth_gbs=bw, speedup_vs_python=mm / loop)




def devices() -> list[str]:
    """What can be measured here: the CPU, and the GPU where CUDA sees one."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
