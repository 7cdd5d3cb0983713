"""Pre-training: the lab's GPT, its switches, the loop on accelerate, checkpoints and resume, divergence,
the export into stock transformers classes, run names, the CLI (also under torchrun) and the page."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.train import checkpoint as ckpt
from core.train.config import TrainConfig, lr_at
from core.train.export import export_reason, export_run, to_hf
from core.train.model import GPT, GPTConfig
from core.train.pretrain import NullJob, Trainer, TrainingDiverged, make_accelerator, prepare_data, train
from core.runs import run_path, saved_models

ROOT = Path(__file__).resolve().parent.parent
# A config small enough for a few steps per test in a fraction of a second.
SMALL = TrainConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8, max_iters=12, warmup_iters=2,
                    lr_decay_iters=12, learning_rate=3e-3, min_lr=3e-4, eval_interval=4, eval_iters=2,
                    sample_interval=6, sample_tokens=20, max_chars=60_000)
LLAMA = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu"}


# ---------------------------------------------------------------- the model and its switches


def test_baby_gpt_parameter_count_by_hand():
    """nanoGPT's baby GPT: wte + wpe + 4 x (2 LN gains + qkv + proj + 4d MLP) + final LN, head tied."""
    m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False))
    d = 128
    per_layer = 2 * d + 3 * d * d + d * d + 2 * 4 * d * d
    assert m.num_parameters() == 65 * d + 64 * d + 4 * per_layer + d == 804_096
    untied = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False, tie_weights=False))
    assert untied.num_parameters() == 804_096 + 65 * d


@pytest.mark.parametrize("switches, extra", [
    ({}, 0),
    ({"position": "rope"}, -64 * 32),  # no position table
    ({"mlp": "swiglu"}, 2 * (3 * 32 * 88 - 2 * 32 * 128)),  # hidden 8*ceil(32*8/3/8) = 88, three matrices
    ({"norm": "rmsnorm"}, 0),  # bias=False: a LayerNorm without bias has the same single gain vector
    ({"norm_position": "post"}, -32),  # no final norm
])
def test_switch_shapes_and_counts(switches, extra):
    base = GPTConfig(vocab_size=50, block_size=64, n_layer=2, n_head=4, n_embd=32, bias=False)
    ref = GPT(base).num_parameters()
    m = GPT(replace(base, **switches))
    with torch.no_grad():
        logits, loss = m(torch.randint(0, 50, (3, 20)), torch.randint(0, 50, (3, 20)))
    assert logits.shape == (3, 20, 50)
    assert m.num_parameters() - ref == extra
    assert abs(float(loss) - math.log(50)) < 0.5  # a fresh model is close to uniform


def test_bad_init_starts_far_above_uniform():
    config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=64, init="bad")
    x, y = torch.randint(0, 65, (2, 4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, bad = GPT(config, torch.Generator().manual_seed(0))(x, y)
        _, good = GPT(replace(config, init="scaled"), torch.Generator().manual_seed(0))(x, y)
    assert float(bad) > 3 * math.log(65) and abs(float(good) - math.log(65)) < 0.3


def test_schedule_warmup_then_cosine():
    c = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110)
    assert lr_at(c, 0) == pytest.approx(1e-3 / 11)
    assert lr_at(c, 10) == pytest.approx(1e-3)
    assert lr_at(c, 60) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(c, 500) == pytest.approx(1e-4)


# ---------------------------------------------------------------- configs a student can get wrong


@pytest.mark.parametrize("changes, message", [
    ({"n_embd": 30, "n_head": 4}, "divisible"),
    ({"learning_rate": 0.0}, "learning rate"),
    ({"learning_rate": -1e-3}, "learning rate"),
    ({"dataset": "pasted", "text": "   "}, "empty"),
    ({"dataset": "pasted", "text": "to be or not to be " * 20, "block_size": 64}, "block_size"),
    ({"batch_size": 100_000, "block_size": 1024, "n_embd": 1024, "n_head": 8}, "free"),
    ({"tokenizer": "words"}, "tokenizer"),
])
def test_bad_configs_are_refused_with_a_message(changes, message):
    with pytest.raises(ValueError, match=message):
        prepare_data(replace(SMALL, **changes))


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"n_layers": 4})
    assert TrainConfig.from_dict({"n_layer": "6", "bias": "false"}).n_layer == 6


# ---------------------------------------------------------------- the loop, checkpoints, resume, divergence


def test_a_few_steps_lower_the_loss():
    trainer = Trainer(replace(SMALL, learning_rate=1e-2), prepare_data(replace(SMALL)), make_accelerator())
    first = trainer.evaluate()["val"]
    for _ in range(25):
        trainer.train_step()
    assert trainer.evaluate()["val"] < first - 0.5


def test_checkpoint_resume_continues_step_count_and_curve(tmp_path):
    straight = train(replace(SMALL), tmp_path / "a", export=False)
    full = ckpt.read_metrics(tmp_path / "a")
    part = train(replace(SMALL, max_iters=8), tmp_path / "b", export=False)
    assert part["step"] == 8 and ckpt.latest_checkpoint(tmp_path / "b").name == "step-000008"
    resumed = train(replace(SMALL), tmp_path / "b", resume=True, export=False)
    rows = ckpt.read_metrics(tmp_path / "b")
    assert [r["step"] for r in rows] == list(range(1, 13))
    # same batches, restored AdamW moments: the resumed curve is the uninterrupted one
    for r, f in zip(rows, full):
        assert r["train_loss"] == pytest.approx(f["train_loss"], abs=1e-5)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)
    assert rows[-1]["elapsed_s"] > rows[7]["elapsed_s"]  # elapsed time continues too
    assert (tmp_path / "b" / "samples.txt").read_text().count("--- step") == 2 + 1  # 6, 8 (end), 12


def test_stop_writes_a_checkpoint_and_the_job_resumes_from_it(tmp_path):
    from core.jobs import REGISTRY

    config = replace(SMALL, max_iters=10_000, eval_interval=1000, sample_interval=0)
    job = REGISTRY.start("pretrain", "test-stop", lambda j: train(config, tmp_path, j, export=False), total_steps=10_000)
    deadline = time.time() + 120
    while job.snapshot().step < 3 and time.time() < deadline:
        time.sleep(0.05)
    job.stop()
    snap = job.wait(120)
    assert snap.status == "stopped" and not job.thread.is_alive()
    stopped_at = int(ckpt.latest_checkpoint(tmp_path).name.split("-")[1])
    assert stopped_at == snap.step >= 3 and len(ckpt.read_metrics(tmp_path)) == stopped_at
    job = REGISTRY.start("pretrain", "test-stop", lambda j: train(replace(config, max_iters=stopped_at + 2), tmp_path,
                                                                  j, resume=True, export=False))
    snap = job.wait(120)
    assert snap.status == "finished" and [r["step"] for r in snap.metrics] == list(range(1, stopped_at + 3))


class _LrBomb(NullJob):
    """From step 10 on, the page 'sets' an absurd learning rate."""

    def __init__(self, trainer_step):
        super().__init__()
        self.step = trainer_step

    def control(self, name, default=None):
        return 1e12 if name == "lr" and self.step() >= 10 else default


def test_exploding_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = replace(SMALL, max_iters=40, eval_interval=5, grad_clip=0.0)
    holder = {}

    class Job(_LrBomb):
        def report(self, step=None, metrics=None, **info):
            if step is not None:
                holder["step"] = step

    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(config, tmp_path, Job(lambda: holder.get("step", 0)), export=False)
    last = ckpt.latest_checkpoint(tmp_path)
    assert last.name == "step-000010"
    m = GPT(config.model_config(prepare_data(config).vocab_size))
    assert ckpt.load_checkpoint(last, m) == 10
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "diverged"


def test_lesson_alternates_two_runs_in_one_job():
    from core.jobs import REGISTRY
    from core.train.lessons import LESSONS, run_lesson

    job = REGISTRY.start("lesson", "test-lesson", lambda j: run_lesson("init", j, max_iters=4), total_steps=4)
    snap = job.wait(120)
    assert snap.status == "finished", snap.message
    labels = LESSONS["init"].labels
    assert [r["run"] for r in snap.metrics] == list(labels) * 4 and snap.step == 4
    first = {r["run"]: r["train_loss"] for r in snap.metrics if r["step"] == 1}
    assert first[labels[1]] > 3 * first[labels[0]]  # N(0, 1) starts far above N(0, 0.02)
    assert set(snap.result) == set(labels) and all(v["val_loss"] is not None for v in snap.result.values())


# ---------------------------------------------------------------- export into stock transformers classes


@pytest.mark.parametrize("switches, cls", [
    ({}, "GPT2LMHeadModel"),
    ({"bias": True, "tie_weights": False}, "GPT2LMHeadModel"),
    (LLAMA, "LlamaForCausalLM"),
    ({**LLAMA, "bias": True, "tie_weights": False}, "LlamaForCausalLM"),
])
def test_export_parity_with_hf_classes(switches, cls):
    config = replace(SMALL, **switches)
    trainer = Trainer(config, prepare_data(config), make_accelerator())
    for _ in range(3):  # move the weights off their init (biases non-zero)
        trainer.train_step()
    trainer.raw.eval()
    hf = to_hf(trainer.raw)
    assert type(hf).__name__ == cls
    x = torch.randint(0, trainer.data.vocab_size, (2, config.block_size))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, trainer.raw(x)[0], atol=1e-5)
    # GPT-2 always has biases: a bias-free run is exported with zeros there, every other count is equal
    zeros = sum(p.numel() for n, p in hf.named_parameters() if n.endswith("bias") and not p.any())
    assert hf.num_parameters() - zeros == trainer.raw.num_parameters()
    assert zeros == (0 if config.bias or cls.startswith("Llama") else config.n_layer * (2 * 32 + 3 * 32 + 32 + 128 + 32) + 32)


def test_exported_run_opens_with_the_lab_loader(tmp_path, monkeypatch):
    from core.inspect import stepwise
    from core.models.capture import run_forward
    from core.models.loading import ModelSpec, load_model

    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path))
    config = replace(SMALL, **LLAMA)
    trainer = Trainer(config, prepare_data(config), make_accelerator())
    trainer.train_step()
    export_run(trainer.raw, trainer.data, tmp_path / "r1" / "model")
    assert [m.path for m in saved_models()] == [tmp_path / "r1" / "model"]
    lm = load_model(ModelSpec(str(tmp_path / "r1" / "model")))
    text = "First Citizen:\nBefore we proceed"
    assert lm.encode(text) == trainer.data.encode(text) and lm.decode(lm.encode(text)) == text
    cap = run_forward(lm, text, hook_modules=stepwise.parity_hooks(lm))
    with torch.no_grad():
        ours = trainer.raw.eval()(torch.tensor([cap.ids]))[0][0]
    assert torch.allclose(cap.logits.float().cpu(), ours, atol=1e-5)
    assert stepwise.parity(lm, cap, chained=True).as_dict()["ok"]


def test_post_ln_is_not_exported_and_says_why(tmp_path):
    config = replace(SMALL, norm_position="post", max_iters=4)
    assert "No stock transformers class" in export_reason(config)
    train(config, tmp_path, export=True)
    assert ckpt.latest_checkpoint(tmp_path) is not None and not (tmp_path / "model").exists()
    assert "post" in json.loads((tmp_path / "run.json").read_text())["export_note"]


# ---------------------------------------------------------------- run names and the runs folder cap


@pytest.mark.parametrize("name", ["../evil", "/etc", "a/b", "", "bad name!", ".hidden", "x" * 65, "..", "a..b"])
def test_run_names_that_could_leave_the_runs_folder_are_refused(name, tmp_path):
    with pytest.raises(ValueError):
        run_path(name, tmp_path)


# ---------------------------------------------------------------- command line


def _cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m core ARGS` in this process (the same entry point; a subprocess would import torch again)."""
    from core.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _small_json(tmp_path: Path, **changes) -> Path:
    values = {k: v for k, v in replace(SMALL, **changes).to_dict().items() if k not in ("text", "chars")}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(values))
    return path


def test_cli_short_run_and_resume(tmp_path, capsys):
    code, out, err = _cli(capsys, "train", "--config", str(_small_json(tmp_path)), "--out", str(tmp_path / "run"),
                          "--max-iters", "4")
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == 4 and result["exported"] and result["parameters"] > 0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "tokens"]
    code, out, err = _cli(capsys, "train", "--out", str(tmp_path / "run"), "--resume", "--max-iters", "6")
    assert code == 0, err
    assert json.loads(out)["step"] == 6 and len(ckpt.read_metrics(tmp_path / "run")) == 6
    per_step = SMALL.batch_size * SMALL.block_size * SMALL.gradient_accumulation_steps
    assert [r["tokens"] for r in ckpt.read_metrics(tmp_path / "run")] == [per_step * s for s in range(1, 7)]
    assert "step 6: train loss" in err  # progress on stderr, JSON alone on stdout


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = _cli(capsys, "train", "--config", str(_small_json(tmp_path, n_head=3)), "--out", str(tmp_path / "r"))
    assert code == 2 and err.strip().startswith("error:") and "divisible" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "train", "--out", str(tmp_path / "nothing-here"), "--resume")
    assert code == 2 and "no config.json" in err


def test_shipped_baby_gpt_config_is_nanogpts():
    values = json.loads((ROOT / "data" / "train_configs" / "shakespeare_char.json").read_text())
    config = TrainConfig.from_dict(values)
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size, config.batch_size) == (4, 4, 128, 64, 12)
    assert (config.learning_rate, config.max_iters, config.lr_decay_iters, config.dropout) == (1e-3, 2000, 2000, 0.0)


@pytest.mark.timeout(120)
def test_torchrun_two_processes_write_one_checkpoint(tmp_path):
    """Two CPU processes over gloo (Accelerator: MULTI_CPU); only the main process writes files."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cfg = _small_json(tmp_path, n_layer=1, eval_iters=1, eval_interval=2, sample_interval=0)
    out = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "core", "train", "--config", str(cfg),
                          "--out", str(tmp_path / "ddp"), "--max-iters", "2", "--no-export"],
                         cwd=ROOT, capture_output=True, text=True, timeout=110,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)  # one JSON object: only the main process prints
    assert result["processes"] == 2 and "MULTI_CPU" in result["distributed"]
    assert [d.name for d in (tmp_path / "ddp" / "checkpoints").iterdir()] == ["step-000002"]
    rows = ckpt.read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in rows] == [1, 2]
    # Each process trains on its own batches: the run saw both processes' tokens, in metrics, run.json and on
    # the Scaling laws page.
    per_step = 2 * SMALL.batch_size * SMALL.block_size * SMALL.gradient_accumulation_steps
    assert [r["tokens"] for r in rows] == [per_step, 2 * per_step] and result["tokens"] == 2 * per_step
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["tokens"] == 2 * per_step
    from core.hardware.scaling import training_runs

    assert [p["tokens"] for p in training_runs(tmp_path)] == [2 * per_step]


# ---------------------------------------------------------------- the page


def test_page_starts_a_short_job_and_shows_metrics(tmp_path, monkeypatch):
    from pagetest import assert_clean, run_page

    from core.jobs import REGISTRY

    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path))
    at = run_page("pages/10_Pretraining.py", pt_iters=6, pt_layers=1, pt_width=32, pt_heads=2, pt_block=16,
                  pt_eval=3, pt_sample=3, pt_evaliters=2, pt_chars=50_000, pt_name="page-test")
    assert_clean(at)
    assert any("parameters" in c.value for c in at.caption)
    at.button(key="pt_start").click().run()
    assert_clean(at)
    job = REGISTRY.get(at.query_params["train"][0] if isinstance(at.query_params["train"], list)
                       else at.query_params["train"])
    snap = job.wait(120)
    assert snap.status == "finished", snap.message
    at.run()
    assert_clean(at)
    labels = {m.label: m.value for m in at.metric}
    assert float(labels["val loss"]) == pytest.approx(snap.result["val_loss"], abs=1e-3)
    # short enough not to be cut off in its column ("2.7e-4", not "2.65e-04"), and still the real rate
    assert len(labels["learning rate"]) <= 7
    assert float(labels["learning rate"]) == pytest.approx(snap.metrics[-1]["lr"], rel=0.05)
    # the schedule and the gradient norm are drawn per step from the job's own rows
    import pyarrow as pa

    for field in ("lr", "grad_norm"):
        chart = next(c for c in at.get("vega_lite_chart") if f'"field": "{field}"' in c.proto.spec)
        drawn = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pylist()
        assert [r[field] for r in drawn] == pytest.approx([m[field] for m in snap.metrics])
    assert (tmp_path / "page-test" / "model" / "config.json").is_file()
    # a second run with the same name is refused with a message, not overwritten
    at.button(key="pt_new").click().run()
    at.button(key="pt_start").click().run()
    assert any("exists already" in e.value for e in at.error)


def test_page_refuses_bad_input_with_a_message(tmp_path, monkeypatch):
    from pagetest import assert_clean, run_page

    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path))
    at = run_page("pages/10_Pretraining.py", pt_width=30, pt_heads=4)
    assert_clean(at)
    assert any("divisible" in e.value for e in at.error)
    at = run_page("pages/10_Pretraining.py", pt_name="../escape", pt_iters=2)
    at.button(key="pt_start").click().run()
    assert_clean(at)
    assert any("not allowed" in e.value for e in at.error)
    assert "train" not in at.query_params
