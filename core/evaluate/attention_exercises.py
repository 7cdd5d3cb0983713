"""Attention by hand: exercises on the three steps of one attention head, and their worked solutions.

    score_j  = q . k_j / sqrt(d)                 how well key j matches the query
    w_j      = exp(score_j) / sum_i exp(score_i)  softmax: the scores become weights that sum to 1
    output   = sum_j w_j v_j                      the weighted sum of the values

Each exercise is plain data (the numbers given, the expected answers, a tolerance, the worked steps),
so a page can show it and check what a learner types. Random exercises are drawn from a seed, so the
same seed gives the same numbers. `model_exercise` takes its numbers from a loaded model's real
query, keys and values (after RoPE where the model uses it) for three tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from core.inspect.attention import kv_head_of
from core.models.capture import InputError
from core.models.loading import LoadedModel

KINDS = ("dot", "softmax", "weighted_sum")


class AnswerError(ValueError):
    """What the learner typed is not a number; the message says what was expected."""


@dataclass(frozen=True)
class Step:
    """One line of a worked solution: what is done, and its result."""

    text: str
    result: str


@dataclass(frozen=True)
class Exercise:
    kind: str  # dot | softmax | weighted_sum | model
    question: str  # markdown
    given: dict[str, list]  # the numbers shown to the learner, by name
    labels: tuple[str, ...]  # one per number to type
    answers: tuple[float, ...]
    tolerance: float  # absolute
    steps: tuple[Step, ...]
    seed: int | None = None
    rel_tolerance: float = 0.0


@dataclass(frozen=True)
class FieldCheck:
    label: str
    typed: str
    expected: float
    value: float | None  # None: empty or not a number
    ok: bool
    message: str


@dataclass(frozen=True)
class CheckResult:
    fields: tuple[FieldCheck, ...]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.fields)

    @property
    def complete(self) -> bool:
        """Every field holds a number (right or wrong)."""
        return all(f.value is not None for f in self.fields)


# ---------------------------------------------------------------- the three operations


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise ValueError(f"vectors of different lengths: {len(a)} and {len(b)}")
    return math.fsum(x * y for x, y in zip(a, b))


def softmax(scores: Sequence[float]) -> list[float]:
    """exp(s_j - max) / sum exp(s_i - max): subtracting the max changes nothing but avoids overflow."""
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = math.fsum(exps)
    return [e / total for e in exps]


def weighted_sum(weights: Sequence[float], values: Sequence[Sequence[float]]) -> list[float]:
    """sum_j w_j v_j, dimension by dimension."""
    return [math.fsum(w * v[i] for w, v in zip(weights, values)) for i in range(len(values[0]))]


def fmt(x: float, digits: int = 3) -> str:
    """Numbers as a learner writes them: '-1.4', '0.659' (no '-0.000')."""
    s = f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def vec(xs: Sequence[float], digits: int = 3) -> str:
    return "(" + ", ".join(fmt(x, digits) for x in xs) + ")"


# ---------------------------------------------------------------- exercises


def dot_exercise(a: Sequence[float], b: Sequence[float], seed: int | None = None) -> Exercise:
    products = [x * y for x, y in zip(a, b)]
    answer = dot(a, b)
    steps = (Step("Multiply the vectors dimension by dimension",
                  " + ".join(f"({fmt(x)} × {fmt(y)})" for x, y in zip(a, b))),
             Step("The products", " + ".join(fmt(p) for p in products)),
             Step("Add them up: the attention score (before scaling by 1/√d)", fmt(answer)))
    return Exercise("dot", "Compute the attention score of query **q** and key **k**: the dot product q · k.",
                    {"q": list(a), "k": list(b)}, ("q · k",), (answer,), 0.01, steps, seed)


def softmax_exercise(scores: Sequence[float], seed: int | None = None) -> Exercise:
    exps = [math.exp(s) for s in scores]
    total = math.fsum(exps)
    probs = softmax(scores)
    steps = (Step("Exponentiate each score", ", ".join(f"e^{fmt(s)} = {fmt(e)}" for s, e in zip(scores, exps))),
             Step("Add the exponentials", " + ".join(fmt(e) for e in exps) + f" = {fmt(total)}"),
             Step("Divide each by the sum: the weights (they add up to 1)",
                  ", ".join(f"{fmt(e)} / {fmt(total)} = {fmt(p)}" for e, p in zip(exps, probs))))
    return Exercise("softmax", "Turn the scores into attention weights with a softmax.",
                    {"scores": list(scores)}, tuple(f"weight {j + 1}" for j in range(len(scores))),
                    tuple(probs), 0.005, steps, seed)


def weighted_sum_exercise(weights: Sequence[float], values: Sequence[Sequence[float]],
                          seed: int | None = None) -> Exercise:
    out = weighted_sum(weights, values)
    steps = tuple(
        Step(f"Dimension {i + 1}: " + " + ".join(f"{fmt(w)} × {fmt(v[i])}" for w, v in zip(weights, values)),
             fmt(o)) for i, o in enumerate(out))
    return Exercise("weighted_sum", "Mix the values with the attention weights: output = Σⱼ wⱼ vⱼ.",
                    {"weights": list(weights), "values": [list(v) for v in values]},
                    tuple(f"output[{i + 1}]" for i in range(len(out))), tuple(out), 0.01, steps, seed)


def seed_examples() -> dict[str, Exercise]:
    """The first exercise of each kind: the worked examples of the lab's seed document."""
    return {
        "dot": dot_exercise((1.5, -0.5, 2.0), (0.8, 1.2, -1.0), seed=0),
        "softmax": softmax_exercise((2.0, 1.0, 0.1), seed=0),
        # one-hot values: the output copies the weights, so the first dimension is the first weight
        "weighted_sum": weighted_sum_exercise((0.66, 0.24, 0.10), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), seed=0),
    }


def random_exercise(kind: str, seed: int) -> Exercise:
    """A fresh exercise of `kind` drawn from `seed` (seed 0 is the seed document's example)."""
    if kind not in KINDS:
        raise ValueError(f"unknown exercise kind {kind!r}; choose one of {', '.join(KINDS)}")
    if seed == 0:
        return seed_examples()[kind]
    rng = random.Random(f"{kind}:{seed}")

    def tenths(lo: float, hi: float) -> float:
        return rng.randint(round(lo * 10), round(hi * 10)) / 10

    if kind == "dot":
        d = rng.choice((3, 4))
        return dot_exercise([tenths(-2, 2) for _ in range(d)], [tenths(-2, 2) for _ in range(d)], seed)
    if kind == "softmax":
        return softmax_exercise([tenths(-1, 3) for _ in range(3)], seed)
    # weights with two decimals that add up to exactly 1, values with one decimal
    cuts = sorted(rng.sample(range(5, 96), 2))
    weights = [cuts[0] / 100, (cuts[1] - cuts[0]) / 100, (100 - cuts[1]) / 100]
    values = [[tenths(-2, 2) for _ in range(2)] for _ in range(3)]
    return weighted_sum_exercise(weights, values, seed)


# ---------------------------------------------------------------- checking answers


def parse_number(text: str | None) -> float:
    """'0.659', ' -1,4 ', '1e-3' -> float; an empty or non-numeric answer raises AnswerError."""
    s = (text or "").strip().replace("−", "-")
    if not s:
        raise AnswerError("empty: type a number")
    if s.count(",") == 1 and "." not in s:
        s = s.replace(",", ".")  # a decimal comma
    try:
        x = float(s)
    except ValueError:
        raise AnswerError(f"“{text.strip()[:40]}” is not a number (write e.g. -1.4 or 0.659)") from None
    if not math.isfinite(x):
        raise AnswerError("type a finite number")
    return x


def check(exercise: Exercise, typed: Sequence[str | None]) -> CheckResult:
    """Compare each typed answer with the expected one within the exercise's tolerance."""
    fields = []
    for label, expected, text in zip(exercise.labels, exercise.answers, list(typed) + [None] * len(exercise.labels)):
        try:
            value = parse_number(text)
        except AnswerError as exc:
            fields.append(FieldCheck(label, text or "", expected, None, False, str(exc)))
            continue
        ok = math.isclose(value, expected, abs_tol=exercise.tolerance, rel_tol=exercise.rel_tolerance)
        near = abs(value - expected) < 5 * max(exercise.tolerance, exercise.rel_tolerance * abs(expected))
        message = "correct" if ok else ("close, but outside the tolerance" if near else "not quite")
        fields.append(FieldCheck(label, text or "", expected, value, ok, message))
    return CheckResult(tuple(fields))


# ---------------------------------------------------------------- the real model's Q, K, V


@dataclass
class ModelAttention:
    """One head of a real model on three tokens, query = the third token.

    q [d], keys [3, d], values [3, d]: after the projections (and RoPE for q and k where the model uses it)
    raw = keys @ q [3]; scaled = raw * scaling [3]; weights = softmax(scaled) [3]; output = weights @ values [d]
    model_weights [3]: the model's own attention weights for this head and query (eager attention)
    """

    tokens: list[str]
    layer: int
    head: int
    kv_head: int
    head_dim: int
    scaling: float
    rope: bool
    q: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    raw: torch.Tensor
    scaled: torch.Tensor
    weights: torch.Tensor
    output: torch.Tensor
    model_weights: torch.Tensor

    @property
    def max_weight_difference(self) -> float:
        """|softmax by hand - the model's weights|, largest over the three keys."""
        return float((self.weights - self.model_weights).abs().max())


def model_attention(lm: LoadedModel, text: str, layer: int, head: int) -> ModelAttention:
    """The first three tokens of `text` through `lm`; Q, K, V of `head` in `layer` from the stepwise
    forward pass (core.inspect.stepwise.layer_by_hand, which applies RoPE as the model does)."""
    from core.inspect import stepwise
    from core.models.capture import run_forward

    try:
        anatomy = stepwise.anatomy(lm)
    except stepwise.UnsupportedModel as exc:
        raise InputError(f"This exercise needs a model whose layers can be computed by hand: {exc}") from exc
    if not 0 <= layer < anatomy.n_layers:
        raise InputError(f"Layer {layer} does not exist; this model has layers 0 to {anatomy.n_layers - 1}.")
    if not 0 <= head < anatomy.n_heads:
        raise InputError(f"Head {head} does not exist; this model has heads 0 to {anatomy.n_heads - 1}.")
    cap = run_forward(lm, text, max_tokens=3)
    if cap.seq_len < 3:
        raise InputError(f"The text has {cap.seq_len} token{'s' if cap.seq_len != 1 else ''}; this exercise "
                         "needs three. Type a few more words.")
    steps = stepwise.layer_by_hand(lm, layer, cap.hidden_states[layer])
    kv = kv_head_of(head, anatomy.n_heads, anatomy.n_kv_heads)
    q = steps.query_rope[head, 2]  # [d]: the third token asks
    keys = steps.key_rope[kv, :3]  # [3, d]
    values = steps.value_states[kv, :3]  # [3, d]
    raw = keys @ q
    scaled = raw * steps.scaling
    weights = torch.softmax(scaled, dim=-1)
    return ModelAttention(tokens=cap.tokens, layer=layer, head=head, kv_head=kv, head_dim=q.shape[0],
                          scaling=steps.scaling, rope=steps.rope is not None, q=q, keys=keys, values=values,
                          raw=raw, scaled=scaled, weights=weights, output=weights @ values,
                          model_weights=cap.attentions[layer][head, 2, :3].clone())


def model_exercise(m: ModelAttention) -> Exercise:
    """Scale the real dot products, softmax them, and mix the first dimension of the values."""
    raw, scaled, weights = m.raw.tolist(), m.scaled.tolist(), m.weights.tolist()
    v0 = m.values[:, 0].tolist()
    out0 = float(m.output[0])
    scale = f"1/√{m.head_dim}" if math.isclose(m.scaling, m.head_dim ** -0.5) else fmt(m.scaling, 5)
    exps = [math.exp(s - max(scaled)) for s in scaled]
    steps = (
        Step(f"Scale each dot product by {scale} = {fmt(m.scaling, 5)}",
             ", ".join(f"{fmt(r, 4)} × {fmt(m.scaling, 5)} = {fmt(s, 4)}" for r, s in zip(raw, scaled))),
        Step("Softmax: subtract the largest score (changes nothing, keeps exp small), exponentiate",
             ", ".join(fmt(e, 4) for e in exps)),
        Step("Divide by their sum " + fmt(math.fsum(exps), 4), ", ".join(fmt(w, 4) for w in weights)),
        Step("First dimension of the output: " + " + ".join(f"{fmt(w, 4)} × {fmt(v, 3)}" for w, v in zip(weights, v0)),
             fmt(out0, 4)),
    )
    return Exercise("model", "Finish the head's computation for the third token.",
                    {"raw": raw, "values_dim0": v0},
                    ("score 1", "score 2", "score 3", "weight 1", "weight 2", "weight 3", "output[1]"),
                    (*scaled, *weights, out0), 0.001, steps, None, rel_tolerance=0.02)
