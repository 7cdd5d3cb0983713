"""Circuits on the embedded model: the 270-head activation patching (issue 17 target: <= 15 s on 2 CPU cores),
resid and MLP patching, DLA, head roles and the contribution graph; prints figures, asserts nothing."""

from __future__ import annotations

import os
import sys
import time

import _util  # noqa: F401  (puts the project root on sys.path)
import torch

from core.circuits import dla, graph, head_roles, patching
from core.models.loading import load_model


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    lm = load_model(sys.argv[1] if len(sys.argv) > 1 else "embedded")
    print(f"model {lm.spec.label} · torch threads {torch.get_num_threads()} · cpus {os.cpu_count()} · "
          f"device {lm.device}")
    clean, corrupt, target, contrast = patching.PRESETS["Eiffel Tower / Colosseum"]
    patching.activation_patching(lm, clean, corrupt, target, contrast, "mlp")  # warm-up
    print(f"load average before: {os.getloadavg()[0]:.1f} (figures below are wall time; cpu = this process's "
          "user+system seconds, which a machine shared with other work inflates less)")
    for what in ("heads", "heads", "resid", "mlp"):
        cpu = time.process_time()
        r = patching.activation_patching(lm, clean, corrupt, target, contrast, what)
        cpu = time.process_time() - cpu
        print(f"patch {what:5s}: {r.runs} runs on {len(r.tokens_clean)} tokens in {r.seconds:.2f} s, cpu {cpu:.1f} s, "
              f"load {os.getloadavg()[0]:.1f} "
              f"(clean diff {r.clean_diff:+.3f}, corrupt diff {r.corrupt_diff:+.3f}, "
              f"max restored {float(r.restored.max()):.3f})")
    for bs in (16, 64):
        r = patching.activation_patching(lm, clean, corrupt, target, contrast, "heads", batch_size=bs)
        print(f"patch heads, batch {bs}: {r.seconds:.2f} s")
    for text in (clean, "When Mary and John went to the store, John gave a drink to"):
        a, s = timed(dla.direct_logit_attribution, lm, text)
        top = ", ".join(f"{n} {v:+.2f}" for n, v in a.top(6))
        print(f"dla {text!r}: target {lm.token_strings([a.target_id])[0]!r} logit {a.logit:.3f}, "
              f"sum {a.total:.3f}, rel err {a.relative_error:.1e}, {s:.2f} s; top: {top}")
    for role in head_roles.ROLES:
        r, s = timed(head_roles.head_roles, lm, role)
        print(f"heads {role}: top {[(l, h, round(v, 3)) for l, h, v in r.top(5)]} ({s:.2f} s)")
    g, s = timed(graph.contribution_graph, lm, clean)
    print(f"graph: {len(g.tokens)} tokens, {len(g.edges(0.04))} routes >= 0.04, split error "
          f"{g.reconstruction_error:.1e}, {s:.2f} s")


if __name__ == "__main__":
    main()
