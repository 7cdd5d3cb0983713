"""Run the command a page shows under "How this was computed", as a user would paste it in a terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_shown_command(command: str, timeout: float = 240) -> dict:
    """`python -m core ...` (one line, shell syntax) in the project root; asserts exit 0, returns its JSON."""
    line = command.strip().splitlines()[0]
    assert line.startswith("python -m core "), line
    # bash does the quoting exactly as for the user; our interpreter stands in for `python`
    done = subprocess.run(["bash", "-c", f'"{sys.executable}"' + line[len("python"):]], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)
