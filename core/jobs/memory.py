"""The server's memory budget, read where the kernel enforces it: a job starts only if it fits.

On CPU an allocation the machine cannot give is not an exception: the kernel's OOM killer ends the
whole server, and every student's session with it. So jobs declare their peak before they start and
the registry admits them against the budget:

    budget  = LLM_LAB_MEMORY_MB, else the cgroup's memory limit (a container, a hosted app), else 80 % of RAM
    in use  = the server's resident memory now (pages' models included)
    admit   when  in use (less what running jobs have grown so far) + their declared peaks + the new peak <= budget
"""

from __future__ import annotations

import os
from pathlib import Path

RAM_SHARE = 0.8  # without a cgroup limit: the rest is the OS's, the page cache's and the browser's


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cgroup_limit_bytes() -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max, or v1 limit_in_bytes), None if unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        raw = _read(path)
        if raw and raw != "max":
            try:
                value = int(raw)
            except ValueError:
                continue
            if value < 2**60:  # v1 reports "unlimited" as a huge number
                return value
    return None


def total_ram_bytes() -> int:
    raw = _read("/proc/meminfo") or ""
    for line in raw.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes() -> tuple[int, str]:
    """(bytes, where the figure comes from), for the page to say."""
    env = os.environ.get("LLM_LAB_MEMORY_MB")
    if env:
        return int(float(env) * 2**20), "LLM_LAB_MEMORY_MB"
    limit = cgroup_limit_bytes()
    if limit is not None:
        return limit, "the container's memory limit (cgroup)"
    return int(total_ram_bytes() * RAM_SHARE), f"{RAM_SHARE:.0%} of this machine's RAM"


def rss_bytes() -> int:
    """This process's resident memory now."""
    raw = _read("/proc/self/statm")
    if raw:
        return int(raw.split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
