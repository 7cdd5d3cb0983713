"""Scaling laws: how loss falls with parameters N and training tokens D, and the best split of a budget C = 6ND.

Chinchilla (Hoffmann et al. 2022, approach 3, the parametric fit; loss in nats per token on MassiveText):

    L(N, D) = E + A / N^alpha + B / D^beta,   E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28

Minimising L on the line 6ND = C gives N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)),
D_opt = C / (6 N_opt). The paper's rule of thumb from approaches 1 and 2 is ~20 tokens per parameter:
C = 6 N (20 N) = 120 N^2, so N = sqrt(C / 120).

Kaplan et al. (2020) (non-embedding parameters, loss in nats per token on WebText2, a different tokenizer and
data, so the two laws' losses are not comparable with each other):

    L(N, D) = [ (N_c / N)^(alpha_N / alpha_D) + D_c / D ]^alpha_D,  N_c = 8.8e13, D_c = 5.4e13,
              alpha_N = 0.076, alpha_D = 0.095
    compute-efficient frontier: N_opt = 1.3e9 x C_PF-day^0.73 (C in PF-days = 8.64e19 FLOPs)
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.data import DATA_DIR

# Chinchilla approach 3 (Hoffmann et al. 2022, eq. 10 and the fitted values in section 3.3)
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TOKENS_PER_PARAM = 20
# Kaplan et al. 2020 (eq. 1.5 and table 5; the frontier N_opt = 1.3e9 C_min^0.73 of section 6.1, figure 14)
N_C, D_C, ALPHA_N, ALPHA_D = 8.8e13, 5.4e13, 0.076, 0.095
KAPLAN_N_COEF, KAPLAN_N_EXP = 1.3e9, 0.73
PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v}")


def chinchilla_loss(n: float, d: float) -> float:
    """Predicted loss (nats/token) of N parameters trained on D tokens, Chinchilla's parametric fit."""
    check_positive(parameters=n, tokens=d)
    return E + A / n ** ALPHA + B / d ** BETA


def kaplan_loss(n: float, d: float) -> float:
    """Kaplan et al.'s L(N, D) (nats/token on WebText2, N without embeddings)."""
    check_positive(parameters=n, tokens=d)
    return ((N_C / n) ** (ALPHA_N / ALPHA_D) + D_C / d) ** ALPHA_D


@dataclass(frozen=True)
class Allocation:
    rule: str
    compute: float  # FLOPs
    parameters: float
    tokens: float
    loss: float  # Chinchilla's L(N, D) at this point (Kaplan's own loss for the Kaplan rule)

    @property
    def tokens_per_parameter(self) -> float:
        return self.tokens / self.parameters


def chinchilla_optimal(compute: float) -> Allocation:
    """The minimum of L(N, D) on 6ND = C, in closed form (parametric fit)."""
    check_positive(compute=compute)
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    n = g * (compute / 6) ** (BETA / (ALPHA + BETA))
    d = compute / (6 * n)
    return Allocation("Chinchilla parametric fit (approach 3)", compute, n, d, chinchilla_loss(n, d))


def twenty_tokens_rule(compute: float) -> Allocation:
    """D = 20 N on 6ND = C: N = sqrt(C / 120). 5.76e23 FLOPs -> 69.3B parameters, 1.39T tokens."""
    check_positive(compute=compute)
    n = math.sqrt(compute / (6 * TOKENS_PER_PARAM))
    d = TOKENS_PER_PARAM * n
    return Allocation("~20 tokens per parameter", compute, n, d, chinchilla_loss(n, d))


def kaplan_optimal(compute: float) -> Allocation:
    """Kaplan's compute-efficient frontier N = 1.3e9 x C_PF-day^0.73, D = C / 6N; loss from Kaplan's L(N, D)."""
    check_positive(compute=compute)
    n = KAPLAN_N_COEF * (compute / PF_DAY) ** KAPLAN_N_EXP
    d = compute / (6 * n)
    return Allocation("Kaplan et al. 2020 frontier", compute, n, d, kaplan_loss(n, d))


def loss_along_budget(compute: float, points: int = 60, span: float = 3.0) -> list[dict[str, float]]:
    """Chinchilla loss for N from optimum/10^span/2 .. optimum*10^span/2 on the line 6ND = C (the IsoFLOP curve)."""
    check_positive(compute=compute)
    centre = chinchilla_optimal(compute).parameters
    rows = []
    for i in range(points):
        n = centre * 10 ** (span * (i / (points - 1) - 0.5))
        d = compute / (6 * n)
        rows.append({"parameters": n, "tokens": d, "loss": chinchilla_loss(n, d), "compute": compute})
    return rows


# ---------------------------------------------------------------- models placed on the chart


def known_models() -> list[dict]:
    """data/known_models.csv: published parameters and training tokens, with a source per row."""
    with (DATA_DIR / "known_models.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        n, d = float(r["parameters"]), float(r["tokens"])
        out.append({"name": r["name"], "year": int(r["year"]), "parameters": n, "tokens": d,
                    "compute": 6 * n * d, "tokens_per_parameter": d / n,
                    "chinchilla_loss": chinchilla_loss(n, d), "source": r["source"]})
    return out


def training_runs(root: Path | None = None) -> list[dict]:
    """Runs of the training lab (runs folder): parameters, tokens seen and the last validation loss.

    Parameters come from the exported model's config (counted on the meta device) or run.json/config.json
    fields; tokens = metrics.csv's cumulative count (all processes of a data-parallel run). A run missing any
    of these is skipped: the chart only shows what was measured."""
    from core.runs import runs_root

    root = root or runs_root()
    if not root.is_dir():
        return []
    out = []
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            point = _run_point(run)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            point = None
        if point:
            out.append(point)
    return out


def _run_point(run: Path) -> dict | None:
    config = json.loads((run / "config.json").read_text())
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        return None
    with metrics.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss") not in (None, "")]
    if not rows:
        return None
    last = rows[-1]
    step = int(float(last["step"]))
    params = _run_parameters(run, config)
    tokens = _run_tokens(run, config, last, step)
    if not (params and tokens and step):
        return None
    return {"name": f"run: {run.name}", "parameters": float(params), "tokens": float(tokens),
            "compute": 6.0 * params * tokens, "val_loss": float(last["val_loss"]), "step": step}


def _run_tokens(run: Path, config: dict, last: dict, step: int) -> int:
    """Tokens trained on up to the row `last`: metrics.csv's cumulative count (every process of a data-parallel
    run), else step x batch x block x accumulation x the processes run.json records."""
    if last.get("tokens") not in (None, ""):
        return int(float(last["tokens"]))
    try:
        processes = int(json.loads((run / "run.json").read_text()).get("processes") or 1)
    except (OSError, ValueError, TypeError):
        processes = 1
    return step * processes * int(config.get("batch_size", 0)) * int(config.get("block_size", 0)) * int(
        config.get("gradient_accumulation_steps", 1) or 1)


def _run_parameters(run: Path, config: dict) -> int | None:
    for key in ("n_params", "parameters", "num_parameters"):
        if isinstance(config.get(key), (int, float)):
            return int(config[key])
    exported = run / "model" / "config.json"
    if exported.is_file():
        from core.data import config_from_dict
        from core.models.params import count_parameters

        return int(count_parameters(config_from_dict(json.loads(exported.read_text())))["total"])
    if config.get("tokenizer") == "char" and config.get("chars"):  # the lab's own GPT, built on the meta device
        import torch

        from core.train.config import TrainConfig
        from core.train.model import GPT

        with torch.device("meta"):
            model = GPT(TrainConfig.from_dict(config).model_config(len(config["chars"])))
        return sum(p.numel() for p in model.parameters())  # a tied head is one Parameter, counted once
    return None
