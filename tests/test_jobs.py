"""core.jobs: the worker/page protocol, pause and stop, live controls, limits and failures."""

from __future__ import annotations

import threading
import time

import pytest

from core.jobs import JobError, JobLimitError, JobPermissionError, JobRegistry


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


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_one_job_per_owner_and_a_queue_instead_of_refusals():
    reg = JobRegistry(max_running=2, max_per_owner=1)
    gate = threading.Event()
    a = reg.start("count", "a", counting_work(3, gate), total_steps=3)
    with pytest.raises(JobLimitError, match="already have a job"):
        reg.start("count", "a", counting_work(1))
    b = reg.start("count", "b", counting_work(3, gate), total_steps=3)
    c = reg.start("count", "c", counting_work(1), total_steps=1)
    d = reg.start("count", "d", counting_work(1), total_steps=1)
    assert [a.snapshot().status, b.snapshot().status] == ["running", "running"]
    sc, sd = c.snapshot(), d.snapshot()
    assert (sc.status, sc.queue_position, sd.queue_position) == ("queued", 1, 2)
    assert "position 1 of 2" in sc.message and "do not need to press start again" in sc.message
    with pytest.raises(JobLimitError, match="already have a job queued"):
        reg.start("count", "c", counting_work(1))  # a queued job counts as the owner's one job
    gate.set()  # a and b finish; c and d start by themselves, first come first served
    assert c.wait(10).status == "finished" and d.wait(10).status == "finished"
    assert c.snapshot().queue_position is None


def test_a_queued_job_can_be_cancelled_and_never_runs():
    reg = JobRegistry(max_running=1)
    gate = threading.Event()
    a = reg.start("count", "a", counting_work(2, gate), total_steps=2)
    ran = []
    b = reg.start("count", "b", lambda job: ran.append(1))
    b.stop(by="b")
    assert b.wait(1).status == "stopped" and "queue" in b.snapshot().message
    gate.set()
    a.wait(10)
    time.sleep(0.05)
    assert ran == []


def test_only_the_owner_steers_a_job_a_watcher_reads_it():
    reg = JobRegistry()
    gate = threading.Event()
    job = reg.start("count", "teacher-token", counting_work(5, gate), total_steps=5, controls={"lr": 0.1})
    for action in (lambda: job.pause(by="student"), lambda: job.stop(by="student"),
                   lambda: job.set_control("lr", 5.0, by="student"), lambda: job.set_shown(True, by="student")):
        with pytest.raises(JobPermissionError):
            action()
    assert job.snapshot().status == "running" and job.snapshot().controls["lr"] == 0.1
    job.set_shown(True, by="teacher-token")
    assert reg.shown() == [job]
    job.stop(by="teacher-token")
    gate.set()
    assert job.wait(10).status == "stopped"


def test_a_paused_job_gives_up_its_slot_after_the_limit_and_its_estimate_does_not_grow():
    reg = JobRegistry(max_running=1, pause_limit_s=0.6)
    gate = threading.Event()
    gate.set()
    a = reg.start("count", "a", counting_work(10_000, gate, pace=0.01), total_steps=10_000)
    wait_for(lambda: a.snapshot().step >= 3)
    a.pause(by="a")
    b = reg.start("count", "b", counting_work(1), total_steps=1)
    assert b.snapshot().status == "queued"
    time.sleep(0.1)
    left1 = a.snapshot().seconds_left
    time.sleep(0.3)
    left2 = a.snapshot().seconds_left
    assert left1 is not None and left2 == pytest.approx(left1, rel=1e-6)  # paused time is not running time
    snap = a.wait(10)
    assert snap.status == "stopped" and "Paused for over" in snap.message
    assert b.wait(10).status == "finished"  # the slot went to the queue


def test_the_estimate_of_a_resumed_run_counts_only_its_own_steps():
    reg = JobRegistry()
    gate = threading.Event()

    def work(job):
        job.seed_metrics([{"step": s} for s in range(1, 901)], 900)  # an earlier run reached step 900
        for step in range(901, 1001):
            job.tick()
            gate.wait()
            time.sleep(0.01)
            job.report(step, {"step": step})

    job = reg.start("count", "a", work, total_steps=1000)
    gate.set()
    wait_for(lambda: job.snapshot().step >= 950)
    snap = job.snapshot()
    pace = snap.active_s / (snap.step - 900)
    assert snap.start_step == 900
    assert snap.seconds_left == pytest.approx((1000 - snap.step) * pace, rel=1e-6)
    job.wait(10)


def test_a_job_stops_at_the_hosts_wall_time_cap():
    reg = JobRegistry(max_active_s=0.2)
    snap = reg.start("count", "a", counting_work(10_000, pace=0.01), total_steps=10_000).wait(10)
    assert snap.status == "stopped" and "limit of" in snap.message and snap.step < 10_000


def test_memory_admission_queues_a_job_until_its_peak_fits_and_refuses_one_that_never_can():
    rss = [100 * 2**20]
    reg = JobRegistry(max_running=4, budget_bytes=1000 * 2**20, rss=lambda: rss[0])
    with pytest.raises(JobLimitError, match="could never start here"):
        reg.start("big", "x", counting_work(1), peak_bytes=2000 * 2**20)
    gate = threading.Event()
    a = reg.start("count", "a", counting_work(1, gate), peak_bytes=600 * 2**20)
    b = reg.start("count", "b", counting_work(1), peak_bytes=600 * 2**20)  # 100 + 600 + 600 > 1000
    snap = b.snapshot()
    assert snap.status == "queued" and "waiting for memory" in snap.message
    gate.set()
    assert a.wait(10).status == "finished" and b.wait(10).status == "finished"


def test_heavy_request_work_is_admitted_against_the_same_budget():
    rss = [100 * 2**20]
    reg = JobRegistry(max_running=4, budget_bytes=1000 * 2**20, rss=lambda: rss[0])
    with reg.heavy(700 * 2**20, "a PPO step"):
        b = reg.start("count", "b", counting_work(1), peak_bytes=600 * 2**20)
        assert b.snapshot().status == "queued"  # the heavy work's bytes are reserved
        with pytest.raises(JobLimitError, match="did not start"):
            with reg.heavy(100 * 2**20, "a KV-cache measurement", timeout_s=0.1):
                pass
    assert b.wait(10).status == "finished"


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


def test_a_queued_panel_polls_less_often_than_a_running_one(monkeypatch):
    """28 of a class's 30 panels wait in the queue: they refresh every 3 s, the running ones every second."""
    import ui.jobs

    reg = JobRegistry(max_running=1)
    gate = threading.Event()
    running = reg.start("count", "a", counting_work(2, gate), total_steps=2)
    queued = reg.start("count", "b", counting_work(1))
    intervals = []

    def fragment(run_every=None):
        intervals.append(run_every)
        return lambda fn: (lambda: None)  # the panel's body needs a script run; its interval is what counts

    monkeypatch.setattr(ui.jobs.st, "fragment", fragment)
    ui.jobs.live_panel(running, lambda snap: None)
    ui.jobs.live_panel(queued, lambda snap: None)
    assert intervals == [1.0, ui.jobs.QUEUED_EVERY_S] and ui.jobs.QUEUED_EVERY_S == 3.0
    gate.set()
    running.wait(10)
    queued.wait(10)
