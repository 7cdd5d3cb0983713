"""The Ray runner against a real local cluster (2 CPUs, every address on loopback): the same jobs, run in Ray
workers, queued by the cluster, steered only by their owner, found again by a restarted server."""

from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from core.jobs import JobPermissionError, JobRegistry  # noqa: E402
from core.train.config import TrainConfig  # noqa: E402
from core.train.pretrain import train  # noqa: E402

pytestmark = pytest.mark.ray
SMALL = replace(TrainConfig(), n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, max_iters=30,
                warmup_iters=2, lr_decay_iters=30, eval_interval=10, eval_iters=1, sample_interval=0, max_chars=20_000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ray_cluster):
    """The session's cluster, with this process as its driver: jobs write into a runs folder every node sees."""
    runs = tmp_path_factory.mktemp("ray-runs")
    env = {"LLM_LAB_RAY_ADDRESS": ray_cluster, "LLM_LAB_RUNS": str(runs)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield runs
    finally:
        ray.shutdown()  # the next driver connects afresh, with its own environment
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pretrain(config: TrainConfig, run: Path, owner: str):
    return functools.partial(train, config, run, owner=owner, export=False)


def test_pretraining_runs_in_ray_workers_queued_by_the_cluster(cluster):
    reg = JobRegistry(max_running=1)  # the server's own slots do not limit jobs on the cluster
    jobs = [reg.start("pretrain", f"student{i}", pretrain(SMALL, cluster / f"run{i}", f"student{i}"),
                      title=f"run{i}", total_steps=SMALL.max_iters) for i in range(3)]
    assert all(j.snapshot().status == "queued" and "Ray cluster" in j.snapshot().message for j in jobs)
    snaps = [j.wait(300) for j in jobs]
    assert [s.status for s in snaps] == ["finished"] * 3, [s.message for s in snaps]
    for i, snap in enumerate(snaps):
        assert snap.info["ray_pid"] != os.getpid()  # it ran in a Ray worker, not in this process
        rows = list(csv.DictReader((cluster / f"run{i}" / "metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == list(range(1, SMALL.max_iters + 1))
        assert json.loads((cluster / f"run{i}" / "run.json").read_text())["status"] == "finished"
    # 2 CPUs, one per job: the third started only after one of the first two had ended
    first_end = min(snaps[0].updated_at, snaps[1].updated_at)
    assert snaps[2].started_at >= first_end - 0.5


def test_only_the_owner_steers_a_ray_job_and_a_restarted_server_finds_it(cluster):
    reg = JobRegistry()
    long = replace(SMALL, max_iters=100_000, lr_decay_iters=100_000, eval_interval=50)
    job = reg.start("pretrain", "teacher", pretrain(long, cluster / "lecture", "teacher"), title="lecture",
                    total_steps=long.max_iters)
    import time

    deadline = time.time() + 180
    while job.snapshot().step < 5:
        assert time.time() < deadline, job.snapshot().message
        time.sleep(0.2)
    with pytest.raises(JobPermissionError):
        job.pause(by="student")
    job.pause(by="teacher")
    while job.snapshot().status != "paused":
        time.sleep(0.1)
    found = JobRegistry().get(job.id)  # a new server process: the job lives on the cluster
    assert found is not None and found is not job and found.owner == "teacher"
    assert found.wait(5).status == "paused"
    found.resume(by="teacher")
    found.stop(by="teacher")
    snap = job.wait(120)
    assert snap.status == "stopped" and json.loads((cluster / "lecture" / "run.json").read_text())["status"] == "stopped"
