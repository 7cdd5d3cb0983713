"""How long the Architecture page takes to read a module tree: config-only (meta device) and loaded models.

Run: .venv/bin/python bench/architecture.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import reference_config, reference_configs  # noqa: E402
from core.inspect.diagram import build_diagram, diagram_from_config, to_dot  # noqa: E402
from core.models.loading import load_model  # noqa: E402


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    diagram_from_config(reference_config("gpt2"))  # warm-up: imports, first meta build
    print(f"{'architecture':48s} {'build (s)':>10s} {'to_dot (ms)':>12s} {'blocks':>7s} {'parameters':>15s}")
    for model_id in reference_configs():
        config = reference_config(model_id)
        seconds, diagram = timed(lambda: diagram_from_config(config))
        dot_s, _ = timed(lambda: to_dot(diagram))
        print(f"{model_id + ' (config only)':48s} {seconds:10.3f} {dot_s * 1e3:12.2f} {len(diagram.blocks):7d} "
              f"{diagram.total_params:15,d}")
    for source in ("tiny-gpt2", "tiny-llama", "tiny-qwen2", "embedded"):
        lm = load_model(source)
        seconds, diagram = timed(lambda: build_diagram(lm.model))
        print(f"{source + ' (loaded)':48s} {seconds:10.3f} {timed(lambda: to_dot(diagram))[0] * 1e3:12.2f} "
              f"{len(diagram.blocks):7d} {diagram.total_params:15,d}")


if __name__ == "__main__":
    main()
