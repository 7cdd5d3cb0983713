"""Fine-tuning: the loss mask, trainable counts against PEFT's own, freezing, LoRA save/load parity,
resume, the untouched shared model, bad input, the CLI and the page."""

from __future__ import annotations

import copy
import csv
import json
import re
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from core.jobs import Job, JobRegistry
from core.train import finetune_data as fd
from core.train import finetune_store as store
from core.train.finetune import (FinetuneConfig, blocks, finetune, preview, trainable_parameters,
                                 validate, working_copy)
from pagetest import assert_clean, run_page
from ui.finetune import NO_TEXT
from ui.text import md

FAST = dict(max_new_tokens=2, eval_every=2, checkpoint_every=2, batch_size=2)
FEW = fd.load_instructions()[:6] + [e for e in fd.load_instructions() if e.split == "heldout"][:2]


def run(lm, cfg, run_dir, examples=FEW, resume=False):
    """The job's worker on the calling thread (a Job without a thread behaves the same)."""
    job = Job("finetune", "test", "t", total_steps=cfg.steps)
    return job, finetune(job, lm, cfg, run_dir, examples, resume=resume)


# ---------------------------------------------------------------- data: template and loss mask


def test_loss_mask_covers_exactly_the_response(load):
    tok = load("tiny-llama").tokenizer
    ex = fd.Example("What is 6 times 7?", "6 times 7 is 42. Over and out.")
    enc = fd.encode_example(tok, ex)
    prompt_ids = tok(fd.prompt_text(tok, ex.prompt), add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids
    assert enc.labels[: len(prompt_ids)] == [fd.IGNORE] * len(prompt_ids)
    learned = [t for t in enc.labels if t != fd.IGNORE]
    assert learned == enc.input_ids[len(prompt_ids):]
    # SmolLM2's template: the answer and its end-of-turn marker are what the model learns to write.
    assert tok.decode(learned) == "6 times 7 is 42. Over and out.<|im_end|>\n"
    assert "<|im_start|>user\nWhat is 6 times 7?<|im_end|>" in tok.decode(enc.input_ids[: len(prompt_ids)])


def test_plain_format_without_chat_template(load):
    tok = copy.deepcopy(load("tiny-llama").tokenizer)
    tok.chat_template = None
    enc = fd.encode_example(tok, fd.Example("Say hello.", "Hello!"))
    assert tok.decode(enc.input_ids[: enc.prompt_len]) == "User: Say hello.\nAssistant: "
    assert tok.decode([t for t in enc.labels if t != fd.IGNORE]) == "Hello!" + tok.eos_token


def test_model_loss_is_cross_entropy_over_response_tokens_only(load):
    lm = load("tiny-llama")
    encs = [fd.encode_example(lm.tokenizer, e) for e in FEW[:3]]
    batch = fd.collate(encs, pad_id=lm.tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"].sum()) == sum(len(e.input_ids) for e in encs)
    with torch.no_grad():
        out = lm.model(**batch)
        logits = out.logits[:, :-1]  # position t predicts token t + 1
        target = batch["labels"][:, 1:]
        keep = target != fd.IGNORE
        by_hand = F.cross_entropy(logits[keep], target[keep])
    assert int(keep.sum()) == sum(e.response_tokens for e in encs)
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_batches_are_seeded_epochs():
    first_epoch = [i for s in range(1, 6) for i in fd.batch_indices(s, 2, 10, seed=3)]
    assert sorted(first_epoch) == list(range(10))  # each example once per epoch
    assert fd.batch_indices(4, 2, 10, seed=3) == fd.batch_indices(4, 2, 10, seed=3)
    assert fd.batch_indices(1, 10, 10, seed=3) != fd.batch_indices(1, 10, 10, seed=4)


# ---------------------------------------------------------------- which weights train


@pytest.mark.parametrize("targets", ["q,v", "attention", "all-linear"])
def test_lora_trainable_count_equals_peft(load, targets):
    lm = load("tiny-llama")
    cfg = FinetuneConfig(mode="lora", lora_r=8, lora_targets=targets)
    model = working_copy(lm, cfg)
    assert trainable_parameters(model) == model.get_nb_trainable_parameters()
    assert preview(lm.config, cfg)["trainable"] == model.get_nb_trainable_parameters()[0]
    if targets == "q,v":  # per layer r * (d_in + d_out): q 64 -> 64, v 64 -> 2 kv heads x 16
        assert model.get_nb_trainable_parameters()[0] == 2 * 8 * ((64 + 64) + (64 + 32))


def test_gpt2_attention_targets_the_fused_projection(load):
    lm = load("tiny-gpt2")
    with pytest.raises(ValueError, match="fuses q, k and v"):
        preview(lm.config, FinetuneConfig(lora_targets="q,v"))
    counts = preview(lm.config, FinetuneConfig(lora_targets="attention", lora_r=4))
    # c_attn 64 -> 192 and attn.c_proj 64 -> 64 (not the MLP's c_proj), 2 layers
    assert counts["trainable"] == 2 * 4 * ((64 + 192) + (64 + 64)) == counts["peft_count"][0]


def test_freeze_counts_and_lower_layers_stay_fixed(load, tmp_path):
    lm = load("tiny-llama")
    cfg = FinetuneConfig(mode="freeze", freeze_layers=1, learning_rate=1e-2, steps=2, **FAST)
    total = sum(p.numel() for p in lm.model.parameters())
    embed = lm.model.get_input_embeddings().weight.numel()  # tied: also the output head
    layer0 = sum(p.numel() for p in blocks(lm.model)[0].parameters())
    assert preview(lm.config, cfg)["trainable"] == total - embed - layer0

    model = working_copy(lm, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = fd.collate([fd.encode_example(lm.tokenizer, e) for e in FEW[:2]], lm.tokenizer.pad_token_id)
    model(**batch).loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p)
        assert moved == p.requires_grad, name
        assert moved == (".layers.1." in name or name == "model.norm.weight"), name


def test_bad_input_gets_clear_messages(load):
    lm = load("tiny-llama")
    for cfg, message in ((FinetuneConfig(learning_rate=0), "learning rate must be a positive"),
                         (FinetuneConfig(learning_rate=-1e-3), "learning rate must be a positive"),
                         (FinetuneConfig(lora_r=0), "rank r must be at least 1"),
                         (FinetuneConfig(mode="freeze", freeze_layers=3), "Cannot freeze 3 layers: the model has 2"),
                         (FinetuneConfig(steps=0), "at least 1"),
                         (FinetuneConfig(mode="rlhf"), "Unknown mode")):
        with pytest.raises(ValueError, match=message):
            validate(cfg, lm.config)
    with pytest.raises(ValueError, match="no training example"):
        fd.split_examples([])
    with pytest.raises(ValueError, match="non-empty"):
        fd.examples_from_rows([{"prompt": "hi", "response": "  "}])
    for name in ("../escape", "/etc", "a b", "x/y", "..."):
        with pytest.raises(ValueError, match="not allowed"):
            store.run_dir_for(name)
    with pytest.raises(ValueError, match="Give the run a name"):
        store.run_dir_for(" ")


# ---------------------------------------------------------------- runs: the shared model, LoRA save/load, resume


def test_lora_run_saves_an_adapter_that_loads_back_exactly(load, tmp_path):
    lm = load("tiny-llama")
    shared = {n: p.detach().clone() for n, p in lm.model.state_dict().items()}
    cfg = FinetuneConfig(mode="lora", learning_rate=5e-2, steps=2, lora_dropout=0.0, **FAST)
    job, result = run(lm, cfg, tmp_path / "run")
    assert all(torch.equal(shared[n], p) for n, p in lm.model.state_dict().items())  # shared model untouched
    snap = job.snapshot()
    assert [m["step"] for m in snap.metrics] == [0, 1, 2] and result.steps == 2
    assert result.trainable == 3584 and len(result.answers) == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"

    ids = torch.tensor([lm.encode("The capital of France is")])
    trained = store.load_adapter(copy.deepcopy(lm.model), tmp_path / "run" / "adapter")
    again = store.load_adapter(copy.deepcopy(lm.model), tmp_path / "run" / "adapter")
    with torch.no_grad():
        a, b, base = trained(ids).logits, again(ids).logits, lm.model(ids).logits
        lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert torch.equal(a, b)
    assert any(p.abs().sum() > 0 for p in lora_b) and not torch.allclose(a, base)  # the adapter does something

    from core.models.loading import load_model
    merged = load_model(str(tmp_path / "run" / "model"))  # what the model picker opens
    with torch.no_grad():
        assert torch.allclose(merged.model(ids).logits, a, atol=1e-4)
    assert json.loads((tmp_path / "run" / "answers.json").read_text())[0]["prompt"] == FEW[-2].prompt


def test_adapter_checkpoint_round_trip_is_exact(load, tmp_path):
    lm = load("tiny-llama")
    cfg = FinetuneConfig(mode="lora", lora_dropout=0.0)
    store.start_run(tmp_path, lm.spec, asdict(cfg))
    model = working_copy(lm, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a non-trivial adapter without training
    model.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    store.save_checkpoint(tmp_path, model, opt, {"step": 3, "metrics": [], "before": None, "seconds": 0}, "lora")
    fresh = working_copy(lm, cfg).eval()
    fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad])
    state = store.load_checkpoint(tmp_path, fresh, fresh_opt, base=lm.spec.source, mode="lora")
    ids = torch.tensor([lm.encode("Hello there")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    assert state["step"] == 3 and not (tmp_path / "checkpoint.old").exists()


def test_full_run_resumes_where_it_stopped(load, tmp_path):
    """2 steps + resume to 4 gives the same losses as 4 steps in one go (same batches, restored AdamW state)."""
    lm = load("tiny-llama")
    cfg = FinetuneConfig(mode="full", learning_rate=1e-3, steps=4, **FAST)
    _, straight = run(lm, cfg, tmp_path / "straight")
    _, first = run(lm, replace(cfg, steps=2), tmp_path / "split")
    job, resumed = run(lm, cfg, tmp_path / "split", resume=True)

    def losses(run_name: str) -> list[float]:
        with (tmp_path / run_name / "metrics.csv").open() as f:
            return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]

    assert [m["step"] for m in job.snapshot().metrics] == [0, 1, 2, 3, 4]
    assert first.steps == 2 and resumed.steps == 4
    assert losses("split") == pytest.approx(losses("straight"), rel=1e-5)
    assert resumed.loss_end == pytest.approx(straight.loss_end, rel=1e-5)
    assert straight.loss_end < straight.loss_start  # full fine-tuning at 1e-3 moves a random model fast
    assert store.finetune_runs(tmp_path)[0]["step"] == 4


def test_stop_writes_a_checkpoint_and_the_export(load, tmp_path):
    lm = load("tiny-llama")
    reg = JobRegistry()
    cfg = FinetuneConfig(mode="lora", steps=500, **FAST)
    job = reg.start("finetune", "t", lambda j: finetune(j, lm, cfg, tmp_path / "r", FEW), total_steps=500)
    while job.snapshot().step < 1:
        job.wait(0.05)
    job.stop()
    snap = job.wait(120)
    assert snap.status == "stopped" and 1 <= snap.result.steps < 500
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    assert state["step"] == snap.result.steps
    status = json.loads((tmp_path / "r" / "run.json").read_text())  # what the runs-folder cap reads
    assert status["status"] == "stopped" and status["owner"] == "t" and status["step"] == snap.result.steps
    assert (tmp_path / "r" / "model" / "config.json").is_file()
    assert not list(tmp_path.glob("r/*.tmp-*"))


# ---------------------------------------------------------------- CLI and page


def test_cli_finetune_prints_json_and_refuses_bad_input(tmp_path, capsys):
    from core.cli import main

    assert main(["finetune", "--model", "tiny-llama", "--mode", "freeze", "--freeze-layers", "1", "--steps", "2",
                 "--batch-size", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["status"] == "finished" and out["mode"] == "freeze"
    assert out["model_dir"] == str(tmp_path / "c" / "model") and 0 < out["share"] < 1
    assert main(["finetune", "--model", "tiny-llama", "--lr", "0", "--out", str(tmp_path / "d")]) == 2
    assert "learning rate must be a positive" in capsys.readouterr().err
    assert main(["finetune", "--model", "tiny-llama", "--mode", "freeze", "--freeze-layers", "9",
                 "--out", str(tmp_path / "e")]) == 2
    assert "has 2" in capsys.readouterr().err


def test_page_previews_counts_then_runs_a_job(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path))
    own = "1. Say **hi** in `code` for $5"  # Markdown, LaTeX and a list marker: must show as typed
    at = run_page("pages/11_Fine_tuning.py", ft_steps=2, ft_r=4, ft_batch=2, ft_prompt=own)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    exact = {m.label: m.help for m in at.metric}
    assert metrics["Trainable parameters"] == "1.8 k"  # short enough for its box; the exact count on hover
    assert exact["Trainable parameters"] == f"{2 * 4 * (128 + 96):,}"  # tiny-llama q,v at r = 4
    at.number_input(key="ft_lr_lora").set_value(0.0).run()
    assert any("learning rate must be a positive" in e.value for e in at.error)
    at.number_input(key="ft_lr_lora").set_value(1e-3).run()
    at.button(key="ft_start").click().run()
    assert_clean(at)
    from core.jobs import REGISTRY

    job = REGISTRY.get(at.query_params["finetune"])
    assert job.wait(300).status == "finished"
    at.run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Step"] == "2 / 2" and metrics["Trainable"] == "1.8 k"
    assert next(m.help for m in at.metric if m.label == "Trainable").startswith("1,792 of ")
    assert any("saved in" in s.value for s in at.success)
    answers = at.table[-1].value  # your prompt and the held-out prompts, before and after
    assert answers.shape == (7, 2) and answers.index[0] == "What is the capital of Italy?"
    # st.table renders cells as Markdown: every cell is escaped, so it reads exactly as typed or generated
    before = job.snapshot().info["before"]
    assert answers.index[-1] == md(own) == r"1\. Say \*\*hi\*\* in \`code\` for \$5"
    # undoing the backslashes gives back exactly what the model wrote: nothing dropped or reordered
    assert [re.sub(r"\\(.)", r"\1", cell) for cell in answers["before"]] == \
        [b if b else NO_TEXT for b in before.values()]
    assert (tmp_path / job.snapshot().result.run_dir.split("/")[-1] / "model" / "config.json").is_file()
    at.button(key="ft_again").click().run()  # back to the settings, the finished run offered for resuming
    assert_clean(at)
    assert "finetune" not in at.query_params and at.button(key="ft_start")
    assert at.selectbox(key="ft_resume").options[1] == job.snapshot().result.run_dir.split("/")[-1]
    at.selectbox(key="ft_resume").select_index(1).run()
    at.number_input(key="ft_resume_steps").set_value(3).run()
    at.button(key="ft_start").click().run()  # resume: the step count and the curve continue
    resumed = REGISTRY.get(at.query_params["finetune"])
    snap = resumed.wait(300)
    assert snap.status == "finished" and [m["step"] for m in snap.metrics] == [0, 1, 2, 3]
    assert snap.result.run_dir == job.snapshot().result.run_dir


# ---------------------------------------------------------------- the embedded model


@pytest.mark.embedded
def test_embedded_lora_count_and_loss_falls(embedded, tmp_path):
    cfg = FinetuneConfig(mode="lora", lora_r=8, lora_targets="q,v", learning_rate=2e-3, steps=8, batch_size=4,
                         max_new_tokens=2, eval_every=8, checkpoint_every=100)
    assert preview(embedded.config, cfg)["trainable"] == 460_800
    _, result = run(embedded, cfg, tmp_path / "emb", fd.load_instructions())
    assert result.trainable == 460_800
    assert result.val_loss_end < result.val_loss_start


def test_exploding_loss_fails_the_job_and_keeps_the_last_checkpoint(load, tmp_path):
    lm = load("tiny-llama")
    cfg = FinetuneConfig(mode="full", learning_rate=1e30, steps=20, **{**FAST, "checkpoint_every": 1})
    snap = JobRegistry().start("finetune", "t", lambda j: finetune(j, lm, cfg, tmp_path / "r", FEW)).wait(120)
    assert snap.status == "failed" and "The loss became" in snap.message and "too high" in snap.message
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    assert state["step"] == snap.step  # the last finite step is the checkpoint kept
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "failed"
