"""Nested records (JSON values, configs) as flat key paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(value: Any, *, lists: bool = False, prefix: str = "") -> dict[str, Any]:
    """Key paths to leaf values: ``{"a": {"b": 1}, "c": [2]}`` gives ``{"a.b": 1, "c": [2]}``,
    and with ``lists`` also into lists: ``{"a.b": 1, "c[0]": 2}``."""
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten(item, lists=lists, prefix=path))
        return flat
    if lists and isinstance(value, list):
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten(item, lists=lists, prefix=f"{prefix}[{index}]"))
        return flat
    return {prefix: value}
