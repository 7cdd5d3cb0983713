"""Data files shipped with the project (see data/SOURCES.md)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@lru_cache(maxsize=1)
def reference_configs() -> dict[str, dict[str, Any]]:
    """Architecture fields of public models, keyed by Hub id (facts from each model's config.json)."""
    raw = json.loads((DATA_DIR / "model_configs.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def config_from_dict(fields: dict[str, Any]) -> PretrainedConfig:
    """A transformers config from plain config.json fields; ValueError with a readable reason."""
    if not isinstance(fields, dict):
        raise ValueError("config.json must hold a JSON object")
    model_type = fields.get("model_type")
    if not model_type:
        raise ValueError("config.json has no `model_type` field")
    rest = {k: v for k, v in fields.items() if k != "model_type"}
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        config_class = CONFIG_MAPPING[model_type]
    except KeyError as exc:
        raise ValueError(f"transformers does not know model_type {model_type!r}") from exc
    try:
        return config_class(**rest)
    except Exception as exc:  # noqa: BLE001 - config classes validate with assorted exception types
        reason = exc.__cause__ or exc  # strict-dataclass validators wrap the readable error in a header line
        raise ValueError(f"invalid {model_type} config: {str(reason).splitlines()[0]}") from exc


def reference_config(model_id: str) -> PretrainedConfig:
    return config_from_dict(reference_configs()[model_id])


def tiny_shakespeare() -> str:
    return (DATA_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8")
