"""Shared fixtures: models are loaded once per test session and shared (read-only) by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Pages run standalone in AppTest load this model when none is picked; tests that want the
# embedded model set it explicitly.
os.environ.setdefault("LLM_LAB_DEFAULT_MODEL", "tiny-llama")
# The Ray runner's tests run a one-machine cluster: Ray's "no cluster" IP rule keeps every address on loopback
# (otherwise Ray rewrites 127.0.0.1 to the machine's outward address). Read when Ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a test cluster on loopback, with no token to keep
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # never a private cluster behind a test's back

TINY = ("tiny-gpt2", "tiny-llama", "tiny-qwen2")


@pytest.fixture(scope="session")
def load():
    """load("tiny-llama") -> LoadedModel, cached for the whole session."""
    from core.models.loading import load_model

    cache: dict = {}

    def _load(source: str):
        if source not in cache:
            cache[source] = load_model(source)
        return cache[source]

    return _load


@pytest.fixture(scope="session")
def embedded(load):
    return load("embedded")


@pytest.fixture(params=TINY, scope="session")
def tiny(request, load):
    """Each tiny model in turn."""
    return load(request.param)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster (2 CPUs, loopback only) for the tests of the Ray runner; its address.
    Skipped where ray is not installed (requirements-ray.txt, which `make test` installs)."""
    import secrets
    import shutil
    import socket
    import subprocess
    import sys

    pytest.importorskip("ray")
    ray_cli = str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = f"/tmp/rl-{secrets.token_hex(3)}"  # Ray's socket paths must stay short
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats",
                              "--temp-dir", temp], capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
