"""The process-wide list of jobs: limits, a FIFO queue instead of refusals, memory admission.

A start beyond the limits joins the queue and starts by itself when a slot and the memory it declared
are free; its snapshot says its position and an estimated wait. Refused outright are only: a second
active job of the same owner (one per person, whatever the tab), a job that could never fit the
server's memory budget, and a start when the queue itself is full.

Host settings (environment): LLM_LAB_MAX_JOBS (running at once, default 2), LLM_LAB_MAX_QUEUE (100),
LLM_LAB_PAUSE_LIMIT_S (a pause longer than this stops the job, default 600), LLM_LAB_JOB_MAX_S (wall-time
cap per job, default 7200), LLM_LAB_MEMORY_MB (the budget; see core.jobs.memory).
"""

from __future__ import annotations

import heapq
import os
import secrets
import statistics
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from core.jobs import memory, ray_runner
from core.jobs.job import HOLDS_SLOT, Job, JobLimitError
from core.units import format_bytes, format_duration


class JobRegistry:
    """Jobs of this server; one instance (`REGISTRY`) serves every session."""

    def __init__(self, max_running: int = 2, max_per_owner: int = 1, keep_finished: int = 64,
                 max_queue: int = 100, pause_limit_s: float | None = 600.0, max_active_s: float | None = 7200.0,
                 budget_bytes: int | None = None, rss: Callable[[], int] = memory.rss_bytes):
        self.max_running = max_running
        self.max_per_owner = max_per_owner
        self.keep_finished = keep_finished
        self.max_queue = max_queue
        self.pause_limit_s = pause_limit_s
        self.max_active_s = max_active_s
        self.budget_bytes, self.budget_source = ((budget_bytes, "set by the caller") if budget_bytes is not None
                                                 else memory.budget_bytes())
        self._rss = rss
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: list[tuple[Job, Callable[[Job], Any]]] = []
        self._aliases: dict[str, str] = {}
        self._heavy: dict[int, int] = {}  # request-thread work in progress: id -> declared bytes
        self._durations: dict[str, list[float]] = {}  # kind -> running seconds of finished jobs
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._idle_rss = rss()

    # ------------------------------------------------------------------ starting
    def start(self, kind: str, owner: str, work: Callable[[Job], Any], *, title: str = "",
              total_steps: int | None = None, controls: dict[str, Any] | None = None, peak_bytes: int = 0,
              job_id: str | None = None) -> Job:
        """Run `work(job)` in a daemon thread now, or queue it; JobLimitError only for the refusals above."""
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == owner and j.snapshot().active]
            if len(mine) >= self.max_per_owner:
                raise JobLimitError(
                    f"You already have a job {mine[0].snapshot().status} ({mine[0].title}): stop it or wait for it "
                    "to finish. One job per person at a time (every tab of your browser counts as you).")
            base = max(self._idle_rss, 0)
            if peak_bytes and base + peak_bytes > self.budget_bytes:
                raise JobLimitError(
                    f"This job needs about {format_bytes(peak_bytes)} at its peak, and this server's memory budget is "
                    f"{format_bytes(self.budget_bytes)} ({self.budget_source}) with {format_bytes(base)} already used by "
                    "the app and its models: it could never start here. Choose a smaller model or setting.")
            if ray_runner.ray_address() and kind in ray_runner.RAY_KINDS:  # the cluster places and queues it
                fields = {"kind": kind, "owner": owner, "title": title or kind, "total_steps": total_steps,
                          "peak_bytes": int(peak_bytes), "pause_limit_s": self.pause_limit_s,
                          "max_active_s": self.max_active_s, "id": job_id or secrets.token_urlsafe(9)}
                remote = ray_runner.RayJob.submit(fields, controls or {}, work)
                self._jobs[remote.id] = remote
                self._forget_old()
                return remote
            if len(self._queue) >= self.max_queue:
                raise JobLimitError(f"The queue of this server is full ({self.max_queue} jobs waiting); try again later.")
            job = Job(kind=kind, owner=owner, title=title or kind, total_steps=total_steps, peak_bytes=int(peak_bytes),
                      pause_limit_s=self.pause_limit_s, max_active_s=self.max_active_s)
            if job_id:
                job.id = job_id
            job._controls.update(controls or {})
            self._jobs[job.id] = job
            self._queue.append((job, work))
            self._pump()
            self._forget_old()
        return job

    def _pump(self) -> None:
        """Start queued jobs, first come first served, while a slot and memory are free (lock held)."""
        self._queue = [(j, w) for j, w in self._queue if j.snapshot().status == "queued"]
        while self._queue:
            job, work = self._queue[0]
            fits, why = self._fits(job.peak_bytes)
            if len(self._running()) >= self.max_running or not fits:
                break
            self._queue.pop(0)
            job._begin()
            job.thread = threading.Thread(target=job._run, args=(work, self._ended), name=f"job-{job.kind}-{job.id}",
                                          daemon=True)
            job.thread.start()
        self._update_queue_info()
        self._changed.notify_all()

    def _ended(self, job: Job) -> None:
        with self._lock:
            snap = job.snapshot()
            if snap.status == "finished":
                self._durations.setdefault(job.kind, []).append(snap.active_s)
            self._pump()

    def _running(self) -> list[Job]:
        """In-process jobs holding a slot (jobs on a Ray cluster use the cluster's CPUs, not this server's)."""
        return [j for j in self._jobs.values() if isinstance(j, Job) and j.snapshot().status in HOLDS_SLOT]

    # ------------------------------------------------------------------ memory admission
    def _fits(self, peak: int) -> tuple[bool, str]:
        running = self._running()
        reserved = sum(j.peak_bytes for j in running) + sum(self._heavy.values())
        rss = self._rss()
        if not running and not self._heavy:
            self._idle_rss = rss
        base = max(self._idle_rss, rss - reserved)
        free = self.budget_bytes - base - reserved
        if peak <= free:
            return True, ""
        return False, (f"waiting for memory: it needs about {format_bytes(peak)}, and {format_bytes(max(free, 0))} of "
                       f"the server's {format_bytes(self.budget_bytes)} budget is free now")

    def memory_state(self) -> dict[str, Any]:
        """Budget, what is used and reserved, for the page that explains a wait."""
        with self._lock:
            running = self._running()
            return {"budget_bytes": self.budget_bytes, "budget_source": self.budget_source, "rss_bytes": self._rss(),
                    "reserved_bytes": sum(j.peak_bytes for j in running) + sum(self._heavy.values()),
                    "running": len(running), "queued": len(self._queue), "max_running": self.max_running}

    @contextmanager
    def heavy(self, peak_bytes: int, label: str, timeout_s: float = 60.0) -> Iterator[None]:
        """Admit a piece of request-thread work (a PPO step, a measurement) against the same budget.

        Waits up to `timeout_s` for room; JobLimitError if none came. While it runs its bytes count as
        reserved, so a job does not start into memory this work is about to take.
        """
        key = id(threading.current_thread()) ^ int(time.monotonic_ns())
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                fits, why = self._fits(peak_bytes)
                if fits and not self._heavy:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JobLimitError(f"The server is busy ({why or 'another measurement is running'}); "
                                        f"{label} did not start. Try again in a minute.")
                self._changed.wait(min(left, 1.0))
            self._heavy[key] = int(peak_bytes)
        try:
            yield
        finally:
            with self._lock:
                self._heavy.pop(key, None)
                self._pump()

    # ------------------------------------------------------------------ the queue seen from a page
    def _update_queue_info(self) -> None:
        """Position and estimated wait of every queued job (lock held)."""
        slots = []  # when each slot is expected to free, seconds from now
        for j in self._running():
            left = j.snapshot().seconds_left
            slots.append(left if left is not None else float("inf"))
        slots += [0.0] * max(0, self.max_running - len(slots))
        heapq.heapify(slots)
        for pos, (job, _) in enumerate(self._queue, start=1):
            t = heapq.heappop(slots) if slots else float("inf")
            fits, why = self._fits(job.peak_bytes) if pos == 1 else (True, "")
            wait = None if t == float("inf") else t
            eta = f", expected to start in about {format_duration(wait)}" if wait is not None else ""
            reason = why if (pos == 1 and not fits) else ("waiting for a free slot" if pos == 1 else
                                                          f"{pos - 1} job(s) ahead of it")
            job._set_queue(pos, wait, f"Queued: position {pos} of {len(self._queue)} ({reason}){eta}. It starts by "
                                      "itself; you do not need to press start again.")
            heapq.heappush(slots, t + self._expected_duration(job))

    def _expected_duration(self, job: Job) -> float:
        done = self._durations.get(job.kind)
        return statistics.median(done[-20:]) if done else float("inf")

    def refresh(self) -> None:
        """Re-check the queue (pages call it while polling: memory frees without a job ending)."""
        with self._lock:
            self._pump()

    # ------------------------------------------------------------------ lookups
    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            job_id = self._aliases.get(job_id, job_id)
            job = self._jobs.get(job_id)
        if job is None and ray_runner.ray_address():  # started on the cluster by an earlier server process
            job = ray_runner.RayJob.find(job_id)
            if job is not None:
                with self._lock:
                    self._jobs[job.id] = job
        return job

    def alias(self, old_id: str, job: Job) -> None:
        """Make an old link (a job id from before a restart or a resume) point at `job`."""
        with self._lock:
            self._aliases[old_id] = job.id

    def jobs(self, owner: str | None = None, kind: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values()
                    if (owner is None or j.owner == owner) and (kind is None or j.kind == kind)]

    def shown(self, kind: str | None = None) -> list[Job]:
        """Jobs their owners show to the class, newest first."""
        return [j for j in reversed(self.jobs(kind=kind)) if j.snapshot().shown]

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if not j.snapshot().active]
        for j in done[: max(0, len(done) - self.keep_finished)]:
            del self._jobs[j.id]


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = float(raw)
    return None if value <= 0 else value


def registry_from_env() -> JobRegistry:
    return JobRegistry(max_running=int(os.environ.get("LLM_LAB_MAX_JOBS", "2")),
                       max_queue=int(os.environ.get("LLM_LAB_MAX_QUEUE", "100")),
                       pause_limit_s=_env_float("LLM_LAB_PAUSE_LIMIT_S", 600.0),
                       max_active_s=_env_float("LLM_LAB_JOB_MAX_S", 7200.0))
