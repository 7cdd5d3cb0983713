"""Decoding strategies: how the next token is chosen from the model's distribution.

- greedy: the most likely token, every time (deterministic; tends to loop);
- beam search: keep the B most likely partial sequences (core/decode/beam.py);
- sampling: draw from softmax(filtered logits), where the filters (core/decode/filters.py) reshape or
  truncate the distribution: temperature, top-k, top-p, min-p, typical, repetition penalty.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import torch

from core.decode.filters import Filters

KINDS = ("greedy", "beam", "sample")
NAMES = ("greedy", "beam", "sample", "top_k", "top_p", "min_p", "typical")  # the CLI's --strategy
MAX_BEAMS = 8
MAX_SAMPLES = 8
# The value a named strategy uses when its own flag is not given.
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.1, "typical": 0.9, "num_beams": 3}


@dataclass(frozen=True)
class Strategy:
    name: str  # unique within one comparison, e.g. "top-p 0.9"
    kind: str  # greedy | beam | sample
    filters: Filters = field(default_factory=Filters)
    num_beams: int = 1
    samples: int = 1  # independent draws (sampling only), each with its own seed

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown strategy kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        self.filters.check()
        if self.kind == "beam" and not 2 <= self.num_beams <= MAX_BEAMS:
            raise ValueError(f"beam search needs 2 to {MAX_BEAMS} beams (got {self.num_beams}); "
                             "1 beam is greedy search")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be between 1 and {MAX_SAMPLES} (got {self.samples})")

    @property
    def rows(self) -> int:
        """Rows this strategy occupies in the batch."""
        return self.num_beams if self.kind == "beam" else (self.samples if self.kind == "sample" else 1)

    def describe(self) -> str:
        if self.kind == "greedy":
            extra = self.filters.describe() if self.filters.repetition_penalty not in (None, 1.0) else ""
            return "argmax of the logits" + (f" ({extra})" if extra else "")
        if self.kind == "beam":
            return f"{self.num_beams} beams, length penalty 1"
        return f"sample from softmax with {self.filters.describe()}"


def make(name: str, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
         min_p: float | None = None, typical: float | None = None, num_beams: int | None = None,
         repetition_penalty: float | None = None, samples: int = 1) -> Strategy:
    """A strategy by its CLI name; flags given explicitly add their filter to any sampling strategy."""
    if name not in NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(NAMES)}")
    if name == "greedy":
        return Strategy("greedy", "greedy", Filters(repetition_penalty=repetition_penalty))
    if name == "beam":
        beams = DEFAULTS["num_beams"] if num_beams is None else num_beams
        return Strategy(f"beam {beams}", "beam", Filters(repetition_penalty=repetition_penalty), num_beams=beams)
    own = {"top_k": top_k, "top_p": top_p, "min_p": min_p, "typical": typical}
    if name in own and own[name] is None:
        own[name] = DEFAULTS[name]
    f = Filters(temperature=temperature, repetition_penalty=repetition_penalty, **own)
    value = temperature if name == "sample" else own[name]
    label = {"sample": "temperature", "top_k": "top-k", "top_p": "top-p", "min_p": "min-p",
             "typical": "typical"}[name] + f" {value if value is not None else 1:g}"
    return Strategy(label, "sample", f, samples=samples)


def default_comparison(samples: int = 1) -> list[Strategy]:
    """The comparison the CLI `compare` runs: greedy, beam 3, temperature, top-k, top-p, min-p."""
    t = DEFAULTS["temperature"]
    return [make("greedy"), make("beam"), make("sample", temperature=t, samples=samples),
            make("top_k", samples=samples), make("top_p", samples=samples), make("min_p", samples=samples)]


def unique_names(strategies: list[Strategy]) -> list[Strategy]:
    """Two strategies with the same label get ' #2', ' #3' so outputs stay distinguishable."""
    seen: dict[str, int] = {}
    out = []
    for s in strategies:
        seen[s.name] = seen.get(s.name, 0) + 1
        out.append(s if seen[s.name] == 1 else replace(s, name=f"{s.name} #{seen[s.name]}"))
    return out


def row_generator(seed: int, strategy: Strategy, sample: int, device: torch.device) -> torch.Generator:
    """Each sampled row draws from its own generator, seeded from (seed, strategy, sample index): the same
    strategy gives the same text whatever else is in the comparison."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(strategy.name.encode()) * 101 + sample) % (2**63))
    return g
