"""Alignment: the DPO, Bradley-Terry, GRPO-advantage and PPO-clip formulas against hand numbers and TRL; short
runs that must move their figure; private copies; a stop that ends the job; the page in AppTest."""

from __future__ import annotations

import math
import time

import pytest
import torch

from core.align import common, dpo, grpo, ppo, reward, rewards
from core.jobs import REGISTRY
from pagetest import assert_clean, run_page

PAGE = "pages/12_RLHF.py"


def checksum(model) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


# ---------------------------------------------------------------- formulas against hand-worked numbers


def test_dpo_loss_hand_worked_example():
    # log π(y_w) = -10, log π(y_l) = -12, both -11 under π_ref, β = 0.1:
    # chosen reward 0.1·(-10 + 11) = 0.1, rejected 0.1·(-12 + 11) = -0.1, loss = -log σ(0.2) = log(1 + e^-0.2)
    losses, r_w, r_l = dpo.dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                                    torch.tensor([-11.0]), beta=0.1)
    assert r_w.item() == pytest.approx(0.1)
    assert r_l.item() == pytest.approx(-0.1)
    assert losses.item() == pytest.approx(0.5981388693815918, abs=1e-6)
    # policy == reference: no preference yet, the loss is log 2 whatever the log-probabilities
    same, _, _ = dpo.dpo_loss(torch.tensor([-3.0, -50.0]), torch.tensor([-7.0, -1.0]), torch.tensor([-3.0, -50.0]),
                              torch.tensor([-7.0, -1.0]), beta=0.5)
    assert same.tolist() == pytest.approx([math.log(2)] * 2)


def test_bradley_terry_loss():
    assert reward.bt_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # only the difference counts, and a wrong ranking costs more than a right one
    a = reward.bt_loss(torch.tensor([5.0, 0.0]), torch.tensor([4.0, 1.0]))
    assert a[0].item() == pytest.approx(reward.bt_loss(torch.tensor([1.0]), torch.tensor([0.0])).item())
    assert a[1] > a[0]


def test_group_advantages_by_hand_and_like_trl():
    from trl.trainer.utils import nanstd

    r = [1.0, 0.0, 0.0, 1.0]  # mean 0.5, sample std sqrt(4·0.25/3) = 0.57735
    a = grpo.group_advantages(r)
    assert a == pytest.approx([0.5 / (math.sqrt(1 / 3) + 1e-4), -0.5 / (math.sqrt(1 / 3) + 1e-4)] * 1 + [
        -0.5 / (math.sqrt(1 / 3) + 1e-4), 0.5 / (math.sqrt(1 / 3) + 1e-4)])
    assert grpo.group_advantages([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]  # equal rewards teach nothing
    t = torch.tensor([0.2, 0.9, 0.4, 0.4, 0.0, 1.0])
    trl_a = (t - t.mean()) / (nanstd(t) + 1e-4)
    assert grpo.group_advantages(t.tolist()) == pytest.approx(trl_a.tolist(), abs=1e-6)


def test_ppo_clip_against_hand_numbers():
    ratio = torch.tensor([0.5, 1.0, 1.5])
    s, c, m = ppo.clipped_terms(ratio, advantage=2.0, epsilon=0.2)
    assert s.tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert c.tolist() == pytest.approx([1.6, 2.0, 2.4])
    assert m.tolist() == pytest.approx([1.0, 2.0, 2.4])  # A > 0: capped above at (1+ε)A, never raised below
    s, c, m = ppo.clipped_terms(ratio, advantage=-1.0, epsilon=0.2)
    assert m.tolist() == pytest.approx([-0.8, -1.0, -1.5])  # A < 0: the pessimistic side again


def test_programmatic_rewards():
    assert rewards.contains_word("Thank you so much!", "thank") == 1.0
    assert rewards.contains_word("Thanks!", "thank") == 0.0  # whole words only
    assert rewards.length_target("one two three four five", 5) == 1.0
    assert rewards.length_target("one two three", 5) == pytest.approx(math.exp(-2 / 5))
    assert rewards.no_repetition("a b a b a b") == pytest.approx(2 / 5)
    assert rewards.politeness("Sure, happy to help, thank you") == 1.0
    with pytest.raises(ValueError):
        rewards.make_reward("contains", word="two words")
    with pytest.raises(ValueError):
        rewards.make_reward("sarcasm")


def test_preference_data_split():
    pairs = common.preference_pairs()
    assert 40 <= len(pairs) <= 60
    assert len(common.preference_pairs("test")) == 8
    assert all(p.prompt and p.chosen and p.rejected and p.chosen != p.rejected for p in pairs)


# ---------------------------------------------------------------- on real (tiny) models


def test_dpo_loss_equals_trl_on_one_batch(load):
    """Our formula on log-probs summed by hand == DPOTrainer.compute_loss on the same batch (policy ≠ reference)."""
    from trl import DPOConfig, DPOTrainer

    lm = load("tiny-llama")
    tok = common.private_tokenizer(lm.tokenizer)
    policy, ref = common.private_copy(lm.model), common.private_copy(lm.model, trainable=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(**common.trainer_args(out, 1, 1e-6, 4, 0), beta=0.3, max_length=96)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=tok,
                             train_dataset=dpo.to_dataset(tok, common.preference_pairs("train")[:4]))
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            trl_loss = float(trainer.compute_loss(trainer.model, batch))

    def logps(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        tok_lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (tok_lp * batch["completion_mask"][:, 1:]).sum(-1).chunk(2)  # batch is [chosen..., rejected...]

    with torch.no_grad():
        (pc, pr), (rc, rr) = logps(policy), logps(ref)
    ours = dpo.dpo_loss(pc, pr, rc, rr, beta=0.3)[0].mean().item()
    assert abs(ours - math.log(2)) > 1e-3  # the perturbation made the example non-trivial
    assert ours == pytest.approx(trl_loss, abs=1e-4)


def test_ppo_example_on_tiny_model_leaves_shared_model_alone(load):
    lm = load("tiny-llama")
    before = checksum(lm.model)
    ex = ppo.ppo_example(lm.model, lm.tokenizer, "Can you recommend a good book?", lambda t: 1.0, baseline=0.0,
                         epsilon=0.2, beta=0.05, lr=0.5, max_new_tokens=8, seed=0)
    assert checksum(lm.model) == before
    assert len(ex.tokens) == 8 and ex.advantage == 1.0
    for t in ex.tokens:
        assert t.ratio == pytest.approx(math.exp(t.logp_new - t.logp_old), rel=1e-4)
        assert t.term == pytest.approx(min(t.ratio, min(max(t.ratio, 0.8), 1.2)), rel=1e-5)
        assert t.kl >= -1e-6
    # a step along +A·∇log π(y) raises the rollout's log-probability
    assert sum(t.logp_new for t in ex.tokens) > sum(t.logp_old for t in ex.tokens)
    assert ex.objective == pytest.approx(ex.clip_objective - 0.05 * ex.kl)


def test_reward_model_learns_on_tiny_model(load):
    lm = load("tiny-llama")
    before = checksum(lm.model)
    res = reward.train_reward_model(lm.model, lm.tokenizer, reward.RewardConfig(steps=30, lr=1e-2, batch_size=8))
    assert checksum(lm.model) == before
    first, last = res.rows[0]["loss"], sum(r["loss"] for r in res.rows[-5:]) / 5
    assert last < first
    # a finished job keeps tensors and figures, no model: the head only, when the backbone stayed frozen
    assert not any(isinstance(v, torch.nn.Module) for v in vars(res).values())
    assert sorted(res.trained_state) == ["head.bias", "head.weight"]
    # rebuilt from the loaded model (no copy), it gives the scores the trained model gave at the end
    pair = res.test_pairs[0]
    scores = reward.score_answers(lm.model, lm.tokenizer, res, pair["prompt"], [pair["chosen"], pair["rejected"]])
    assert scores == pytest.approx([pair["r_chosen"], pair["r_rejected"]], abs=1e-5)
    assert checksum(lm.model) == before


def _wait_for(job, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while job.snapshot().step < step and job.snapshot().active and time.time() < deadline:
        time.sleep(0.2)


def test_stop_mid_run_ends_dpo_job(load):
    """A stop asked during a TRL run ends at the next step boundary: status stopped, thread gone."""
    lm = load("tiny-llama")
    before = checksum(lm.model)
    cfg = dpo.DPOConfigLab(steps=200, lr=1e-4, batch_size=2, answer_tokens=2, before_after=("Hi",))
    job = REGISTRY.start("dpo", "test-align", lambda j: dpo.run_dpo(lm.model, lm.tokenizer, cfg, j), total_steps=200)
    _wait_for(job, 1)
    job.stop()
    snap = job.wait(120)
    assert snap.status == "stopped", snap.message
    assert not job.thread.is_alive()
    assert 1 <= snap.step < 200
    assert checksum(lm.model) == before


def test_stop_mid_run_ends_reward_job(load):
    lm = load("tiny-llama")
    job = REGISTRY.start("reward", "test-align", lambda j: reward.train_reward_model(
        lm.model, lm.tokenizer, reward.RewardConfig(steps=2000), j), total_steps=2000)
    _wait_for(job, 1)
    job.stop()
    snap = job.wait(60)
    assert snap.status == "stopped" and not job.thread.is_alive()


def test_bad_settings_are_refused():
    from core.jobs import JobError

    with pytest.raises(JobError):
        grpo.validate(grpo.GRPOConfigLab(generations=1))
    with pytest.raises(JobError):
        grpo.validate(grpo.GRPOConfigLab(reward="contains", word=""))
    with pytest.raises(JobError):
        dpo.validate(dpo.DPOConfigLab(beta=0))
    with pytest.raises(ValueError):
        ppo.ppo_example(None, None, "  ", lambda t: 0.0)


def test_cli_ppo_and_bad_input(capsys):
    import json

    from core.cli import main

    assert main(["ppo", "--model", "tiny-llama", "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"]) == 4 and out["objective"] == pytest.approx(out["clip_objective"] - 0.05 * out["kl"])
    assert main(["grpo", "--model", "tiny-llama", "--generations", "1"]) == 2
    assert "between 2 and 16" in capsys.readouterr().err


# ---------------------------------------------------------------- the behaviour on the embedded model


@pytest.mark.embedded
@pytest.mark.slow
def test_short_dpo_run_raises_the_margin(embedded):
    before = checksum(embedded.model)
    res = dpo.run_dpo(embedded.model, embedded.tokenizer,
                      dpo.DPOConfigLab(steps=3, lr=5e-6, batch_size=4, answer_tokens=4, before_after=("Hi",)))
    assert res.margin_train_before == pytest.approx(0.0, abs=1e-4)  # π = π_ref at the start
    assert res.margin_train_after > 1e-3
    assert len(res.rows) == 3 and all("kl" in r for r in res.rows)
    assert checksum(embedded.model) == before


@pytest.mark.embedded
@pytest.mark.slow
def test_short_grpo_run_raises_mean_reward(embedded):
    before = checksum(embedded.model)
    res = grpo.run_grpo(embedded.model, embedded.tokenizer, grpo.GRPOConfigLab(
        reward="length", target=5, steps=6, lr=5e-5, generations=4, max_new_tokens=16, answer_tokens=4,
        before_after=("Hi",)))
    # the same seeded samples on held-out prompts, before and after: fewer words, closer to the target
    assert res.eval_after > res.eval_before, (res.eval_before, res.eval_after, [r["reward"] for r in res.rows])
    group = res.groups[-1]
    assert group.advantages == pytest.approx(group.trl_advantages, abs=1e-4)
    assert checksum(embedded.model) == before


@pytest.mark.embedded
@pytest.mark.slow
def test_reward_model_ranks_held_out_pairs(embedded):
    res = reward.train_reward_model(embedded.model, embedded.tokenizer, reward.RewardConfig(steps=40))
    assert res.test_accuracy_after >= 0.875, res.rows[-1]


# ---------------------------------------------------------------- the page


def test_page_renders_every_step():
    at = run_page(PAGE)
    assert_clean(at)
    assert [s.value for s in at.subheader] == ["Supervised fine-tuning"]
    assert len(at.metric) == 2 and all("nats/token" in m.value for m in at.metric)
    for label, heading in (("2 · Reward model", "Reward model"), ("3 · PPO", "PPO with a KL penalty"),
                           ("DPO", "Direct Preference Optimization"),
                           ("GRPO", "Group Relative Policy Optimization")):
        at.segmented_control(key="rlhf_step").set_value(label).run()
        assert_clean(at)
        assert heading in [s.value for s in at.subheader]


def test_page_reward_run_and_ppo_step():
    at = run_page(PAGE)
    at.segmented_control(key="rlhf_step").set_value("2 · Reward model").run()
    at.number_input(key="rlhf_rm_steps").set_value(5).run()
    at.button(key="rlhf_start_rm").click().run()
    assert_clean(at)
    job_id = at.query_params["rm"]
    job = REGISTRY.get(job_id[0] if isinstance(job_id, list) else job_id)
    assert job is not None
    job.wait(120)
    at.run()
    assert_clean(at)
    assert any(m.label == "Held-out accuracy" for m in at.metric)
    at.segmented_control(key="rlhf_step").set_value("3 · PPO").run()
    at.text_input(key="rlhf_ppo_prompt").set_value("").run()
    at.button(key="rlhf_ppo_go").click().run()
    assert_clean(at)
    assert any("Type a prompt" in w.value for w in at.warning)


# ---------------------------------------------------------------- issue 18: KL over the answer, eval-mode margins,
# seeded runs beside each other, GRPO's advantages from a public path


def _perturbed(lm, scale: float = 0.02):
    policy, ref = common.private_copy(lm.model), common.private_copy(lm.model, trainable=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return policy, ref


def test_dpo_kl_is_averaged_over_the_answer_tokens_only(load):
    lm = load("tiny-llama")
    tok = common.private_tokenizer(lm.tokenizer)
    policy, ref = _perturbed(lm)
    pair = common.preference_pairs("train")[0]
    prompt_ids = tok(common.format_prompt(tok, pair.prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tok(" " + pair.chosen.strip(), add_special_tokens=False)["input_ids"]
    x = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        lp = torch.log_softmax(policy.eval()(input_ids=x).logits[0].float(), -1)
        lq = torch.log_softmax(ref.eval()(input_ids=x).logits[0].float(), -1)
    per_position = (lp.exp() * (lp - lq)).sum(-1)  # KL at every position of prompt + answer
    # by hand: the positions whose next token is an answer token are len(prompt)-1 ... len(prompt)+len(answer)-2
    hand = float(per_position[len(prompt_ids) - 1: len(prompt_ids) + len(answer_ids) - 1].mean())
    everywhere = float(per_position.mean())
    assert abs(hand - everywhere) > 1e-4 * max(hand, everywhere)  # the two averages differ here
    assert dpo.token_kl(policy, ref, tok, [pair]) == pytest.approx(hand, rel=1e-5)


def test_starting_margin_is_exactly_zero_for_a_copy_even_with_dropout(load):
    lm = load("tiny-gpt2")
    assert lm.model.config.resid_pdrop > 0  # dropout on in train mode: the test would catch a train-mode measurement
    tok = common.private_tokenizer(lm.tokenizer)
    policy, ref = common.private_copy(lm.model), common.private_copy(lm.model, trainable=False)
    assert policy.training  # as the trainer holds it
    margins = dpo.pair_margins(policy, ref, tok, common.preference_pairs("train")[:4], beta=0.1)
    assert margins == [0.0] * 4 and policy.training  # and the mode is given back


def test_seeded_sampling_gives_the_same_figure_with_another_seeded_job_beside_it(load):
    import threading

    lm = load("tiny-llama")
    tok = common.private_tokenizer(lm.tokenizer)
    reward_fn = rewards.make_reward("length", "thank", 5)
    prompts = [p.prompt for p in common.preference_pairs("test")][:2]

    def measure(seed: int) -> float:
        return grpo.sampled_mean_reward(lm.model, tok, prompts, reward_fn, 4, 12, 1.0, seed)

    alone = measure(3)
    results: dict[str, list[float]] = {"a": [], "b": []}

    def job(name: str, seed: int) -> None:
        for _ in range(4):
            results[name].append(measure(seed))

    threads = [threading.Thread(target=job, args=("a", 3)), threading.Thread(target=job, args=("b", 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"] == [alone] * 4
    assert len(set(results["b"])) == 1


def test_grpo_reads_trls_advantages_through_compute_loss(load):
    """Two steps on a tiny model: the advantages TRL trained on (tapped from compute_loss's inputs, public API)
    equal our group advantages of the same rewards."""
    lm = load("tiny-llama")
    res = grpo.run_grpo(lm.model, lm.tokenizer, grpo.GRPOConfigLab(
        steps=2, generations=4, max_new_tokens=6, eval_samples=1, answer_tokens=4, reward="length", target=3))
    assert len(res.groups) == 2
    for group in res.groups:
        assert len(group.trl_advantages) == 4
        assert group.advantages == pytest.approx(group.trl_advantages, abs=1e-4)
