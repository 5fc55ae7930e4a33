"""``petl list``: every registered strategy, what it is, and whether it merges.

Print one row per strategy of :func:`petl.available` (built-in, bridged from peft, and those of
installed plugins): its name, whether ``petl.merge`` can fold it into the base weights, its peft
type where it reads peft folders, and the first line of its docstring.

    petl list
    petl list --json

"Merges" is the strategy class's ``mergeable`` attribute; a class without one merges when it
overrides ``merge`` (the default ``merge`` refuses).
"""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

__all__ = ["HELP", "NAME", "add_arguments", "mergeable", "rows", "run"]

NAME = "list"
HELP = "list every registered strategy with a one-line description and whether it merges"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``petl list``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def mergeable(cls: type) -> bool:
    """Whether a strategy class folds into the base weights: its ``mergeable`` attribute, else
    whether it overrides :meth:`petl.core.strategy.StrategyBase.merge`."""
    from petl.core.strategy import StrategyBase

    declared = getattr(cls, "mergeable", None)
    if isinstance(declared, bool):
        return declared
    return getattr(cls, "merge", None) is not StrategyBase.merge


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else "(no description)"


def rows() -> list[dict[str, Any]]:
    """One dict per registered strategy: ``name``, ``mergeable``, ``peft_type``, ``description``."""
    from petl.core import registry

    out = []
    for name in registry.available():
        cls = registry.get(name)
        out.append({"name": name, "mergeable": mergeable(cls), "peft_type": vars(cls).get("peft_type"),
                    "description": _summary(cls)})
    return out


def _table(entries: list[dict[str, Any]]) -> str:
    width = max(len("strategy"), *(len(row["name"]) for row in entries))
    peft_width = max(len("peft"), *(len(row["peft_type"] or "-") for row in entries))
    lines = [f"{'strategy':<{width}}  merges  {'peft':<{peft_width}}  description"]
    for row in entries:
        merges = "yes" if row["mergeable"] else "no"
        lines.append(f"{row['name']:<{width}}  {merges:<6}  {row['peft_type'] or '-':<{peft_width}}  "
                     f"{row['description']}")
    lines.append(f"{len(entries)} strategies; petl.core.registry.get(NAME).config_class lists one's options.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``petl list``: print the table (or JSON)."""
    entries = rows()
    print(json.dumps(entries, indent=2) if args.json else _table(entries))
    return 0
