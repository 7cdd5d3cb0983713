"""The Streamlit side of core.jobs: who owns a job, the run id in the URL, the controls and the live panel.

A page that runs a long job does three things:

    job = attached_job("train")                 # the job named in the URL (?train=<id>), if any
    if job is None and st.button("Start"):
        job = start_job("train", "pre-training", work, total_steps=n)   # queued or started; None if refused
    if job is not None:
        job_controls(job, "key")               # only for its owner; a watcher gets a read-only note
        live_panel(job, draw)                  # draw(snapshot) runs in a fragment every second

The owner is a token kept in a cookie of the browser, so a reload or a second tab is the same person (one
job per person) and keeps control. A job's id in a link lets anyone *watch* it; steering it needs the
owner's token, so "Link to this view" sent to a class is a watch link.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from typing import Any, Callable

import streamlit as st

from core.jobs import REGISTRY, Job, JobLimitError, JobPermissionError, JobSnapshot
from core.runs import cap_log, list_runs, run_info
from core.units import format_bytes, format_duration
from ui.text import md

OWNER_KEY = "lab_job_owner"
OWNER_COOKIE = "llm_lab_owner"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def owner_id() -> str:
    """This browser's owner token: from its cookie when it has one, else a new one (set by `remember_owner`)."""
    if OWNER_KEY not in st.session_state:
        try:
            token = st.context.cookies.get(OWNER_COOKIE)
        except Exception:  # noqa: BLE001 - no browser (AppTest, a bare script run)
            token = None
        valid = isinstance(token, str) and _TOKEN.match(token)
        st.session_state[OWNER_KEY] = token if valid else secrets.token_urlsafe(18)
    return st.session_state[OWNER_KEY]


def remember_owner() -> None:
    """Store the owner token in a cookie (a year, this site only), so reloads and other tabs are the same person.
    Called once per run of the app's entry point; writes nothing when the browser already sent the cookie."""
    token = owner_id()
    try:
        sent = st.context.cookies.get(OWNER_COOKIE)
    except Exception:  # noqa: BLE001
        return
    if sent == token or not isinstance(sent, (str, type(None))):  # sent already, or no browser (AppTest)
        return
    with st.sidebar:
        st.html(f"<script>document.cookie = '{OWNER_COOKIE}={token}; path=/; max-age=31536000; SameSite=Strict';"
                "</script>", unsafe_allow_javascript=True)


@st.cache_resource(show_spinner=False)
def startup() -> dict[str, Any]:
    """Once per server process: remove what killed writers left behind, list the runs a restart interrupted,
    and (LLM_LAB_AUTO_RESUME=1) resume interrupted pre-training runs for their owners."""
    from core.runs import cache_root, interrupted_runs, runs_root, sweep_leftovers

    swept = sweep_leftovers(cache_root()) + (sweep_leftovers(runs_root()) if os.environ.get("LLM_LAB_RUNS") else [])
    resumed = []
    if os.environ.get("LLM_LAB_AUTO_RESUME") == "1":
        from ui.training import resume_interrupted

        for run in interrupted_runs():
            if run.kind == "pretrain" and resume_interrupted(run) is not None:
                resumed.append(run.name)
    return {"swept": len(swept), "resumed": resumed, "at": time.time()}


def attached_job(param: str) -> Job | None:
    """The job whose id is in the URL under `param`; an unknown id gets a message and is dropped."""
    job_id = st.query_params.get(param)
    if not job_id:
        return None
    job = REGISTRY.get(job_id)
    if job is None:
        run = next((r for r in list_runs() if run_info(r.path).get("job_id") == job_id), None)
        if run is not None and run.status == "interrupted":
            st.warning(f"Run **{md(run.name)}** was interrupted at step {run.step:,} (the server restarted). "
                       "Its checkpoints are on disk: its owner can resume it from the last one under "
                       "“Resume a saved run”.")
        else:
            st.info("The job in this link is no longer on this server (the app restarted, or it was cleared). "
                    "Saved runs stay on disk; start a new job or resume from a checkpoint.")
        del st.query_params[param]
    elif job.id != job_id:  # an old link (before a restart or a resume) now points at the resumed run
        st.query_params[param] = job.id
    return job


def can_control(job: Job) -> bool:
    return job.is_owner(owner_id())


def start_job(param: str, kind: str, work: Callable[[Job], Any], *, title: str = "",
              total_steps: int | None = None, controls: dict[str, Any] | None = None, peak_bytes: int = 0,
              job_id: str | None = None) -> Job | None:
    """Start or queue a job and put its id in the URL under `param`; a refusal shows why and returns None."""
    try:
        job = REGISTRY.start(kind, owner_id(), work, title=title, total_steps=total_steps, controls=controls,
                             peak_bytes=peak_bytes, job_id=job_id)
    except JobLimitError as exc:
        st.warning(str(exc))
        return None
    st.query_params[param] = job.id
    return job


def forget_job(param: str) -> None:
    """Detach the page from its job (the job itself goes on or stays finished)."""
    if param in st.query_params:
        del st.query_params[param]


def _steer(action: Callable[[], None]) -> None:
    try:
        action()
    except JobPermissionError as exc:
        st.warning(str(exc))
        return
    st.rerun()


def job_controls(job: Job, key: str) -> None:
    """Pause / resume / stop (cancel while queued) and "show to the class", for the job's owner only."""
    snap = job.snapshot()
    if not can_control(job):
        who = "the teacher's" if snap.shown else "someone else's"
        st.caption(f"👀 You are watching {who} job (read-only): only the person who started it can pause, stop or "
                   "change it.")
        return
    if not snap.active:
        return
    me = owner_id()
    c = st.columns([1, 1, 2])
    if snap.status == "running":
        if c[0].button("⏸ Pause", key=f"{key}_pause", width="stretch",
                       help=f"A pause longer than {format_duration(job.pause_limit_s)} stops the job (its slot goes to "
                            "someone else; the checkpoint stays)" if job.pause_limit_s else None):
            _steer(lambda: job.pause(by=me))
    elif snap.status == "paused":
        if c[0].button("▶ Resume", key=f"{key}_resume", width="stretch"):
            _steer(lambda: job.resume(by=me))
    label = "✖ Leave the queue" if snap.status == "queued" else "⏹ Stop"
    if c[1].button(label, key=f"{key}_stop", width="stretch", disabled=snap.status == "stopping"):
        _steer(lambda: job.stop(by=me))
    shown = c[2].toggle("Show to the class", snap.shown, key=f"{key}_shown",
                        help="Lists this job for everyone on this server, read-only, under “Shown to the class”.")
    if shown != snap.shown:
        _steer(lambda: job.set_shown(shown, by=me))


def status_line(snap: JobSnapshot) -> None:
    """Queue position, or a progress bar with elapsed and remaining time, or the final status."""
    if snap.status == "queued":
        st.info(f"⏳ {snap.message}")
        return
    left = snap.seconds_left
    text = (f"{snap.title}: {snap.status} · step {snap.step:,}"
            + (f" / {snap.total_steps:,}" if snap.total_steps else "")
            + f" · {format_duration(snap.elapsed_s)} running"
            + (f" · about {format_duration(left)} left" if left is not None else ""))
    if snap.active:
        st.progress(snap.fraction or 0.0, text=text)
    elif snap.status == "finished":
        st.success(text)
    elif snap.status == "stopped":
        st.info(f"{text}. {snap.message}")
    else:
        st.error(f"{snap.title} failed: {snap.message}")
    room = snap.info.get("room_made")
    if room:
        st.caption("To keep the runs folder under its cap, this start " + "; ".join(room) + ".")


# A queued job's panel only moves its position and wait: it polls less often. In a class of 30 on one server,
# 28 queued panels polling every second cost the running jobs' threads the interpreter (one process, one GIL).
QUEUED_EVERY_S = 3.0


def live_panel(job: Job, draw: Callable[[JobSnapshot], None], every: float = 1.0) -> None:
    """Draw `draw(snapshot)` now and, while the job is active, again every `every` seconds (a fragment;
    every QUEUED_EVERY_S while it waits in the queue).

    When the job ends (or leaves the queue) the whole page reruns once, so that controls and results follow.
    """
    status_at_start = job.snapshot().status
    active_at_start = status_at_start in ("queued", "running", "paused", "stopping")
    if status_at_start == "queued":
        every = max(every, QUEUED_EVERY_S)

    @st.fragment(run_every=every if active_at_start else None)
    def _panel() -> None:
        REGISTRY.refresh()  # memory may have freed without a job ending
        snap = job.snapshot()
        status_line(snap)
        if snap.status != "queued":
            draw(snap)
        if (active_at_start and not snap.active) or (status_at_start == "queued" and snap.status != "queued"):
            st.rerun(scope="app")

    _panel()


def class_jobs(param: str, kind: str) -> None:
    """Jobs of this kind that their owners show to the class: a watch link for each."""
    shown = [j for j in REGISTRY.shown(kind) if not can_control(j)]
    if not shown:
        return
    st.markdown("**Shown to the class**")
    for j in shown[:10]:
        snap = j.snapshot()
        st.markdown(f"- [{md(snap.title)}](?{param}={j.id}) · {snap.status} · step {snap.step:,}"
                    + (f" / {snap.total_steps:,}" if snap.total_steps else ""))


def cap_notices() -> None:
    """Tell this person, once per session, what the runs-folder cap did to their runs since they last looked."""
    seen = st.session_state.setdefault("lab_cap_seen", time.time() - 7 * 86400)
    actions = cap_log(owner_id(), since=seen)
    if actions:
        st.warning("While you were away, to keep the runs folder under its cap: " + "; ".join(
            f"{a.what} of your run {md(a.run)} ({format_bytes(a.bytes)})" for a in actions) + ".")
    st.session_state["lab_cap_seen"] = time.time()
