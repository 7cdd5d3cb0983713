"""Shared fixtures: models are loaded once per test session and shared (read-only) by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Pages run standalone in AppTest load this model when none is picked; tests that want the
# embedded model set it explicitly.
os.environ.setdefault("LLM_LAB_DEFAULT_MODEL", "tiny-llama")

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
