"""Background jobs shared by every long run (pre-training, fine-tuning, reward model, DPO, GRPO, scoring).

A job is a worker thread plus a locked state. The worker never touches the UI: it calls `job.tick()`
between steps (which blocks while paused and raises `JobStopped` once stop is asked), reads live
controls with `job.control("lr")`, and publishes progress with `job.report(...)`. Pages read
`job.snapshot()`, an immutable copy taken under the lock, and poll it.

Limits: at most `max_per_owner` running jobs per owner and `max_running` in the whole process. Over a
limit `JobLimitError` says when a slot is expected to free; nothing is queued behind the user's back.
A job id is an unguessable token: only who holds it (in the page URL) can see or steer the job.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from core.units import format_duration

ACTIVE = ("running", "paused", "stopping")
DONE = ("finished", "stopped", "failed")


class JobStopped(Exception):
    """Raised inside the worker by `tick()` after a stop was asked; the runner marks the job stopped."""


class JobLimitError(Exception):
    """A start refused by a limit; the message says which limit and when a slot is expected to free."""


class JobError(Exception):
    """A failure the worker raises on purpose (bad input, NaN loss...): its message is meant for the user."""


@dataclass(frozen=True)
class JobSnapshot:
    id: str
    kind: str
    owner: str
    title: str
    status: str  # running | paused | stopping | finished | stopped | failed
    step: int
    total_steps: int | None
    metrics: tuple[dict[str, Any], ...]  # one row per report with metrics, in order
    info: dict[str, Any]  # the latest free-form values (sample text, checkpoint path, phase...)
    message: str  # what the user is told (error text for a failed job)
    started_at: float
    updated_at: float
    controls: dict[str, Any]
    result: Any = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def elapsed_s(self) -> float:
        return self.updated_at - self.started_at

    @property
    def fraction(self) -> float | None:
        if not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def seconds_left(self) -> float | None:
        """Linear estimate from the pace so far; None before the first step or without a total."""
        if not self.total_steps or self.step <= 0 or not self.active:
            return None
        pace = self.elapsed_s / self.step
        return max(0.0, (self.total_steps - self.step) * pace)


@dataclass
class Job:
    """One background job. Workers use tick/report/control; pages use snapshot/pause/resume/stop/set_control."""

    kind: str
    owner: str
    title: str
    total_steps: int | None = None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _resume: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _status: str = "running"
    _step: int = 0
    _metrics: list[dict[str, Any]] = field(default_factory=list)
    _info: dict[str, Any] = field(default_factory=dict)
    _controls: dict[str, Any] = field(default_factory=dict)
    _message: str = ""
    _result: Any = None
    _started: float = field(default_factory=time.time)
    _updated: float = field(default_factory=time.time)
    thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._resume.set()

    # ------------------------------------------------------------------ worker side
    def tick(self) -> None:
        """Call between steps: waits while paused, raises JobStopped once a stop was asked."""
        if self._stop.is_set():
            raise JobStopped
        if not self._resume.is_set():
            self._resume.wait()
            if self._stop.is_set():
                raise JobStopped

    def report(self, step: int | None = None, metrics: dict[str, Any] | None = None, **info: Any) -> None:
        """Publish progress: the step, a row of metrics (appended to the curve), any latest values."""
        with self._lock:
            if step is not None:
                self._step = int(step)
            if metrics:
                self._metrics.append(dict(metrics))
            self._info.update(info)
            self._updated = time.time()

    def control(self, name: str, default: Any = None) -> Any:
        """A value the page may change while the job runs (e.g. the learning rate): read it each step."""
        with self._lock:
            return self._controls.get(name, default)

    def seed_metrics(self, rows: list[dict[str, Any]], step: int) -> None:
        """Start from an earlier run's curve (a resumed run continues its step count and its curve)."""
        with self._lock:
            self._metrics = [dict(r) for r in rows]
            self._step = int(step)

    # ------------------------------------------------------------------ page side
    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(
                id=self.id, kind=self.kind, owner=self.owner, title=self.title, status=self._status,
                step=self._step, total_steps=self.total_steps, metrics=tuple(self._metrics),
                info=dict(self._info), message=self._message, started_at=self._started,
                updated_at=time.time() if self._status in ACTIVE else self._updated,
                controls=dict(self._controls), result=self._result)

    def pause(self) -> None:
        with self._lock:
            if self._status == "running":
                self._status = "paused"
                self._resume.clear()

    def resume(self) -> None:
        with self._lock:
            if self._status == "paused":
                self._status = "running"
                self._resume.set()

    def stop(self) -> None:
        """Ask the worker to stop at its next tick (it may write a last checkpoint first)."""
        with self._lock:
            if self._status in ACTIVE:
                self._status = "stopping"
                self._stop.set()
                self._resume.set()

    def set_control(self, name: str, value: Any) -> None:
        with self._lock:
            self._controls[name] = value

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        """Block until the worker thread ends (tests, CLI); returns the final snapshot."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.snapshot()

    # ------------------------------------------------------------------ runner
    def _run(self, work: Callable[["Job"], Any]) -> None:
        status, message, result = "finished", "", None
        try:
            result = work(self)
        except JobStopped:
            status, message = "stopped", "Stopped on request."
        except JobError as exc:
            status, message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a worker bug must end the job, not hang the page
            status, message = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        with self._lock:
            if status == "finished" and self._stop.is_set():
                status, message = "stopped", "Stopped on request."
            self._status, self._message, self._result = status, message, result
            self._updated = time.time()
            self._resume.set()


class JobRegistry:
    """The process-wide list of jobs; one instance (`REGISTRY`) serves every session."""

    def __init__(self, max_running: int = 2, max_per_owner: int = 1, keep_finished: int = 64):
        self.max_running = max_running
        self.max_per_owner = max_per_owner
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, kind: str, owner: str, work: Callable[[Job], Any], *, title: str = "",
              total_steps: int | None = None, controls: dict[str, Any] | None = None) -> Job:
        """Run `work(job)` in a daemon thread; JobLimitError when a limit is reached."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.snapshot().active]
            mine = [j for j in running if j.owner == owner]
            if len(mine) >= self.max_per_owner:
                raise JobLimitError(
                    f"You already have a job running ({mine[0].title or mine[0].kind}); stop it or wait for "
                    f"it to finish{_eta(mine)}. One job per user runs at a time.")
            if len(running) >= self.max_running:
                raise JobLimitError(
                    f"All {self.max_running} job slots of this server are busy; the first is expected to "
                    f"free{_eta(running)}. Nothing was queued: press start again then.")
            job = Job(kind=kind, owner=owner, title=title or kind, total_steps=total_steps)
            job._controls.update(controls or {})
            job.thread = threading.Thread(target=job._run, args=(work,), name=f"job-{kind}-{job.id}", daemon=True)
            self._jobs[job.id] = job
            self._forget_old()
        job.thread.start()
        return job

    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self, owner: str | None = None, kind: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values()
                    if (owner is None or j.owner == owner) and (kind is None or j.kind == kind)]

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if not j.snapshot().active]
        for j in done[: max(0, len(done) - self.keep_finished)]:
            del self._jobs[j.id]


def _eta(jobs: list[Job]) -> str:
    lefts = [s for s in (j.snapshot().seconds_left for j in jobs) if s is not None]
    if not lefts:
        return " (no estimate yet: it has not finished a step)"
    return f" in about {format_duration(min(lefts))}"


REGISTRY = JobRegistry(max_running=int(os.environ.get("LLM_LAB_MAX_JOBS", "2")))
