"""One background job: a worker plus a locked state that pages read as immutable snapshots.

The worker never touches the UI: it calls `job.tick()` between steps (which blocks while paused and
raises `JobStopped` once stop is asked, or once a pause or the whole job outlasts the host's limits),
reads live controls with `job.control("lr")`, and publishes progress with `job.report(...)`. Pages
read `job.snapshot()`.

Control belongs to the owner: `pause`, `resume`, `stop`, `set_control` and `set_shown` take the
caller's owner token (`by=`) and refuse anyone else (`JobPermissionError`); a watcher who opened the
job's link sees the same snapshots, read-only. `by=None` is the server itself (limits, the CLI, tests).
"""

from __future__ import annotations

import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from core.units import format_duration

ACTIVE = ("queued", "running", "paused", "stopping")
HOLDS_SLOT = ("running", "paused", "stopping")
DONE = ("finished", "stopped", "failed")


class JobStopped(Exception):
    """Raised inside the worker by `tick()` after a stop was asked; the runner marks the job stopped."""


class JobLimitError(Exception):
    """A start refused by a limit; the message says which limit and what to do."""


class JobError(Exception):
    """A failure the worker raises on purpose (bad input, NaN loss...): its message is meant for the user."""


class JobPermissionError(Exception):
    """Someone other than the job's owner tried to steer it (a watcher who opened the link)."""


@dataclass(frozen=True)
class JobSnapshot:
    id: str
    kind: str
    owner: str
    title: str
    status: str  # queued | running | paused | stopping | finished | stopped | failed
    step: int
    total_steps: int | None
    metrics: tuple[dict[str, Any], ...]  # one row per report with metrics, in order
    info: dict[str, Any]  # the latest free-form values (sample text, checkpoint path, phase...)
    message: str  # what the user is told (error text for a failed job, why a job waits...)
    started_at: float  # when it was asked for (queued time included)
    updated_at: float
    controls: dict[str, Any]
    result: Any = None
    active_s: float = 0.0  # time spent running: queued and paused time left out
    start_step: int = 0  # the step this job started from (a resumed run starts past 0)
    queue_position: int | None = None  # 1 = next to start
    queue_wait_s: float | None = None  # estimated wait before it starts, None when unknown
    peak_bytes: int = 0  # the memory it declared
    shown: bool = False  # the owner shows it to the class

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def elapsed_s(self) -> float:
        return self.active_s

    @property
    def fraction(self) -> float | None:
        if not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def seconds_left(self) -> float | None:
        """Pace of this job's own steps (pauses and earlier runs of a resumed run left out) x steps left."""
        done = self.step - self.start_step
        if not self.total_steps or done <= 0 or self.status not in HOLDS_SLOT:
            return None
        return max(0.0, (self.total_steps - self.step) * self.active_s / done)


@dataclass
class Job:
    """One background job. Workers use tick/report/control; pages use snapshot and the owner's controls."""

    kind: str
    owner: str
    title: str
    total_steps: int | None = None
    peak_bytes: int = 0
    pause_limit_s: float | None = None  # a pause longer than this stops the job (its slot goes to others)
    max_active_s: float | None = None  # the host's wall-time cap per job
    id: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _resume: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _status: str = "queued"
    _step: int = 0
    _start_step: int = 0
    _metrics: list[dict[str, Any]] = field(default_factory=list)
    _info: dict[str, Any] = field(default_factory=dict)
    _controls: dict[str, Any] = field(default_factory=dict)
    _message: str = ""
    _stop_reason: str = "Stopped on request."
    _result: Any = None
    _created: float = field(default_factory=time.time)
    _run_since: float | None = None  # start of the current running stretch
    _active: float = 0.0  # running time before the current stretch
    _updated: float = field(default_factory=time.time)
    _shown: bool = False
    _queue: tuple[int | None, float | None] = (None, None)
    _listeners: list[Callable[[str], None]] = field(default_factory=list, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._resume.set()

    # ------------------------------------------------------------------ worker side
    def tick(self) -> None:
        """Call between steps: waits while paused, raises JobStopped once a stop was asked or a limit passed."""
        if self._stop.is_set():
            raise JobStopped
        if self.max_active_s is not None and self._active_s() > self.max_active_s:
            self._stop_for(f"Stopped at the server's limit of {format_duration(self.max_active_s)} per job; "
                           "the last checkpoint is kept.")
            raise JobStopped
        if not self._resume.is_set():
            if not self._resume.wait(self.pause_limit_s):
                self._stop_for(f"Paused for over {format_duration(self.pause_limit_s or 0)}: stopped so that its slot "
                               "goes to someone else; the last checkpoint is kept, resume it from there.")
                raise JobStopped
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
        """A value the owner may change while the job runs (e.g. the learning rate): read it each step."""
        with self._lock:
            return self._controls.get(name, default)

    def seed_metrics(self, rows: list[dict[str, Any]], step: int) -> None:
        """Start from an earlier run's curve (a resumed run continues its step count and its curve)."""
        with self._lock:
            self._metrics = [dict(r) for r in rows]
            self._step = self._start_step = int(step)

    def on_status(self, listener: Callable[[str], None]) -> None:
        """Call `listener(status)` whenever the owner pauses or resumes (the run's heartbeat follows it)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ page side
    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(
                id=self.id, kind=self.kind, owner=self.owner, title=self.title, status=self._status,
                step=self._step, total_steps=self.total_steps, metrics=tuple(self._metrics),
                info=dict(self._info), message=self._message, started_at=self._created,
                updated_at=time.time() if self._status in ACTIVE else self._updated,
                controls=dict(self._controls), result=self._result, active_s=self._active_s_locked(),
                start_step=self._start_step, queue_position=self._queue[0], queue_wait_s=self._queue[1],
                peak_bytes=self.peak_bytes, shown=self._shown)

    def is_owner(self, who: str | None) -> bool:
        return who is None or secrets.compare_digest(str(who), self.owner)

    def _check(self, by: str | None) -> None:
        if not self.is_owner(by):
            raise JobPermissionError("Only the person who started this job can steer it; you are watching it.")

    def pause(self, by: str | None = None) -> None:
        self._check(by)
        with self._lock:
            if self._status != "running":
                return
            self._status = "paused"
            self._resume.clear()
            self._close_stretch()
        self._notify("paused")

    def resume(self, by: str | None = None) -> None:
        self._check(by)
        with self._lock:
            if self._status != "paused":
                return
            self._status = "running"
            self._run_since = time.time()
            self._resume.set()
        self._notify("running")

    def stop(self, by: str | None = None) -> None:
        """Ask the worker to stop at its next tick (it may write a last checkpoint first); a queued job is cancelled."""
        self._check(by)
        with self._lock:
            if self._status not in ACTIVE:
                return
            if self._status == "queued":
                self._status, self._message = "stopped", "Cancelled while it waited in the queue."
                self._updated = time.time()
                self._done.set()
            else:
                self._status = "stopping"
            self._stop.set()
            self._resume.set()

    def set_control(self, name: str, value: Any, by: str | None = None) -> None:
        self._check(by)
        with self._lock:
            self._controls[name] = value

    def set_shown(self, shown: bool, by: str | None = None) -> None:
        """Show the job to the class (listed for everyone, read-only) or stop showing it."""
        self._check(by)
        with self._lock:
            self._shown = bool(shown)

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        """Block until the job has ended (tests, CLI); returns the final snapshot."""
        self._done.wait(timeout)
        if self.thread is not None:
            self.thread.join(1.0)
        return self.snapshot()

    # ------------------------------------------------------------------ runner (the registry calls these)
    def _begin(self) -> None:
        with self._lock:
            if self._status == "queued":
                self._status = "running"
            self._run_since = time.time()
            self._queue = (None, None)

    def _set_queue(self, position: int | None, wait_s: float | None, message: str) -> None:
        with self._lock:
            if self._status == "queued":
                self._queue, self._message = (position, wait_s), message

    def _stop_for(self, reason: str) -> None:
        with self._lock:
            self._stop_reason = reason
            if self._status in ACTIVE:
                self._status = "stopping"
            self._stop.set()
            self._resume.set()

    def _active_s(self) -> float:
        with self._lock:
            return self._active_s_locked()

    def _active_s_locked(self) -> float:
        return self._active + (time.time() - self._run_since if self._run_since is not None else 0.0)

    def _close_stretch(self) -> None:
        if self._run_since is not None:
            self._active += time.time() - self._run_since
            self._run_since = None

    def _notify(self, status: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:  # noqa: BLE001 - a heartbeat that cannot write must not break the control
                traceback.print_exc()

    def _run(self, work: Callable[["Job"], Any], on_end: Callable[["Job"], None] | None = None) -> None:
        status, message, result = "finished", "", None
        try:
            result = work(self)
        except JobStopped:
            status, message = "stopped", self._stop_reason
        except JobError as exc:
            status, message = "failed", str(exc)
        except MemoryError:
            status, message = "failed", "Out of memory: this job needed more than the server could give it."
        except Exception as exc:  # noqa: BLE001 - a worker bug must end the job, not hang the page
            status, message = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        with self._lock:
            if status == "finished" and self._stop.is_set():
                status, message = "stopped", self._stop_reason
            self._status, self._message, self._result = status, message, result
            self._close_stretch()
            self._updated = time.time()
            self._resume.set()
        self._done.set()
        if on_end is not None:
            on_end(self)
