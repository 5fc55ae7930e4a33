"""Pieces every ``petl`` subcommand shares."""

from __future__ import annotations

import argparse
import json
from typing import Any

from petl.errors import ConfigError
from petl.threads import ThreadSettings, configure

__all__ = ["FULL", "add_threads_argument", "configure_threads", "parse_set"]

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


def _thread_count(raw: str) -> int | str:
    """``--threads``'s type: a positive integer or ``auto``."""
    if raw.strip().lower() == "auto":
        return "auto"
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {raw!r}") from None


def add_threads_argument(parser: argparse.ArgumentParser | Any) -> None:
    """Add ``--threads N|auto`` to a subcommand's parser (or one of its argument groups)."""
    parser.add_argument("--threads", type=_thread_count, metavar="N|auto",
                        help="CPU threads for torch (default: OMP_NUM_THREADS, else one per CPU this process may "
                             "use); 'auto' starts as many as the CPUs other processes leave free. petl also sets "
                             "OMP_WAIT_POLICY=PASSIVE unless it is set")


def configure_threads(args: argparse.Namespace) -> ThreadSettings:
    """Set up torch's CPU threads from ``--threads``; the first thing a handler does, before
    anything imports torch (see :mod:`petl.threads`).

    Raises:
        ConfigError: ``--threads`` is neither a positive integer nor ``auto``.
    """
    count = getattr(args, "threads", None)
    if isinstance(count, int) and count < 1:
        raise ConfigError(f"--threads must be a positive integer or 'auto', got {count}. Pass --threads 1 or more, "
                          "'auto' for the CPUs other processes leave free, or leave it out for one thread per CPU.")
    return configure(count)
