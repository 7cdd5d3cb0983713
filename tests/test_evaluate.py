"""Evaluation: sliding-window perplexity, KL between models, multiple-choice scoring, the CLI, the page."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.cli import main
from core.jobs import REGISTRY
from core.evaluate import divergence as D
from core.evaluate import multiple_choice as MC
from core.evaluate.perplexity import check_window, perplexity, plan_windows, text_ids, window_nll
from core.models.capture import InputError
from pagetest import assert_clean, run_page

TEXT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp. Ships passing in the "
        "night saw the beam and knew the rocks were near. One winter the storm was so strong that the keeper")


def model_loss(lm, ids: list[int]) -> float:
    x = torch.tensor([ids])
    with torch.inference_mode():
        return float(lm.model(x, labels=x).loss)


def test_whole_text_in_one_window_equals_the_models_own_loss(tiny):
    result = perplexity(tiny, TEXT, window=256, stride=256)
    assert len(result.windows) == 1 and result.scored_tokens == len(result.ids) - 1
    assert math.isclose(result.ppl, math.exp(model_loss(tiny, result.ids)), rel_tol=1e-5)


def test_disjoint_windows_equal_the_token_weighted_mean_of_window_losses(load):
    lm = load("tiny-llama")
    window = 10
    result = perplexity(lm, TEXT, window=window, stride=window)
    n = len(result.ids)
    losses, counts = [], []
    for start in range(0, n, window):
        chunk = result.ids[start:start + window]
        if len(chunk) >= 2:
            losses.append(model_loss(lm, chunk))
            counts.append(len(chunk) - 1)
    expected = sum(l * c for l, c in zip(losses, counts)) / sum(counts)
    assert result.scored_tokens == sum(counts)
    assert math.isclose(result.mean_nll, expected, rel_tol=1e-5)


def test_sliding_windows_score_every_token_once_with_bounded_context(load):
    lm = load("tiny-qwen2")
    result = perplexity(lm, TEXT, window=12, stride=5)
    n = len(result.ids)
    assert result.scored_tokens == n - 1 and math.isnan(result.token_nll[0])
    assert int(result.context.max()) <= 11 and int(result.context[1]) == 1
    # each window scores what the one before did not reach; together they cover 1..n-1 exactly once
    covered = [t for w in result.windows for t in range(w.score_start, w.end)]
    assert covered == list(range(1, n))
    # token t of the last window: its NLL is the model's on exactly that window
    w = result.windows[-1]
    own = window_nll(lm, result.ids[w.start:w.end])
    assert torch.allclose(result.token_nll[w.score_start:w.end], own[w.score_start - w.start - 1:], atol=1e-5)


def test_plan_windows_follows_the_hf_loop():
    assert [(w.start, w.end, w.score_start) for w in plan_windows(10, 4, 2)] == [
        (0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert [(w.start, w.end, w.score_start) for w in plan_windows(7, 3, 3)] == [(0, 3, 1), (3, 6, 4)]


@pytest.mark.parametrize("n, window, stride, words", [
    (1, 8, 4, "at least two"), (10, 1, 1, "at least 2 tokens"), (10, 8, 0, "positive"),
    (10, 8, -3, "positive"), (10, 4, 5, "larger than the window"), (10, 600, 10, "context")])
def test_bad_window_numbers_are_clear(n, window, stride, words):
    with pytest.raises(InputError, match=words):
        check_window(n, window, stride, context=512)


def test_short_and_empty_text(load):
    lm = load("tiny-llama")
    with pytest.raises(ValueError, match="at least two"):
        perplexity(lm, "Hi", window=8, stride=4)
    with pytest.raises(ValueError, match="empty"):
        perplexity(lm, "   ", window=8, stride=4)


# ---------------------------------------------------------------- KL


def test_kl_matches_the_definition_and_is_zero_for_the_same_model(load):
    p, q = load("tiny-llama"), load("tiny-qwen2")
    result = D.kl_on_text(p, q, TEXT)
    ids = torch.tensor([result.ids])
    with torch.inference_mode():
        lp = torch.log_softmax(p.model(ids).logits[0].float(), -1)
        lq = torch.log_softmax(q.model(ids).logits[0].float(), -1)
    expected = (lp.exp() * (lp - lq)).sum(-1)
    assert torch.allclose(result.per_position, expected, atol=1e-6)
    assert result.top1_agreement == (lp.argmax(-1) == lq.argmax(-1)).float().mean().item()
    same = D.kl_on_text(p, p, TEXT)
    assert same.mean == 0.0 and same.top1_agreement == 1.0


def test_kl_refuses_different_vocabularies(load):
    p = load("tiny-llama")

    class Other:  # a model whose output layer is a different size: another tokenizer
        name = "other"
        model = torch.nn.Module()
    Other.model.get_output_embeddings = lambda: torch.nn.Linear(4, 100)
    with pytest.raises(InputError, match="vocabularies differ"):
        D.next_token_kl(p, Other, [1, 2, 3])


def test_kl_refuses_a_different_tokenizer_of_the_same_size(load):
    import copy

    p = load("tiny-llama")
    q = copy.copy(p)
    q.tokenizer = copy.deepcopy(p.tokenizer)
    q.tokenizer.add_tokens(["<a-token-only-q-has>"])  # vocab dicts now differ
    assert D.same_tokenizer(p, q) is not None


def test_kl_of_bf16_against_fp32_is_small(load):
    from core.models.loading import ModelSpec, load_model

    p = load("tiny-llama")
    q = load_model(ModelSpec("tiny-llama", dtype="bfloat16"))
    result = D.kl_on_text(p, q, TEXT)
    assert 0 < result.mean < 1e-3 and result.top1_agreement > 0.8


# ---------------------------------------------------------------- multiple choice


def test_items_ship_balanced():
    items = MC.load_items()
    assert 20 <= len(items) <= 30 and all(len(i.endings) == 4 for i in items)
    assert sorted({sum(i.label == k for i in items) for k in range(4)}) == [len(items) // 4]


def test_ending_log_likelihood_is_the_models_own_log_softmax(tiny):
    item = MC.load_items()[2]
    summed, counts = MC.ending_log_likelihoods(tiny, item.context, item.endings)
    for ending, s, n in zip(item.endings, summed, counts):
        ctx, end = MC.encode_pair(tiny, item.context, ending)
        ids = torch.tensor([ctx + end])
        with torch.inference_mode():
            logp = torch.log_softmax(tiny.model(ids).logits[0].float(), -1)
        own = sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(end))
        assert n == len(end) and math.isclose(s, own, rel_tol=1e-5, abs_tol=1e-4)


def test_accuracy_counts_picks(load):
    result = MC.score_items(load("tiny-gpt2"), MC.load_items()[:4])
    assert result.chance == 0.25
    assert result.accuracy_summed == sum(s.pick_summed == s.item.label for s in result.scores) / 4
    s = result.scores[0]
    assert s.normalised == [a / b for a, b in zip(s.summed, s.n_tokens)]
    assert s.summed[s.pick_summed] == max(s.summed)


@pytest.mark.embedded
def test_embedded_model_beats_chance_with_length_normalised_scoring(embedded):
    result = MC.score_items(embedded)
    print(f"embedded MC accuracy: summed {result.accuracy_summed:.3f}, "
          f"normalised {result.accuracy_normalised:.3f}, chance {result.chance:.2f}")
    assert result.accuracy_normalised > 0.5  # measured 16/24 = 0.667 (summed 10/24 = 0.417)


# ---------------------------------------------------------------- CLI and page


def test_cli_commands(capsys):
    assert main(["perplexity", "--model", "tiny-llama", "--text", TEXT, "--window", "16", "--stride", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scored_tokens"] == out["total_tokens"] - 1 and out["windows"][1]["start"] == 8
    assert main(["kl", "--model", "tiny-llama", "--other", "tiny-llama", "--text", "hello there"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mean_kl"] == 0.0 and out["top1_agreement"] == 1.0
    assert main(["mc", "--model", "tiny-llama", "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 2


def test_cli_bad_input_is_one_line(capsys):
    assert main(["perplexity", "--model", "tiny-llama", "--text", "Hi"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["perplexity", "--model", "tiny-llama", "--text", TEXT, "--window", "8", "--stride", "9"]) == 2
    assert "larger than the window" in capsys.readouterr().err


def test_page_perplexity_and_bad_input(load):
    at = run_page("pages/18_Evaluation.py", "tiny-llama")
    assert_clean(at)
    assert any(m.label == "Perplexity" for m in at.metric)
    at.number_input(key="eval_stride").set_value(1).run()  # one pass per token: dozens of windows drawn
    assert_clean(at)
    n = len(text_ids(load("tiny-llama"), at.text_area(key="eval_text").value)[0])
    passes = next(m.value for m in at.metric if m.label == "Forward passes")
    assert passes == str(len(plan_windows(n, 32, 1))) and int(passes) > 20
    at.number_input(key="eval_stride").set_value(40).run()  # a whole number in the box's range, over the window
    assert_clean(at)
    assert any("larger than the window" in w.value for w in at.warning)
    at.text_area(key="eval_text").input("Hi").run()
    assert_clean(at)
    assert any("at least two" in i.value for i in at.info)


def test_page_multiple_choice_and_kl_on_button_press():
    at = run_page("pages/18_Evaluation.py", "tiny-gpt2")
    assert not any(m.label.startswith("Accuracy") for m in at.metric)  # nothing scored on first paint
    at.button(key="eval_mc_run").click().run()
    assert_clean(at)
    job = REGISTRY.jobs(kind="multiple-choice")[-1]
    snap = job.wait(300)
    assert snap.status == "finished" and snap.step == len(MC.load_items())
    at.run()
    assert_clean(at)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Accuracy (per token)"] == f"{100 * snap.result.accuracy_normalised:.1f}%"
    at.selectbox(key="eval_kl_other").set_value("tiny-llama").run()
    at.button(key="eval_kl_run").click().run()
    assert_clean(at)
    assert any(m.label == "Mean KL(P‖Q)" for m in at.metric)


def test_the_page_budget_refuses_a_tiny_stride_on_a_long_text(load):
    lm = load("tiny-llama")
    with pytest.raises(InputError, match="forward passes"):
        perplexity(lm, TEXT * 4, window=64, stride=1, max_work=4096)
    assert perplexity(lm, TEXT, window=64, stride=32, max_work=4096).scored_tokens > 0
