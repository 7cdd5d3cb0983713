"""A class on one server, seen from the Pre-training page (AppTest): watchers, refusals, the cap, dead runs."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from core.jobs import REGISTRY
from core.runs import RECENT_S, RunLease, reserve_run, run_info, write_json
from core.train.config import TrainConfig
from ui.jobs import OWNER_KEY

TEACHER, STUDENT = "teacher-token-0123456789", "student-token-0123456789"


def gated_job(owner: str, gate: threading.Event):
    def work(job):
        for step in range(1, 1000):
            job.tick()
            gate.wait()
            job.report(step)
    return REGISTRY.start("pretrain", owner, work, title="pre-training lecture", total_steps=1000)


def page(tmp_path, monkeypatch, owner: str, **query):
    from streamlit.testing.v1 import AppTest

    from core.models.loading import ModelSpec
    from tests_paths import ROOT
    from ui.models import SPEC_KEY

    monkeypatch.setenv("LLM_LAB_RUNS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "pages/10_Pretraining.py"), default_timeout=180)
    at.session_state[SPEC_KEY] = ModelSpec("tiny-llama")
    at.session_state[OWNER_KEY] = owner
    for k, v in query.items():
        at.query_params[k] = v
    return at


def test_a_shared_link_lets_a_student_watch_but_not_pause_stop_or_change_the_rate(tmp_path, monkeypatch):
    gate = threading.Event()
    job = gated_job(TEACHER, gate)
    try:
        at = page(tmp_path, monkeypatch, STUDENT, train=job.id).run()
        assert not at.exception
        keys = {b.key for b in at.button}
        assert not keys & {"pt_pause", "pt_stop", "pt_lr_set", "pt_lr_sched"}
        assert any("watching" in c.value and "read-only" in c.value for c in at.caption)
        at = page(tmp_path, monkeypatch, TEACHER, train=job.id).run()
        assert {"pt_pause", "pt_stop", "pt_lr_set"} <= {b.key for b in at.button}
        at.button(key="pt_pause").click().run()
        assert job.snapshot().status == "paused"
    finally:
        job.stop()
        gate.set()
        job.wait(10)


def old_finished_run(root, name: str, owner: str, size: int = 50_000) -> None:
    d = root / name
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(b"x" * size)
    write_json(d / "run.json", {"owner": owner, "status": "finished", "updated": time.time() - 2 * RECENT_S})


def test_a_refused_start_deletes_nothing_and_a_real_start_shows_what_the_cap_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LAB_RUNS_CAP_MB", "0.01")  # 10 KiB: any start must make room
    old_finished_run(tmp_path, "old-run", "someone-else")
    gate = threading.Event()
    mine = gated_job(STUDENT, gate)  # this person already has a job: the next start is refused
    small = dict(pt_iters=3, pt_layers=1, pt_width=32, pt_heads=2, pt_block=16, pt_eval=3, pt_sample=0,
                 pt_evaliters=1, pt_chars=20_000, pt_name="second")
    try:
        at = page(tmp_path, monkeypatch, STUDENT)
        for k, v in small.items():
            at.session_state[k] = v
        at.run()
        at.button(key="pt_start").click().run()
        assert not at.exception
        assert any("already have a job" in w.value for w in at.warning)
        assert (tmp_path / "old-run").is_dir() and not (tmp_path / "second").exists()
    finally:
        mine.stop()
        gate.set()
        mine.wait(10)
    at.button(key="pt_start").click().run()
    job = REGISTRY.get(at.query_params["train"][0] if isinstance(at.query_params["train"], list)
                       else at.query_params["train"])
    assert job.wait(120).status == "finished"
    assert not (tmp_path / "old-run").exists()
    at.run()
    assert any("removed an older run old-run" in c.value for c in at.caption)


def test_a_dead_run_is_listed_as_interrupted_with_its_own_length_and_a_live_one_cannot_be_resumed(
        tmp_path, monkeypatch):
    config = replace(TrainConfig(), max_iters=300)
    for name, status in (("killrun", "running"), ("livrun", "running")):
        d = tmp_path / name
        (d / "checkpoints" / "step-000200").mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(config.to_dict()))
        write_json(d / "run.json", {"owner": TEACHER, "status": status, "step": 200, "kind": "pretrain",
                                    "updated": time.time() - 5})
    lease = RunLease.claim(tmp_path / "livrun", owner=TEACHER, job_id="j")
    try:
        at = page(tmp_path, monkeypatch, TEACHER).run()
        assert not at.exception
        box = at.selectbox(key="pt_resume_run")
        assert any("killrun" in o and "interrupted" in o for o in box.options)
        assert not any("killrun" in o and "running" in o for o in box.options)
        box.set_value("killrun").run()
        assert at.number_input(key="pt_resume_iters_killrun").value == 300  # the run's own length, not 2000
        box = at.selectbox(key="pt_resume_run")
        box.set_value("livrun").run()
        assert at.button(key="pt_resume").disabled
    finally:
        lease.release(status="stopped")


def test_a_second_run_with_a_taken_name_is_refused_before_it_queues(tmp_path):
    run = tmp_path / "r"
    reserve_run(run, job_id="a", owner=TEACHER, kind="pretrain")
    with pytest.raises(ValueError, match="exists already"):
        reserve_run(run, job_id="b", owner=STUDENT, kind="pretrain")
    assert run_info(run)["owner"] == TEACHER


def test_a_pretraining_jobs_declared_peak_follows_its_measured_memory():
    """What the queue admits by: weights, gradients and AdamW state counted from the real tensors after a
    step, plus the allocator's peak of one forward + backward (torch.profiler), within 25 %."""
    from core.train.pretrain import Trainer, make_accelerator, measure_step_bytes, peak_bytes, prepare_data, state_bytes

    config = replace(TrainConfig(), n_layer=2, n_head=2, n_embd=64, block_size=32, batch_size=8, max_iters=1,
                     max_chars=50_000)
    data = prepare_data(config)
    trainer = Trainer(config, data, make_accelerator())
    trainer.train_step(None)
    measured = state_bytes(trainer.raw, trainer.optimizer, data) + measure_step_bytes(config, data.vocab_size)
    assert peak_bytes(config, data) == pytest.approx(measured, rel=0.25)


def test_an_alignment_jobs_declared_peak_covers_the_copies_it_really_makes(load):
    """The reward model's private backbone and DPO's policy + reference are counted from real tensors."""
    from core.align import memory
    from core.align.common import private_copy
    from core.align.reward import RewardModel

    lm = load("tiny-llama")
    n = sum(p.numel() for p in lm.model.parameters())
    rm = RewardModel(lm.model, lm.tokenizer)
    held = sum(t.numel() * t.element_size() for t in rm.state_dict().values())
    assert held <= memory.peak_bytes("reward", n, lm.config) - memory.activation_bytes(lm.config, 8 * 256) + 4 * 2**20
    policy, ref = private_copy(lm.model), private_copy(lm.model, trainable=False)
    copies = sum(t.numel() * t.element_size() for m in (policy, ref) for t in m.state_dict().values())
    trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert copies + 12 * trained <= memory.peak_bytes("dpo", n, lm.config)  # + gradients and AdamW moments


def test_the_server_does_not_collect_all_garbage_after_every_rerun():
    """Streamlit's default runs gc.collect(2) after every script and fragment run; with the model's libraries
    loaded one full collection walks ~455,000 objects (~0.2 s holding the interpreter). A class's 30 live panels
    spent 65 % of the server's time there (py-spy) and a tiny pre-training step took 3 s. The project's config
    turns it off; what one full collection has to walk is counted here (its time is in bench/class_jobs.py)."""
    import gc
    import tomllib

    import streamlit  # noqa: F401  (the libraries a served page has loaded)
    import transformers  # noqa: F401

    from tests_paths import ROOT

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False
    gc.collect(2)
    assert len(gc.get_objects()) > 100_000
