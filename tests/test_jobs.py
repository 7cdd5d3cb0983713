"""core.jobs: the worker/page protocol, pause and stop, live controls, limits and failures."""

from __future__ import annotations

import threading
import time

import pytest

from core.jobs import JobError, JobLimitError, JobRegistry


def counting_work(steps: int, gate: threading.Event | None = None, pace: float = 0.0):
    def work(job):
        for step in range(1, steps + 1):
            job.tick()
            if gate is not None:
                gate.wait()
            time.sleep(pace)
            job.report(step, {"step": step, "lr": job.control("lr")})
        return {"done": steps}
    return work


def test_job_runs_reports_and_returns_result():
    reg = JobRegistry()
    job = reg.start("count", "alice", counting_work(5), total_steps=5, controls={"lr": 0.1})
    snap = job.wait(10)
    assert snap.status == "finished"
    assert snap.step == 5 and snap.fraction == 1.0
    assert [m["step"] for m in snap.metrics] == [1, 2, 3, 4, 5]
    assert snap.result == {"done": 5}


def test_pause_resume_stop_and_control_change_take_effect_between_steps():
    reg = JobRegistry()
    gate = threading.Event()
    job = reg.start("count", "bob", counting_work(10_000, gate, pace=0.002), total_steps=10_000, controls={"lr": 1.0})
    gate.set()
    while job.snapshot().step < 3:
        time.sleep(0.005)
    job.pause()
    time.sleep(0.05)
    paused_at = job.snapshot().step
    time.sleep(0.1)
    assert job.snapshot().status == "paused"
    assert job.snapshot().step <= paused_at + 1  # at most the step in flight when pause was asked
    job.set_control("lr", 0.5)
    job.resume()
    while job.snapshot().metrics[-1]["lr"] != 0.5:
        time.sleep(0.005)
    job.stop()
    snap = job.wait(10)
    assert snap.status == "stopped"
    assert snap.step < 10_000


def test_limits_per_owner_and_global_say_when_a_slot_frees():
    reg = JobRegistry(max_running=2, max_per_owner=1)
    gate = threading.Event()
    a = reg.start("count", "a", counting_work(3, gate), total_steps=3)
    with pytest.raises(JobLimitError, match="already have a job"):
        reg.start("count", "a", counting_work(1))
    b = reg.start("count", "b", counting_work(3, gate), total_steps=3)
    with pytest.raises(JobLimitError, match="2 job slots"):
        reg.start("count", "c", counting_work(1))
    gate.set()
    a.wait(10), b.wait(10)
    assert reg.start("count", "c", counting_work(1)).wait(10).status == "finished"


def test_failures_end_the_job_with_a_readable_message():
    reg = JobRegistry()

    def bad(job):
        raise JobError("loss became NaN at step 7; the last good checkpoint is kept")

    snap = reg.start("bad", "x", bad).wait(10)
    assert snap.status == "failed" and "NaN at step 7" in snap.message

    def bug(job):
        return 1 / 0

    snap = reg.start("bug", "x", bug).wait(10)
    assert snap.status == "failed" and snap.message.startswith("ZeroDivisionError")


def test_job_ids_are_unguessable_and_only_found_by_id():
    reg = JobRegistry()
    job = reg.start("count", "a", counting_work(1))
    assert len(job.id) >= 12
    assert reg.get(job.id) is job and reg.get("nope") is None and reg.get(None) is None
