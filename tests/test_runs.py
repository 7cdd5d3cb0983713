"""core.runs: one run lifecycle. Each test is one way a class lost a run before (issue: a class on one server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs import (RECENT_S, RunBusy, RunLease, atomic_write, cap_log, enforce_cap, is_live, list_runs,
                       reserve_run, run_info, run_status, sweep_leftovers, update_run, write_json)

OLD = time.time() - 2 * RECENT_S


def make_run(root: Path, name: str, owner: str, status: str, updated: float, size: int = 1000,
             optimizer: int = 0) -> Path:
    d = root / name
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(b"x" * size)
    if optimizer:
        (d / "checkpoint").mkdir()
        (d / "checkpoint" / "optimizer.pt").write_bytes(b"o" * optimizer)
    write_json(d / "run.json", {"owner": owner, "status": status, "updated": updated})
    return d


def test_cap_removes_ended_runs_the_owners_own_first_oldest_first_and_records_it(tmp_path):
    for i, (owner, status) in enumerate([("me", "finished"), ("other", "finished"), ("me", "stopped"),
                                         ("other", "failed")]):
        make_run(tmp_path, f"run{i}", owner, status, OLD + i)
    actions = enforce_cap(2500, owner="me", root=tmp_path)
    assert [(a.run, a.what, a.owner) for a in actions] == [("run0", "removed", "me"), ("run2", "removed", "me")]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["run1", "run3"]
    # the owner of a removed run finds out later, from the log
    assert [a.run for a in cap_log("me", root=tmp_path)] == ["run0", "run2"]
    assert cap_log("other", root=tmp_path) == []


def test_a_paused_live_run_survives_another_users_cleanup_however_old_its_heartbeat(tmp_path):
    run = tmp_path / "paused"
    reserve_run(run, job_id="j1", owner="teacher", kind="pretrain")
    lease = RunLease.claim(run, owner="teacher", job_id="j1")
    (run / "blob").write_bytes(b"x" * 5000)
    update_run(run, status="paused")
    write_json(run / "run.json", {**run_info(run), "updated": OLD})  # paused for an hour: no heartbeat since
    make_run(tmp_path, "old", "student", "finished", OLD)
    actions = enforce_cap(100, owner="student", root=tmp_path)
    assert [a.run for a in actions] == ["old"] and run.is_dir() and (run / "blob").exists()
    assert is_live(run) and run_status(run) == "paused"
    lease.release(status="stopped")
    assert not is_live(run) and run_status(run) == "stopped"


def test_a_run_saved_minutes_ago_is_never_removed_and_optimizer_state_goes_before_the_model(tmp_path):
    recent = make_run(tmp_path, "ft-full", "a", "finished", time.time() - 60, size=3000, optimizer=6000)
    old = make_run(tmp_path, "ft-old", "b", "finished", OLD, size=3000, optimizer=6000)
    actions = enforce_cap(13_000, owner="c", root=tmp_path)
    # the old run loses its optimizer state first: its exported model stays, and it says so
    assert [(a.run, a.what) for a in actions] == [("ft-old", "dropped optimizer state")]
    assert (old / "model" / "model.safetensors").is_file() and not (old / "checkpoint" / "optimizer.pt").exists()
    assert run_info(old)["resumable"] is False
    # the recent run is untouched even though the folder is still over a smaller cap
    actions = enforce_cap(1000, owner="c", root=tmp_path)
    assert [(a.run, a.what) for a in actions] == [("ft-old", "removed")]
    assert (recent / "checkpoint" / "optimizer.pt").is_file() and (recent / "model").is_dir()


def test_a_folder_being_created_is_left_alone(tmp_path):
    d = tmp_path / "new"
    d.mkdir()
    (d / "blob").write_bytes(b"x" * 5000)  # no run.json yet
    assert enforce_cap(10, root=tmp_path) == []


def test_a_resume_of_a_live_run_is_refused_and_a_name_is_taken_only_once(tmp_path):
    run = tmp_path / "r"
    reserve_run(run, job_id="j1", owner="a", kind="pretrain")
    with pytest.raises(ValueError, match="exists already"):
        reserve_run(run, job_id="j2", owner="b", kind="pretrain")
    reserve_run(run, job_id="j1", owner="a", kind="pretrain")  # the job that reserved it may claim it
    lease = RunLease.claim(run, owner="a", job_id="j1")
    with pytest.raises(RunBusy, match="training right now"):
        RunLease.claim(run, owner="b", job_id="j2")
    lease.release(status="stopped")
    RunLease.claim(run, owner="b", job_id="j3").release(status="finished")
    assert run_info(run)["job_id"] == "j3"


def test_a_run_whose_process_died_is_listed_as_interrupted_never_as_running(tmp_path):
    """A child process claims the run and is killed with SIGKILL: the kernel drops its lock."""
    run = tmp_path / "killrun"
    code = ("import sys, time; from pathlib import Path; from core.runs import reserve_run, RunLease; "
            "r = Path(sys.argv[1]); reserve_run(r, job_id='j', owner='o', kind='pretrain'); "
            "RunLease.claim(r, owner='o', job_id='j').beat(force=True, step=200); print('ok', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout.readline().strip() == "ok"
        assert is_live(run) and run_status(run) == "running"
    finally:
        proc.kill()
        proc.wait()
    assert not is_live(run) and run_status(run) == "interrupted"
    [entry] = list_runs(tmp_path)
    assert (entry.status, entry.step, entry.live) == ("interrupted", 200, False)


def test_leftovers_of_a_killed_write_are_swept_and_live_writers_are_not(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    stale_dir = tmp_path / "r" / f".model.tmp-{dead}-1-abc"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x")
    stale_file = tmp_path / "r" / f".run.json.tmp-{dead}-1-abc"
    stale_file.write_text("{")
    mine = tmp_path / "r" / f".metrics.csv.tmp-{os.getpid()}-1-abc"
    mine.write_text("in progress")
    removed = sweep_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale_dir.name, stale_file.name])
    assert mine.exists() and not stale_dir.exists()


def test_atomic_write_leaves_the_old_file_whole_when_the_write_fails(tmp_path):
    path = tmp_path / "run.json"
    atomic_write(path, "old")

    class Boom(str):
        def encode(self, *a):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, Boom("new"))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]
