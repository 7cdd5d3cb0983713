"""Beam search for one prompt, step by step, with the same bookkeeping as transformers' `generate`.

B beams run as B rows of the batch. At each step every beam proposes every token; the candidates are
ranked by their accumulated log-probability log p(y_1..y_t) and the best K = max(2, 1 + #eos) · B kept:
- a candidate that ends the sequence (EOS, or the last allowed token) is a finished hypothesis, scored
  log p / length^α (α = length_penalty), and competes for one of the B finished slots;
- the B best that do not end continue as the next beams (their rows of the KV cache are reordered).
It stops when no running beam can beat the worst finished hypothesis (transformers' default heuristic,
early_stopping=False), or at the length limit. The answer is the best finished hypothesis.

Every candidate is recorded as a node, so the page can draw the search as a tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG = -1.0e9  # the "impossible" score transformers uses, kept identical so ties break the same way


@dataclass(frozen=True)
class BeamNode:
    """One candidate at one step: `parent` is the node id of the beam it extends (-1: the prompt)."""

    id: int
    step: int
    parent: int
    token_id: int
    score: float  # accumulated log-probability of the candidate (beam score)
    status: str  # "kept" (a running beam next step), "finished" (a hypothesis), "pruned"


@dataclass(frozen=True)
class Hypothesis:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # the model's own log p of each token (no processors)
    score: float  # log p / length^α, what beam search ranks finished hypotheses by
    path: tuple[int, ...]  # node ids from the first step to the last


class BeamSearch:
    """The state of one beam group; `advance` takes the group's next-token log-probabilities."""

    def __init__(self, num_beams: int, prompt_len: int, max_new_tokens: int, eos_ids: list[int],
                 length_penalty: float = 1.0):
        self.num_beams = num_beams
        self.prompt_len = prompt_len
        self.max_length = prompt_len + max_new_tokens
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.length_penalty = length_penalty
        self.keep = max(2, 1 + len(eos_ids)) * num_beams  # K candidates per step
        self.top_mask = torch.arange(self.keep) < num_beams  # only the first B candidates may finish
        # Only beam 0 is alive at the start (all rows hold the same prompt): the others start at -1e9.
        self.running_scores = torch.full((num_beams,), NEG)
        self.running_scores[0] = 0.0
        self.running: list[tuple[list[int], list[float], list[int]]] = [([], [], []) for _ in range(num_beams)]
        self.finished_scores = torch.full((num_beams,), NEG)
        self.finished_flags = torch.zeros(num_beams, dtype=torch.bool)
        self.finished: list[Hypothesis | None] = [None] * num_beams
        self.improvable = True
        self.done = False
        self.step = 0
        self.nodes: list[BeamNode] = []

    def advance(self, log_probs: torch.Tensor, raw_log_probs: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """log_probs [beams, vocab] (after any processor) -> (parent beam of each new beam [beams],
        the token each new beam appends [beams]). `raw_log_probs` are the model's own, for the record."""
        raw = log_probs if raw_log_probs is None else raw_log_probs
        vocab = log_probs.shape[-1]
        cur_len = self.prompt_len + self.step
        accumulated = (log_probs + self.running_scores[:, None]).reshape(1, -1)  # [1, beams * vocab]
        top_scores, top_index = torch.topk(accumulated, self.keep)
        top_scores, top_index = top_scores[0], top_index[0]
        parent, token = top_index // vocab, top_index % vocab
        ends = torch.isin(token, self.eos) | (cur_len + 1 >= self.max_length)

        # the next running beams: the best B candidates that do not end here
        running_scores = top_scores + ends.to(torch.float32) * NEG
        next_index = torch.topk(running_scores, self.num_beams)[1]

        # finished hypotheses: length-normalised, only from the top B, only while improvement is possible
        finished_scores = top_scores / ((cur_len + 1 - self.prompt_len) ** self.length_penalty)
        finished_scores = finished_scores + torch.tensor(not self.improvable).to(torch.float32) * NEG
        just_finished = ends & self.top_mask
        finished_scores = finished_scores + (~just_finished) * NEG
        merged = torch.cat((self.finished_scores, finished_scores))
        best = torch.topk(merged, self.num_beams)[1]

        first_id = len(self.nodes)
        kept = set(next_index.tolist())
        candidates = []
        for j in range(self.keep):
            b, t = int(parent[j]), int(token[j])
            tokens, logps, path = self.running[b]
            node_id = first_id + j
            status = "kept" if j in kept else ("finished" if bool(just_finished[j]) else "pruned")
            self.nodes.append(BeamNode(node_id, self.step, path[-1] if path else -1, t, float(top_scores[j]), status))
            candidates.append((tokens + [t], logps + [float(raw[b, t])], path + [node_id]))

        old_finished = list(self.finished)
        self.finished = [old_finished[i] if i < self.num_beams else
                         Hypothesis(tuple(candidates[i - self.num_beams][0]), tuple(candidates[i - self.num_beams][1]),
                                    float(merged[i]), tuple(candidates[i - self.num_beams][2]))
                         for i in best.tolist()]
        self.finished_scores = merged[best]
        self.finished_flags = torch.cat((self.finished_flags, just_finished))[best]
        self.running = [candidates[j] for j in next_index.tolist()]
        self.running_scores = running_scores[next_index]
        new_parent, new_token = parent[next_index], token[next_index]

        # can a running beam still beat the worst finished one? (transformers' early-stop heuristic)
        self.step += 1
        best_possible = self.running_scores[:1] / ((self.step) ** self.length_penalty)
        worst_finished = torch.where(self.finished_flags, self.finished_scores.min(), torch.tensor(NEG))
        self.improvable = self.improvable and bool(torch.any(best_possible > worst_finished))
        self.done = not self.improvable or bool(ends.all())
        return new_parent, new_token

    def best(self) -> Hypothesis:
        hyp = self.finished[0]
        if hyp is None:  # stopped before any hypothesis finished (cannot happen at the length limit)
            tokens, logps, path = self.running[0]
            hyp = Hypothesis(tuple(tokens), tuple(logps), float(self.running_scores[0]), tuple(path))
        return hyp
