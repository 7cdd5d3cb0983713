"""core/train/lessons.py: the lesson texts quote the run's own figures, never figures written by hand."""

from __future__ import annotations


def test_lesson_figures_are_read_off_the_run():
    """issue 18: the lesson text quotes the run's own figures (a deterministic reference run here)."""
    from core.jobs import REGISTRY
    from core.train.lessons import LESSONS, figures, run_lesson

    assert figures("init", []) == ""  # nothing quoted before the run has a validation loss
    job = REGISTRY.start("lesson", "test-lesson-figures", lambda j: run_lesson("init", j, max_iters=3), total_steps=3)
    snap = job.wait(120)
    assert snap.status == "finished", snap.message
    good, bad = LESSONS["init"].labels
    val = {r["run"]: r["val_loss"] for r in snap.metrics if r["step"] == 3}
    first_bad = next(r["train_loss"] for r in snap.metrics if r["step"] == 1 and r["run"] == bad)
    text = figures("init", snap.metrics)
    assert f"validation loss {val[good]:.2f} ({good}, step 3) vs {val[bad]:.2f} ({bad}, step 3)" in text
    assert f"started at a training loss of {first_bad:.1f} nats" in text
    assert all("when we ran it" not in lesson.look_for for lesson in LESSONS.values())
