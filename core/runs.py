"""One run lifecycle: the runs folder, a run's folder and its run.json, who holds it, the disk cap.

A run is a folder under `runs_root()` that a training or fine-tuning job writes into:

    RUN/run.json     owner, kind, status, step, job id, heartbeat ("updated"), created
    RUN/.lock        held (flock) by the one job that writes into the run, for as long as it runs
    RUN/config.json  what the job needs to resume; RUN/model/ the export the model picker opens; ...

"Live" means a job holds the run's lock. The kernel drops a flock when its process dies, so a run
is live exactly while a job (in this process or another: the CLI, a Ray worker on the same disk)
writes into it, whatever the clock says: a run paused for an hour is live, a run whose server was
killed mid-step is not. The cap never removes a live run, and a resume is refused while one is.

Every file this module (and the code that writes runs, checkpoints and caches) writes goes through
`atomic_write`/`atomic_folder`: written under a temporary name, then renamed into place, so a reader
never sees half a file and a kill leaves only a temporary name, which `sweep_leftovers` removes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

LIVE_STATUSES = ("running", "paused")
HEARTBEAT_S = 5.0  # a live job rewrites run.json at most this often (the "last seen" the page shows)
RECENT_S = 30 * 60.0  # a run that ended less than this ago is never removed to make room
CREATING_GRACE_S = 60.0  # a folder with no run.json yet is being created: left alone this long


# ---------------------------------------------------------------- where things live


def cache_root() -> Path:
    """LLM_LAB_CACHE, else ~/.cache/llm-anatomy-lab: the embedded model's cache, runs, benchmarks."""
    return Path(os.environ.get("LLM_LAB_CACHE", Path.home() / ".cache" / "llm-anatomy-lab"))


def runs_root() -> Path:
    """LLM_LAB_RUNS, else `runs/` in the lab's cache folder."""
    env = os.environ.get("LLM_LAB_RUNS")
    return Path(env) if env else cache_root() / "runs"


def runs_cap_bytes() -> int:
    """LLM_LAB_RUNS_CAP_MB (default 2048 MiB): the most the runs folder may hold."""
    return int(float(os.environ.get("LLM_LAB_RUNS_CAP_MB", "2048")) * 2**20)


# ---------------------------------------------------------------- atomic writes (the one helper)


def temp_name(path: Path) -> Path:
    """A sibling name no other writer uses: `.NAME.tmp-PID-THREAD-RANDOM` (sweep_leftovers knows it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(3)}")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file under a temporary name, then rename it into place (atomic within one folder)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def write_json(path: Path, values: Any) -> None:
    atomic_write(path, json.dumps(values, indent=2, default=_json_default))


@contextmanager
def atomic_folder(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error it replaces `final`.

    Renames only: `final` is whole at every instant except between two renames, when `final.old`
    (which readers may fall back to) holds the previous version. An error leaves `final` untouched.
    replace=False (a cache): when `final` exists already, another writer finished first and keeps it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        if not replace:
            try:
                tmp.rename(final)
            except OSError:  # another process won the race; its copy is as good as ours
                pass
            return
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_TMP = re.compile(r"\.tmp-(\d+)-")


def sweep_leftovers(root: Path) -> list[Path]:
    """Remove temporary files and folders that a killed writer left under `root` (its pid is gone)."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for path in list(root.rglob("*.tmp-*")):
        m = _TMP.search(path.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- names a user types


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def run_path(name: str, root: Path | None = None) -> Path:
    """The folder of run `name` inside the runs folder; ValueError for a name that could leave it."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Give the run a name (letters, digits, '-', '_', '.').")
    if not _RUN_NAME.match(name) or ".." in name:
        raise ValueError("That run name is not allowed: use up to 64 letters, digits, '-', '_' or '.', starting "
                         "with a letter or digit (no '/', no '..', no absolute paths).")
    root = (root or runs_root()).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError("That run name would leave the runs folder.")
    return path


# ---------------------------------------------------------------- run.json and liveness


class RunBusy(Exception):
    """The run is held by a running job (here or in another process): it cannot be written to now."""


def run_info(run: Path) -> dict[str, Any]:
    """run.json of a run (owner, kind, status, step, updated, job_id...); {} when missing or unreadable."""
    try:
        info = json.loads((Path(run) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def update_run(run: Path, **values: Any) -> dict[str, Any]:
    """Merge `values` into run.json (atomically) and stamp `updated`; returns the new contents."""
    current = run_info(run) or {"created": time.time()}
    current.update(values, updated=time.time())
    write_json(Path(run) / "run.json", current)
    return current


def is_live(run: Path) -> bool:
    """True while some job holds the run's lock (in this process or any other on this disk)."""
    lock = Path(run) / ".lock"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def run_status(run: Path) -> str:
    """What a page shows: run.json's status, but "interrupted" for a run that says it runs and is not live."""
    info = run_info(run)
    status = str(info.get("status") or "unknown")
    if status in LIVE_STATUSES and not is_live(run):
        return "interrupted"
    return status


def reserve_run(run: Path, *, job_id: str, **info: Any) -> None:
    """Claim the name of a new run before its job starts (it may wait in the queue): one `mkdir` checks
    and creates, so two users cannot both get the same name. An empty folder (a temporary folder a
    script made) or one this job already reserved is accepted; anything else exists already."""
    run = Path(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    try:
        run.mkdir()
    except FileExistsError:
        held = run_info(run).get("job_id")
        if held == job_id or (not held and not any(run.iterdir())):
            pass
        else:
            raise ValueError(f"A run named {run.name!r} exists already: resume it, or choose another name.") from None
    update_run(run, status="queued", job_id=job_id, **info)


class RunLease:
    """The right to write into one run: the run's flock, held from `claim` until `release` (or death).

    The holder refreshes run.json's heartbeat with `beat()` (throttled to HEARTBEAT_S), which also
    records the job's status (running or paused) so a page can show "paused 3 min ago".
    """

    def __init__(self, run: Path, fd: int):
        self.run = Path(run)
        self._fd: int | None = fd
        self._last_beat = 0.0

    @classmethod
    def claim(cls, run: Path, **info: Any) -> "RunLease":
        """Hold an existing run (a new one is made by `reserve_run`) for one job; RunBusy while another
        job holds it. run.json gets `info` (owner, kind, job_id...) and status "running"."""
        run = Path(run)
        if not run.is_dir():
            raise ValueError(f"There is no run named {run.name!r} (it may have been removed).")
        fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunBusy(f"Run {run.name!r} is training right now in another job: watch it through its link, "
                          "or resume it once it has stopped.") from None
        lease = cls(run, fd)
        update_run(run, status="running", **info)
        return lease

    @property
    def held(self) -> bool:
        return self._fd is not None

    def beat(self, force: bool = False, **values: Any) -> None:
        """Refresh run.json's `updated` (at most every HEARTBEAT_S unless forced), merging `values`."""
        now = time.time()
        if self._fd is None or (not force and not values and now - self._last_beat < HEARTBEAT_S):
            return
        self._last_beat = now
        update_run(self.run, **values)

    def release(self, **final: Any) -> None:
        """Write the final status (finished, stopped, failed...) and let go of the run."""
        if self._fd is None:
            return
        try:
            if final:
                update_run(self.run, **final)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------- the list of runs


@dataclass(frozen=True)
class RunEntry:
    name: str
    path: Path
    kind: str
    owner: str
    status: str  # running | paused | finished | stopped | failed | diverged | interrupted | unknown
    step: int
    updated: float
    live: bool


def list_runs(root: Path | None = None) -> list[RunEntry]:
    """Every run folder, newest first, with its effective status (a dead "running" run says interrupted)."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        info = run_info(d)
        live = is_live(d)
        status = str(info.get("status") or "unknown")
        if status in LIVE_STATUSES and not live:
            status = "interrupted"
        out.append(RunEntry(name=d.name, path=d, kind=str(info.get("kind") or "pretrain"),
                            owner=str(info.get("owner") or ""), status=status, step=int(info.get("step") or 0),
                            updated=float(info.get("updated") or _mtime(d)), live=live))
    return sorted(out, key=lambda r: r.updated, reverse=True)


def interrupted_runs(root: Path | None = None) -> list[RunEntry]:
    """Runs that were live when their process died (a restart or a kill): resumable from their last checkpoint."""
    return [r for r in list_runs(root) if r.status == "interrupted"]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def folder_bytes(path: Path) -> int:
    total = 0
    for f in Path(path).rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:  # removed while we counted
            pass
    return total


@dataclass(frozen=True)
class SavedModel:
    label: str  # what the picker shows, e.g. "run: shakespeare-char"
    path: Path  # a folder load_model opens as a local model


def saved_models(root: Path | None = None) -> list[SavedModel]:
    """Every run with an exported model, newest first."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if not d.name.startswith(".") and (d / "model" / "config.json").is_file()]
    found.sort(key=lambda d: _mtime(d / "model" / "config.json"), reverse=True)
    return [SavedModel(label=f"run: {d.name}", path=d / "model") for d in found]


# ---------------------------------------------------------------- the disk cap


@dataclass(frozen=True)
class CapAction:
    run: str
    owner: str
    what: str  # "removed" | "dropped optimizer state"
    bytes: int
    at: float
    by: str  # the owner whose start made room


def _optimizer_files(run: Path) -> list[Path]:
    return sorted(Path(run).rglob("optimizer.pt"))


def enforce_cap(cap_bytes: int, owner: str | None = None, keep: Path | None = None,
                root: Path | None = None, now: float | None = None) -> list[CapAction]:
    """Bring the runs folder under `cap_bytes`, touching only runs no job holds.

    First the optimizer state of ended runs is dropped (the model and the curves stay; such a run
    can no longer be resumed), then ended runs are removed, the owner's own first, oldest first.
    Never touched: a live run, `keep`, a folder still being created, a run that ended less than
    RECENT_S ago. Every action is recorded in the runs folder's log (`cap_log`), so its owner learns
    what happened to the run; the caller shows the returned list to the user who triggered it.
    """
    root = root or runs_root()
    if not root.is_dir():
        return []
    now = now or time.time()
    runs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    sizes = {d: folder_bytes(d) for d in runs}
    total = sum(sizes.values())
    if total <= cap_bytes:
        return []
    keep = Path(keep).resolve() if keep else None

    def touchable(d: Path) -> bool:
        info = run_info(d)
        if d.resolve() == keep or is_live(d):
            return False
        if not info:
            return now - _mtime(d) > CREATING_GRACE_S
        return now - float(info.get("updated") or 0) > RECENT_S

    candidates = [d for d in runs if touchable(d)]
    candidates.sort(key=lambda d: (run_info(d).get("owner") != owner, float(run_info(d).get("updated") or 0)))
    actions: list[CapAction] = []
    for d in candidates:  # pass 1: optimizer state, the largest part of a full fine-tune
        if total <= cap_bytes:
            break
        files = _optimizer_files(d)
        freed = sum(f.stat().st_size for f in files)
        if freed:
            for f in files:
                f.unlink(missing_ok=True)
            # not update_run: this is no activity of the run's own, and "updated" decides what is recent
            write_json(d / "run.json", {**run_info(d), "resumable": False,
                                        "note": "optimizer state dropped to keep the runs folder under its cap"})
            total -= freed
            sizes[d] -= freed
            actions.append(CapAction(d.name, str(run_info(d).get("owner") or ""), "dropped optimizer state",
                                     freed, now, owner or ""))
    for d in candidates:  # pass 2: whole runs
        if total <= cap_bytes:
            break
        run_owner = str(run_info(d).get("owner") or "")
        shutil.rmtree(d, ignore_errors=True)
        total -= sizes[d]
        actions.append(CapAction(d.name, run_owner, "removed", sizes[d], now, owner or ""))
    if actions:
        _log_actions(root, actions)
    return actions


def make_room(job: Any, owner: str, keep: Path) -> list[CapAction]:
    """The cap, applied by a job as it really starts (never by a refused or a queued start); what it did goes
    on the job's own panel as `room_made` (a rerun right after the start cannot swallow the notice)."""
    from core.units import format_bytes

    actions = enforce_cap(runs_cap_bytes(), owner=owner, keep=keep)
    if actions:
        job.report(room_made=[f"{a.what} {'your' if a.owner == owner else 'an older'} run {a.run} "
                              f"({format_bytes(a.bytes)})" for a in actions])
    return actions


def _log_actions(root: Path, actions: list[CapAction]) -> None:
    with open(Path(root) / ".cap-log.jsonl", "a", encoding="utf-8") as f:
        for a in actions:
            f.write(json.dumps(a.__dict__) + "\n")


def cap_log(owner: str, root: Path | None = None, since: float = 0.0) -> list[CapAction]:
    """What the cap did to `owner`'s runs (newest last): the notice their page shows."""
    path = Path(root or runs_root()) / ".cap-log.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            a = CapAction(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if a.owner == owner and a.at >= since:
            out.append(a)
    return out
