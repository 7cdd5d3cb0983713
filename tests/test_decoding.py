"""core/decode: filters against transformers' logits processors, greedy and beam search against
model.generate, seeded sampling, the beam tree, log-probabilities, the CLI and the page."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from core.cli import main
from core.decode import filters as F
from core.decode import strategies as S
from core.decode.comparator import compare, distinct_n, prompt_ids
from core.models.capture import InputError
from pagetest import assert_clean, run_page

PROMPT = "The cat sat on the mat and"


# ---------------------------------------------------------------- filters vs transformers


def _processors(ids: torch.Tensor):
    return [
        (lambda z: F.temperature(z, 0.7), TemperatureLogitsWarper(0.7)),
        (lambda z: F.top_k(z, 13), TopKLogitsWarper(13)),
        (lambda z: F.top_p(z, 0.8), TopPLogitsWarper(0.8)),
        (lambda z: F.top_p(z, 0.3), TopPLogitsWarper(0.3)),
        (lambda z: F.min_p(z, 0.1), MinPLogitsWarper(0.1)),
        (lambda z: F.typical(z, 0.6), TypicalLogitsWarper(0.6)),
        (lambda z: F.repetition_penalty(z, ids, 1.3), RepetitionPenaltyLogitsProcessor(1.3)),
    ]


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_filters_match_transformers_processors(scale):
    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(6, 1000, generator=g) * scale
    ids = torch.randint(0, 1000, (6, 17), generator=g)
    for ours, theirs in _processors(ids):
        a, b = ours(logits), theirs(ids, logits.clone())
        assert torch.equal(torch.isinf(a), torch.isinf(b)), theirs  # same kept set
        kept = ~torch.isinf(a)
        assert torch.allclose(a[kept], b[kept], atol=1e-6), theirs  # same values


def test_filters_cut_what_they_should():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.isinf(F.top_k(logits, 2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(F.top_p(logits, 0.7)).tolist() == [[False, False, True, True]]  # 0.5 + 0.25 reaches 0.7
    assert torch.isinf(F.top_p(logits, 0.74)).tolist() == [[False, False, True, True]]
    assert torch.isinf(F.top_p(logits, 0.76)).tolist() == [[False, False, False, True]]
    assert torch.isinf(F.min_p(logits, 0.32)).tolist() == [[False, False, True, True]]  # 0.15 < 0.32 * 0.5
    assert torch.allclose(F.temperature(logits, 0.5).softmax(-1), torch.tensor([[25, 6.25, 2.25, 1]]) / 34.5)


@pytest.mark.parametrize("bad, message", [
    (S.make("sample", temperature=0.0), "temperature must be above 0"),
    (S.make("sample", temperature=-1.0), "temperature must be above 0"),
    (S.make("top_p", top_p=0.0), "top-p must lie in"),
    (S.make("top_p", top_p=1.5), "top-p must lie in"),
    (S.make("top_k", top_k=0), "top-k must be at least 1"),
    (S.make("beam", num_beams=20), "beam search needs 2 to"),
    (S.make("beam", num_beams=1), "1 beam is greedy"),
    (S.make("typical", typical=1.0), "typical mass"),
])
def test_bad_settings_are_refused_with_a_message(bad, message):
    with pytest.raises(ValueError, match=message):
        bad.check()


# ---------------------------------------------------------------- parity with model.generate


def _generate(lm, ids, n, **kw):
    inp = torch.tensor([ids])
    out = lm.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=n,
                            pad_token_id=lm.tokenizer.pad_token_id, do_sample=False, **kw)
    return out[0, len(ids):].tolist()


def test_greedy_and_beams_in_one_batch_equal_generate(tiny):
    ids = prompt_ids(tiny, PROMPT)
    strategies = [S.make("greedy"), S.make("beam", num_beams=2), S.make("top_p"), S.make("beam", num_beams=3)]
    result = compare(tiny, PROMPT, strategies, max_new_tokens=12, seed=1)
    assert result.rows == 1 + 2 + 1 + 3 and result.forwards == 12  # 1 prefill + 11 decode steps
    by = {o.strategy.name: o for o in result.outputs}
    assert by["greedy"].token_ids == _generate(tiny, ids, 12)
    for beams in (2, 3):
        assert by[f"beam {beams}"].token_ids == _generate(tiny, ids, 12, num_beams=beams), beams


def test_eos_ends_greedy_and_beam_like_generate(load):
    lm = load("tiny-llama")
    ids = prompt_ids(lm, PROMPT)
    free = _generate(lm, ids, 8)
    config = lm.model.generation_config
    old = config.eos_token_id
    config.eos_token_id = free[4]  # make the 5th greedy token an end-of-sequence token
    try:
        result = compare(lm, PROMPT, [S.make("greedy"), S.make("beam", num_beams=3)], max_new_tokens=8)
        by = {o.strategy.name: o for o in result.outputs}
        assert by["greedy"].token_ids == free[:free.index(free[4]) + 1] == _generate(lm, ids, 8)
        assert by["beam 3"].token_ids == _generate(lm, ids, 8, num_beams=3)
    finally:
        config.eos_token_id = old


@pytest.mark.embedded
def test_embedded_greedy_and_beam_equal_generate(embedded):
    text = "The capital of France is"
    ids = prompt_ids(embedded, text)
    result = compare(embedded, text, [S.make("greedy"), S.make("beam", num_beams=3)], max_new_tokens=16)
    by = {o.strategy.name: o for o in result.outputs}
    assert by["greedy"].token_ids == _generate(embedded, ids, 16)
    assert by["beam 3"].token_ids == _generate(embedded, ids, 16, num_beams=3)
    assert "Paris" in embedded.decode(by["greedy"].token_ids)


# ---------------------------------------------------------------- sampling, scores, the record


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(load):
    lm = load("tiny-qwen2")
    alone = compare(lm, PROMPT, [S.make("top_p", samples=2)], 10, seed=7).outputs
    crowd = compare(lm, PROMPT, S.default_comparison(samples=2), 10, seed=7).of("top-p 0.9")
    assert [o.token_ids for o in alone] == [o.token_ids for o in crowd]
    assert alone[0].token_ids != alone[1].token_ids  # two draws, two seeds
    other = compare(lm, PROMPT, [S.make("top_p", samples=2)], 10, seed=8).outputs
    assert other[0].token_ids != alone[0].token_ids


def test_top_k_1_and_min_p_1_sample_the_greedy_text(load):
    lm = load("tiny-llama")
    result = compare(lm, PROMPT, [S.make("greedy"), S.make("top_k", top_k=1), S.make("min_p", min_p=1.0)], 10)
    greedy, top1, minp1 = (o.token_ids for o in result.outputs)
    assert greedy == top1 == minp1


def test_logprobs_are_the_models_own(load):
    lm = load("tiny-gpt2")
    result = compare(lm, PROMPT, [S.make("sample", temperature=1.5), S.make("beam", num_beams=2)], 8, seed=3)
    for out in result.outputs:
        full = torch.tensor([result.prompt_ids + out.token_ids])
        with torch.inference_mode():
            logp = lm.model(full).logits[0].float().log_softmax(-1)
        n = len(result.prompt_ids)
        expected = [float(logp[n - 1 + i, t]) for i, t in enumerate(out.token_ids)]
        assert out.logprobs == pytest.approx(expected, abs=1e-4)
        assert out.perplexity == pytest.approx(math.exp(-sum(expected) / len(expected)), rel=1e-4)


def test_step_record_marks_cut_tokens_and_the_pick(load):
    lm = load("tiny-llama")
    out = compare(lm, PROMPT, [S.make("top_k", top_k=5, temperature=0.5)], 6, seed=2).outputs[0]
    assert len(out.steps) == 6
    for step in out.steps:
        assert len(step.top_ids) == 20 and step.p_model == sorted(step.p_model, reverse=True)
        assert [p > 0 for p in step.p_filtered] == [True] * 5 + [False] * 15  # top-5 kept, the rest cut
        assert sum(step.p_filtered) == pytest.approx(1.0, abs=1e-5) and step.kept == 5
        assert step.picked in step.top_ids[:5] and step.picked_rank < 5 and step.picked_p_filtered > 0


def test_beam_tree_records_every_candidate(load):
    lm = load("tiny-llama")
    result = compare(lm, PROMPT, [S.make("beam", num_beams=2)], 6)
    nodes, path = result.beam_trees["beam 2"], result.best_paths["beam 2"]
    assert len(nodes) == 6 * 4  # K = 2 x beams candidates per step (one EOS id)
    assert all(sum(n.status == "kept" for n in nodes if n.step == s) == 2 for s in range(5))
    assert [nodes[i].token_id for i in path] == result.outputs[0].token_ids
    assert [nodes[i].parent for i in path] == [-1] + path[:-1]
    assert nodes[path[-1]].status == "finished"


def test_progress_counts_forward_passes_and_a_raise_stops_between_tokens(load):
    """Issue 20: the page's Cancel works by raising inside `progress` (a click's rerun does): the decoding
    must stop right there, before its next forward pass, not after all of them."""
    lm = load("tiny-llama")
    passes: list[int] = []
    hook = lm.model.register_forward_hook(lambda *_: passes.append(1))
    strategies = [S.make("greedy"), S.make("beam", num_beams=2), S.make("top_p", samples=2)]
    try:
        calls: list[tuple[int, int]] = []
        result = compare(lm, PROMPT, strategies, 6, progress=lambda done, total: calls.append((done, total)))
        assert calls == [(i, 6) for i in range(1, result.forwards + 1)] and len(passes) == result.forwards

        class Cancelled(Exception):
            pass

        def cancel_at_3(done: int, total: int) -> None:
            if done == 3:
                raise Cancelled

        passes.clear()
        with pytest.raises(Cancelled):
            compare(lm, PROMPT, strategies, 64, progress=cancel_at_3)
        assert len(passes) == 3  # the prefill and two steps, of 64
    finally:
        hook.remove()


def test_distinct_n_known_values():
    assert distinct_n([[1, 2, 1, 2]], 1) == 0.5
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 1) == 0.5


def test_bad_prompts(load):
    lm = load("tiny-llama")
    with pytest.raises(InputError, match="empty"):
        compare(lm, "   ", [S.make("greedy")], 4)
    with pytest.raises(InputError, match="context is 256"):
        compare(lm, "word " * 300, [S.make("greedy")], 4)
    near = compare(lm, "word " * 250, [S.make("greedy")], 32)  # 251 tokens: only 5 fit
    room = 256 - len(near.prompt_ids)
    assert 0 < room < 32 and near.max_new_tokens == room and near.outputs[0].length == room
    assert f"Only {room} new tokens fit" in near.notice
    with pytest.raises(ValueError, match="at most 48"):
        compare(lm, PROMPT, [S.make("top_p", samples=8)] * 7, 4)


# ---------------------------------------------------------------- CLI and page


def test_cli_generate_and_compare(load, capsys):
    assert main(["generate", "--model", "tiny-llama", "--text", PROMPT, "--strategy", "greedy",
                 "--max-new-tokens", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    lm = load("tiny-llama")
    assert out["token_ids"] == _generate(lm, prompt_ids(lm, PROMPT), 6)
    assert len(out["steps"]) == 6 and all(0 < s["p_model"] <= 1 for s in out["steps"])
    assert main(["compare", "--model", "tiny-llama", "--text", PROMPT, "--max-new-tokens", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in out["strategies"]] == ["greedy", "beam 3", "temperature 0.8", "top-k 40",
                                                      "top-p 0.9", "min-p 0.1"]
    assert out["seconds"] > 0 and out["rows"] == 8
    assert main(["generate", "--model", "tiny-llama", "--text", PROMPT, "--strategy", "top_p", "--top-p", "0"]) == 2
    assert "top-p must lie in" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-llama", "--text", "", "--strategy", "greedy"]) == 2
    assert "empty" in capsys.readouterr().err


def test_page_decodes_and_explains_bad_settings():
    at = run_page("pages/13_Decoding.py")
    assert_clean(at)
    assert not at.dataframe  # nothing runs before the button
    at.button(key="dec_go").click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table["strategy"]) == ["greedy", "beam 3", "temperature 0.8", "top-k 40", "top-p 0.9", "min-p 0.1"]
    assert (table["tokens"] == 32).all()
    # The sliders stop at what the strategies accept (T and p above 0, 2 to 8 beams); a bad k skips only top-k
    # (tests/test_long_input.py).
    assert at.slider(key="dec_t").min > 0 and (at.slider(key="dec_beams").min, at.slider(key="dec_beams").max) == (2, 8)
    at.text_area(key="dec_prompt").set_value("").run()
    assert_clean(at)
    assert any("prompt is empty" in w.value for w in at.warning)


def test_page_decoding_shows_progress_and_cancel_stops_it(monkeypatch):
    """Issue 20: a long decoding showed a spinner and nothing else. Now a progress bar counts the forward passes
    beside a Cancel button; a click stops the run (in the browser, the click's rerun stops the script at the
    bar's next update: tests/test_browser_layout.py). Here the first run ends at the bar, as that click ends it,
    and the run the click starts decodes nothing and offers Decode again."""
    import streamlit as st

    import ui.decoding as ui_dec

    real = ui_dec.compare

    def interrupted(lm, text, strategies, max_new_tokens, seed, progress=None):
        progress(1, max_new_tokens)
        st.stop()  # the run ends here with the bar and Cancel drawn, like a run a click interrupts

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run after Cancel decoded")

    monkeypatch.setattr(ui_dec, "compare", interrupted)
    at = run_page("pages/13_Decoding.py")
    at.text_area(key="dec_prompt").set_value("Only this test decodes this prompt, so nothing is cached").run()
    at.button(key="dec_go").click().run()
    assert_clean(at)
    bars = [p.proto.text for p in at.get("progress")]
    assert bars and "forward pass 1 of 32" in bars[0], bars
    assert any(b.key == "dec_cancel" for b in at.button)
    monkeypatch.setattr(ui_dec, "compare", must_not_run)
    at.button(key="dec_cancel").click().run()
    assert_clean(at)
    assert any("Decoding cancelled" in i.value for i in at.info)
    assert not at.get("progress") and not at.dataframe
    assert not at.button(key="dec_go").disabled  # Decode again, with the same settings
    at.run()  # the next rerun (another widget moved) no longer reads the click
    assert not any("Decoding cancelled" in i.value for i in at.info) and not at.get("progress")
    monkeypatch.setattr(ui_dec, "compare", real)
    at.button(key="dec_go").click().run()
    assert_clean(at)
    assert len(at.dataframe[0].value) == 6 and not at.get("progress")


def test_a_large_decoding_is_admitted_against_the_memory_budget(monkeypatch, load):
    """A batch whose KV cache passes HEAVY_BYTES waits for room like a job (48 rows x 640 tokens of the embedded
    model is ~1.4 GB); a server without room says so on the page instead of decoding into it."""
    import contextlib

    import ui.decoding as ui_dec
    from core.jobs import JobLimitError

    tiny = load("tiny-llama")  # 2 layers x 2 KV heads x 16 dims x K and V x 4 bytes = 512 bytes a token a row
    n = len(tiny.encode("Hello world"))
    assert ui_dec.decoding_peak_bytes(tiny, "Hello world", 3, 10) == 512 * (n + 10) * 3 + 2 * 4 * 3 * 49_152

    @contextlib.contextmanager
    def full(peak_bytes, label, timeout_s=60.0):
        raise JobLimitError(f"The server is busy (memory); {label} did not start. Try again in a minute.")
        yield

    monkeypatch.setattr(ui_dec, "HEAVY_BYTES", 0)
    monkeypatch.setattr(ui_dec.REGISTRY, "heavy", full)
    at = run_page("pages/13_Decoding.py")
    at.text_area(key="dec_prompt").set_value("A prompt only this test decodes, so nothing is cached").run()
    at.button(key="dec_go").click().run()
    assert_clean(at)
    assert any("the decoding did not start" in w.value for w in at.warning)
