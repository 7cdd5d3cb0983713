"""Background jobs shared by every long run (pre-training, fine-tuning, reward model, DPO, GRPO, scoring).

`job.py` is one job (worker protocol, owner-only controls, pause and wall-time limits), `registry.py`
the server's jobs (limits, the FIFO queue, memory admission), `memory.py` the budget. `REGISTRY` is the
one registry of this process; pages reach it through ui/jobs.py.
"""

from core.jobs.job import (ACTIVE, DONE, HOLDS_SLOT, Job, JobError, JobLimitError, JobPermissionError,
                           JobSnapshot, JobStopped)
from core.jobs.registry import JobRegistry, registry_from_env

REGISTRY = registry_from_env()

__all__ = ["ACTIVE", "DONE", "HOLDS_SLOT", "Job", "JobError", "JobLimitError", "JobPermissionError", "JobRegistry",
           "JobSnapshot", "JobStopped", "REGISTRY"]
