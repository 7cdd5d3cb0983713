"""The Streamlit side of core.jobs: who owns a job, the run id in the URL, the controls and the live panel.

A page that runs a long job does three things:

    job = attached_job("train")                 # the job named in the URL (?train=<id>), if any
    if job is None and st.button("Start"):
        job = start_job("train", "pre-training", work, total_steps=n)   # message on a limit, None then
    if job is not None:
        job_controls(job)
        live_panel(job, draw)                  # draw(snapshot) runs in a fragment every second

Only the live panel reruns while the job runs; the rest of the page does not.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

import streamlit as st

from core.jobs import REGISTRY, Job, JobLimitError, JobSnapshot
from core.units import format_duration

OWNER_KEY = "lab_job_owner"


def owner_id() -> str:
    """This browser session's owner token (the per-user job limit counts by it)."""
    if OWNER_KEY not in st.session_state:
        st.session_state[OWNER_KEY] = secrets.token_urlsafe(9)
    return st.session_state[OWNER_KEY]


def attached_job(param: str) -> Job | None:
    """The job whose id is in the URL under `param`; a stale id gets a message and is dropped."""
    job_id = st.query_params.get(param)
    if not job_id:
        return None
    job = REGISTRY.get(job_id)
    if job is None:
        st.info("The job in this link is no longer running on this server (the app restarted, or it was "
                "cleared). Saved runs stay on disk; start a new job or resume from a checkpoint.")
        del st.query_params[param]
    return job


def start_job(param: str, kind: str, work: Callable[[Job], Any], *, title: str = "",
              total_steps: int | None = None, controls: dict[str, Any] | None = None) -> Job | None:
    """Start a job, put its id in the URL under `param`; over a limit show why and return None."""
    try:
        job = REGISTRY.start(kind, owner_id(), work, title=title, total_steps=total_steps, controls=controls)
    except JobLimitError as exc:
        st.warning(str(exc))
        return None
    st.query_params[param] = job.id
    return job


def forget_job(param: str) -> None:
    """Detach the page from its job (the job itself goes on or stays finished)."""
    if param in st.query_params:
        del st.query_params[param]


def job_controls(job: Job, key: str) -> None:
    """Pause / resume / stop buttons for an active job."""
    snap = job.snapshot()
    if not snap.active:
        return
    c = st.columns(3)
    if snap.status == "running":
        if c[0].button("⏸ Pause", key=f"{key}_pause", width="stretch"):
            job.pause()
            st.rerun()
    elif snap.status == "paused":
        if c[0].button("▶ Resume", key=f"{key}_resume", width="stretch"):
            job.resume()
            st.rerun()
    if c[1].button("⏹ Stop", key=f"{key}_stop", width="stretch", disabled=snap.status == "stopping"):
        job.stop()
        st.rerun()


def status_line(snap: JobSnapshot) -> None:
    """Progress bar with elapsed and remaining time, or the final status."""
    left = snap.seconds_left
    text = (f"{snap.title}: {snap.status} · step {snap.step:,}"
            + (f" / {snap.total_steps:,}" if snap.total_steps else "")
            + f" · {format_duration(snap.elapsed_s)} elapsed"
            + (f" · about {format_duration(left)} left" if left is not None else ""))
    if snap.active:
        st.progress(snap.fraction or 0.0, text=text)
    elif snap.status == "finished":
        st.success(text)
    elif snap.status == "stopped":
        st.info(f"{text}. {snap.message}")
    else:
        st.error(f"{snap.title} failed: {snap.message}")


def live_panel(job: Job, draw: Callable[[JobSnapshot], None], every: float = 1.0) -> None:
    """Draw `draw(snapshot)` now and, while the job is active, again every `every` seconds (a fragment).

    When the job ends the whole page reruns once, so that controls and results follow the final state.
    """
    active_at_start = job.snapshot().active

    @st.fragment(run_every=every if active_at_start else None)
    def _panel() -> None:
        snap = job.snapshot()
        status_line(snap)
        draw(snap)
        if active_at_start and not snap.active:
            st.rerun(scope="app")

    _panel()
