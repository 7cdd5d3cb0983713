"""The second runner: jobs on a Ray cluster, when the host sets LLM_LAB_RAY_ADDRESS.

The job is the same `Job` (core/jobs/job.py) and the same work function; it runs inside a Ray actor on
whichever node has the CPUs and memory it asks for, and the page talks to a `RayJob` proxy that has the
`Job` interface (snapshot, the owner's controls, wait). Ray does the queueing: an actor whose resources
are not free yet is pending, and the proxy shows it as queued. The actor is detached and named after the
job id, so a restarted server finds a job that kept running on the cluster (`find`).

The run folder must be on storage every node sees (`LLM_LAB_RUNS`); each node needs this lab installed
(its workers import `core`). Kinds whose work captures a loaded model stay in-process (RAY_KINDS).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from core.jobs.job import Job, JobPermissionError, JobSnapshot

RAY_KINDS = ("pretrain", "lesson")  # their work pickles small: a config and a run folder
NAMESPACE = "llm-anatomy-lab"
ROOT = Path(__file__).resolve().parents[2]
KEEP_AFTER_END_S = 300.0  # an ended job's actor waits this long for its final snapshot to be read, at most


def ray_address() -> str | None:
    return os.environ.get("LLM_LAB_RAY_ADDRESS") or None


def connect() -> Any:
    """ray.init once per process, to the host's cluster.

    Ray turns a loopback address into the machine's outward address; a one-machine cluster on loopback
    (the tests, a laptop) keeps every address on 127.0.0.1 only with Ray's "no cluster" IP rule, which must
    be set before Ray is imported (and for `ray start` too: see the README)."""
    address = ray_address() or ""
    if address.split(":")[0] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # A Ray call after a shutdown would otherwise start a private local cluster (with a new auth token).
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    import ray

    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith("LLM_LAB_") and k != "LLM_LAB_RAY_ADDRESS"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        ray.init(address=ray_address(), namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False,
                 _node_ip_address=os.environ.get("LLM_LAB_RAY_NODE_IP", "127.0.0.1"),
                 runtime_env={"env_vars": env})
    return ray


class _JobActorImpl:
    """Runs one Job in a thread inside a Ray worker; every method is a quick read or a flag."""

    def __init__(self, fields: dict[str, Any], controls: dict[str, Any], work: Callable[[Job], Any]):
        self.job = Job(**fields)
        self.job._controls.update(controls)
        self.job._begin()
        self.job.report(ray_node=os.uname().nodename, ray_pid=os.getpid())
        self.thread = threading.Thread(target=self.job._run, args=(work, self._ended), daemon=True)
        self.thread.start()

    def _ended(self, job: Job) -> None:
        # A detached actor outlives its driver and holds its CPUs while alive: it leaves once the final
        # snapshot was read (`release`), or after KEEP_AFTER_END_S when no server is there to read it.
        threading.Thread(target=lambda: (time.sleep(KEEP_AFTER_END_S), os._exit(0)), daemon=True).start()

    def release(self) -> None:
        threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0)), daemon=True).start()

    def snapshot(self) -> JobSnapshot:
        return self.job.snapshot()

    def call(self, method: str, *args: Any) -> None:
        getattr(self.job, method)(*args)


_actor_class = None


def _actor() -> Any:
    global _actor_class
    if _actor_class is None:
        ray = connect()
        _actor_class = ray.remote(max_concurrency=4)(_JobActorImpl)
    return _actor_class


class RayJob:
    """The page's view of a job running in a Ray actor: the `Job` interface, over Ray calls."""

    def __init__(self, actor: Any, fields: dict[str, Any], cpus: float):
        self.actor, self.cpus = actor, cpus
        self.id, self.kind, self.owner, self.title = fields["id"], fields["kind"], fields["owner"], fields["title"]
        self.total_steps, self.peak_bytes = fields.get("total_steps"), fields.get("peak_bytes", 0)
        self.pause_limit_s = fields.get("pause_limit_s")
        self.thread = None
        self._created = time.time()
        self._last: JobSnapshot | None = None
        self._pending: Any = None
        self._lost: str | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    @classmethod
    def submit(cls, fields: dict[str, Any], controls: dict[str, Any], work: Callable[[Job], Any],
               cpus: float = 1.0) -> "RayJob":
        options: dict[str, Any] = {"num_cpus": cpus, "name": fields["id"], "lifetime": "detached"}
        if fields.get("peak_bytes"):
            options["memory"] = int(fields["peak_bytes"])
        actor = _actor().options(**options).remote(fields, controls, work)
        job = cls(actor, fields, cpus)
        job._follow()
        return job

    def _follow(self) -> None:
        """Read the job's snapshots in the background until it ends, then let its actor go (its CPUs free for
        the next job in the cluster's queue even when no page is open)."""
        def follow() -> None:
            import ray

            while ray.is_initialized() and self.snapshot().active:
                time.sleep(1.0)

        threading.Thread(target=follow, name=f"ray-follow-{self.id}", daemon=True).start()

    @classmethod
    def find(cls, job_id: str) -> "RayJob | None":
        """A job a previous server process started on the cluster, by its id (None if the cluster has none)."""
        ray = connect()
        try:
            actor = ray.get_actor(job_id, namespace=NAMESPACE)
            snap: JobSnapshot = ray.get(actor.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - no such actor, or it died: the job is not on the cluster
            return None
        job = cls(actor, {"id": snap.id, "kind": snap.kind, "owner": snap.owner, "title": snap.title,
                          "total_steps": snap.total_steps, "peak_bytes": snap.peak_bytes}, 1.0)
        job._last = snap
        if not snap.active:
            actor.release.remote()
        else:
            job._follow()
        return job

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> JobSnapshot:
        import ray

        with self._lock:
            if self._lost or self._cancelled or (self._last is not None and not self._last.active):
                return self._final()
            if not ray.is_initialized():  # this process left the cluster: what was last seen
                return self._last if self._last is not None else self._queued()
            if self._pending is None:
                self._pending = self.actor.snapshot.remote()
            try:
                ready, _ = ray.wait([self._pending], timeout=0)  # never block a page: the next poll sees it
                if ready:
                    self._last, self._pending = ray.get(self._pending), None
                    if not self._last.active:
                        self.actor.release.remote()  # the final snapshot is here: the actor may go
            except Exception as exc:  # noqa: BLE001 - the actor or its node died
                self._lost = f"The Ray worker running this job was lost ({type(exc).__name__}); its checkpoints stay."
                return self._final()
            return self._last if self._last is not None else self._queued()

    def _queued(self) -> JobSnapshot:
        return JobSnapshot(id=self.id, kind=self.kind, owner=self.owner, title=self.title, status="queued", step=0,
                           total_steps=self.total_steps, metrics=(), info={}, controls={}, started_at=self._created,
                           updated_at=time.time(), peak_bytes=self.peak_bytes,
                           message=f"Queued on the Ray cluster: it starts by itself when a node has {self.cpus:g} CPU(s)"
                                   + (f" and {self.peak_bytes / 2**20:,.0f} MiB" if self.peak_bytes else "")
                                   + " free. You do not need to press start again.")

    def _final(self) -> JobSnapshot:
        base = self._last or self._queued()
        if self._cancelled and (self._last is None or self._last.active):
            return _replace(base, status="stopped", message="Cancelled while it waited in the queue.")
        if self._lost and (self._last is None or self._last.active):
            return _replace(base, status="failed", message=self._lost)
        return base

    def is_owner(self, who: str | None) -> bool:
        import secrets

        return who is None or secrets.compare_digest(str(who), self.owner)

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        deadline = None if timeout is None else time.time() + timeout
        snap = self.snapshot()
        while snap.active and (deadline is None or time.time() < deadline):
            time.sleep(0.2)
            snap = self.snapshot()
        return snap

    # ------------------------------------------------------------------ the owner's controls
    def _call(self, by: str | None, method: str, *args: Any) -> None:
        import ray

        if not self.is_owner(by):
            raise JobPermissionError("Only the person who started this job can steer it; you are watching it.")
        ray.get(self.actor.call.remote(method, *args), timeout=30)

    def pause(self, by: str | None = None) -> None:
        self._call(by, "pause")

    def resume(self, by: str | None = None) -> None:
        self._call(by, "resume")

    def stop(self, by: str | None = None) -> None:
        import ray

        if not self.is_owner(by):
            raise JobPermissionError("Only the person who started this job can steer it; you are watching it.")
        if self.snapshot().status == "queued":  # not placed yet: take it off the cluster's queue
            ray.kill(self.actor)
            with self._lock:
                self._cancelled = True
            return
        ray.get(self.actor.call.remote("stop"), timeout=30)

    def set_control(self, name: str, value: Any, by: str | None = None) -> None:
        self._call(by, "set_control", name, value)

    def set_shown(self, shown: bool, by: str | None = None) -> None:
        self._call(by, "set_shown", shown)


def _replace(snap: JobSnapshot, **changes: Any) -> JobSnapshot:
    from dataclasses import replace

    return replace(snap, **changes)
