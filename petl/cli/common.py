"""Pieces every ``petl`` subcommand shares."""

from __future__ import annotations

import json
from typing import Any

from petl.errors import ConfigError

__all__ = ["FULL", "parse_set"]

FULL = "full"
"""The ``--strategy`` name of full fine-tuning: the plain model, every weight trained."""


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``: the value as JSON where it parses (ints, floats,
    lists, booleans, null), else as a string.

    Raises:
        ConfigError: ``item`` has no ``=`` or an empty key.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. --set r=8), got {item!r}.")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = {"true": True, "false": False, "none": None}.get(raw.strip().lower(), raw)
    return key, value
