"""Small helpers shared by the benchmarks (not a test; prints figures)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
DONE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(env: dict[str, str] | None = None, app_dir: Path | str = ROOT,
                     port: int | None = None) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """(url, process, seconds until /_stcore/health answered) of `streamlit run Home.py` in app_dir."""
    port = port or free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=app_dir, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.perf_counter() - start > 120 or proc.poll() is not None:
                    raise RuntimeError("streamlit did not start")
                time.sleep(0.1)
        yield url, proc, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_rendered(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_selector("h1", timeout=timeout_ms)
    page.wait_for_selector("[data-testid='stMetric']", timeout=timeout_ms)
    page.wait_for_selector(DONE, timeout=timeout_ms)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
