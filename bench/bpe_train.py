"""Byte-pair encoding training time on Tiny Shakespeare, and nearest-neighbour search time on the embedded model.

Target: a few hundred merges on the page's default text (100,000 characters) in well under a few seconds on
a 2-core CPU; one neighbour query over the 49,152-row embedding matrix in tens of milliseconds.

    .venv/bin/python bench/bpe_train.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.inspect import bpe  # noqa: E402
from core.inspect import embeddings as emb  # noqa: E402
from core.data import tiny_shakespeare  # noqa: E402
from core.models.loading import load_model  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    text = tiny_shakespeare()
    print("BPE training (characters base; seconds, best of 3)")
    for n_chars, merges in ((100_000, 250), (100_000, 1000), (len(text), 1000), (len(text), 3000)):
        sample = text[:n_chars]
        base = bpe.corpus_summary(sample)["base_size"]
        seconds = best_of(lambda: bpe.train_bpe(sample, base + merges))
        print(f"  {n_chars:>9,} chars  {merges:>5,} merges  {seconds:6.2f} s")
    sample = text[:100_000]
    seconds = best_of(lambda: bpe.train_bpe(sample, 257 + 250, "bytes"))
    print(f"  {100_000:>9,} chars  {250:>5,} merges  {seconds:6.2f} s  (bytes base)")

    lm = load_model("embedded")
    norms = emb.row_norms(lm)
    tid = lm.encode(" king")[0]
    print(f"row norms of W_E {tuple(emb.embedding_matrix(lm).shape)}: {best_of(lambda: emb.row_norms(lm)) * 1e3:.1f} ms")
    print(f"10 nearest neighbours (cached norms): "
          f"{best_of(lambda: emb.nearest_neighbours(lm, tid, 10, norms), 5) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
