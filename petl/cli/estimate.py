"""``petl estimate``: trainable parameters and training memory per strategy, without loading weights.

Build MODEL on the meta device (no memory), wrap it with each strategy and count. MODEL:
a preset (llama-7b, llama-13b, llama-70b), a demo name (minilm, smollm2), a folder with
config.json, a benchmark config (.toml/.json), or a Hub name (online).

    petl estimate llama-7b --strategy lora --set r=8 --strategy prefix --precision bf16
    petl estimate benchmarks/sst2_minilm.toml
    petl estimate smollm2 --strategy lora --batch-size 8 --seq-len 256 --gradient-checkpointing

With --batch-size / --seq-len (or --gradient-checkpointing) the activations of one
training step are traced on fake tensors, and the total is the step's peak.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from petl.cli.common import add_threads_argument, configure_threads, parse_set
from petl.core.validators import check_positive_int
from petl.errors import ConfigError
from petl.tasks import TASKS

__all__ = ["HELP", "NAME", "add_arguments", "run", "strategies_from_items"]


class _Ordered(argparse.Action):
    """Keeps ``--strategy`` and ``--set`` in command-line order, so each ``--set`` belongs
    to the ``--strategy`` before it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((option_string, values))
        setattr(namespace, self.dest, items)


NAME = "estimate"
HELP = "trainable parameters and training memory per strategy, without loading weights"


def add_arguments(e: argparse.ArgumentParser) -> None:
    """The options of ``petl estimate``."""
    e.add_argument("model", metavar="MODEL_OR_CONFIG")
    e.add_argument("--strategy", dest="items", action=_Ordered, metavar="NAME",
                   help="a strategy, or 'full' (repeatable; default: full and every registered strategy)")
    e.add_argument("--set", dest="items", action=_Ordered, metavar="KEY=VALUE",
                   help="an option of the --strategy before it (repeatable), e.g. --strategy lora --set r=16")
    e.add_argument("--task", choices=TASKS,
                   help="the model's head (default: from the config)")
    e.add_argument("--num-labels", type=int, default=2, help="classes of a classification head, 1 or more (2)")
    e.add_argument("--precision", action="append", metavar="{fp32,bf16,int8,int4}",
                   help="base precision(s) to estimate (repeatable; default: all four)")
    e.add_argument("--optimizer", default="adamw", metavar="{adamw,adamw8bit}")
    e.add_argument("--batch-size", type=int, metavar="N",
                   help="sequences per training batch: trace the activations (default with --seq-len: 8)")
    e.add_argument("--seq-len", type=int, metavar="N",
                   help="tokens per sequence for the activations (default with --batch-size: 128)")
    e.add_argument("--gradient-checkpointing", action="store_true",
                   help="trace the activations with gradient checkpointing, as `petl train` enables it")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_threads_argument(e)


def strategies_from_items(items: list[tuple[str, str]] | None) -> list[tuple[str, str, dict[str, Any]]] | None:
    """``(label, name, options)`` triples from ordered ``--strategy`` / ``--set`` options.

    Raises:
        ConfigError: A ``--set`` before any ``--strategy``, or a malformed ``--set``.
    """
    if not items:
        return None
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for option, value in items:
        if option == "--strategy":
            rows.append((value, value, {}))
        else:
            if not rows:
                raise ConfigError(f"--set {value} comes before any --strategy. Put it after the --strategy it "
                                  "configures, e.g. --strategy lora --set r=8.")
            key, parsed = parse_set(value)
            rows[-1][2][key] = parsed
    labels = [label for label, _, _ in rows]
    counts = {label: labels.count(label) for label in labels}
    seen: dict[str, int] = {}
    out = []
    for label, name, options in rows:
        if counts[label] > 1:  # the same strategy twice with different options: tell them apart
            seen[label] = seen.get(label, 0) + 1
            label = f"{label}-{seen[label]}"
        out.append((label, name, options))
    return out


def _estimate_source(model: str) -> tuple[str, list[tuple[str, str, dict[str, Any]]] | None, str | None]:
    """A benchmark config file gives its model, rows and task; anything else is a model."""
    path = Path(model)
    if path.suffix.lower() in (".toml", ".json") and path.is_file() and path.name != "config.json":
        from petl.bench.config import load_config

        config = load_config(path)
        rows = [(r.display, r.name, dict(r.options)) for r in config.strategies]
        return config.model.name, rows, config.task
    return model, None, None


def run(args: argparse.Namespace) -> int:
    """``petl estimate``: print the parameter and memory table (or JSON)."""
    configure_threads(args)  # before the import below loads torch
    from petl.bench.estimate import PRECISIONS, estimate, format_estimate

    check_positive_int("--num-labels", args.num_labels)  # before a benchmark config is read or a model built
    for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)):
        if value is not None:
            check_positive_int(flag, value)
    source, config_rows, config_task = _estimate_source(args.model)
    rows = strategies_from_items(args.items) or config_rows
    report = estimate(source, rows, task=args.task or config_task, num_labels=args.num_labels,
                      precisions=tuple(args.precision or PRECISIONS), optimizer=args.optimizer,
                      batch_size=args.batch_size, seq_len=args.seq_len,
                      gradient_checkpointing=args.gradient_checkpointing)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_estimate(report))
    return 1 if any(row.error for row in report.rows) else 0
