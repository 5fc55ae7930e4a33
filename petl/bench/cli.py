"""The ``petl bench`` and ``petl estimate`` subcommands.

    petl bench                                  # the embedded default (MiniLM, synthetic sentiment)
    petl bench benchmarks/sst2_minilm.toml --output runs/sst2 --strategies lora,full --seeds 0,1
    petl bench --quick                          # a tiny budget: check every row runs
    petl estimate llama-7b --strategy lora --set r=8 --strategy prefix --precision bf16

:func:`add_bench_parsers` adds both to the ``petl`` command's subparsers; each sets
``handler`` (parsed arguments -> exit code). This is the only place in the harness
that prints: the library logs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from petl.errors import ConfigError

__all__ = ["add_bench_parsers", "run_bench_command", "run_estimate_command"]

logger = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return items


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected non-negative seeds such as 0,1,2, got {text!r}")
    return seeds


class _Ordered(argparse.Action):
    """Keeps ``--strategy`` and ``--set`` in command-line order, so each ``--set`` belongs
    to the ``--strategy`` before it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((option_string, values))
        setattr(namespace, self.dest, items)


def add_bench_parsers(subparsers: Any) -> None:
    """Add the ``bench`` and ``estimate`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench",
        help="compare strategies against full fine-tuning: parameters, memory, step time, task metric",
        description="Train every strategy of a benchmark (and full fine-tuning) and measure them side by side. "
        "Without CONFIG, runs the built-in default: MiniLM on petl's synthetic sentiment data.",
    )
    p.add_argument("config", nargs="?", help="a benchmark config (.toml or .json); default: the built-in benchmark")
    p.add_argument("--output", help="the run folder (default: runs/bench-<timestamp>)")
    p.add_argument("--strategies", type=_names, metavar="A,B",
                   help="run only these rows (labels or strategy names), e.g. lora,full")
    p.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="override the config's seeds")
    p.add_argument("--quick", action="store_true",
                   help="a tiny budget (64 examples, 4 steps, 3 timed steps, one seed) to check every row runs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config's device")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(handler=run_bench_command)

    e = subparsers.add_parser(
        "estimate",
        help="trainable parameters and training memory per strategy, without loading weights",
        description="Build MODEL on the meta device (no memory), wrap it with each strategy and count. "
        "MODEL: a preset (llama-7b, llama-13b, llama-70b), a demo name (minilm, smollm2), a folder with "
        "config.json, a benchmark config (.toml/.json), or a Hub name (online).",
    )
    e.add_argument("model", metavar="MODEL_OR_CONFIG")
    e.add_argument("--strategy", dest="items", action=_Ordered, metavar="NAME",
                   help="a strategy, or 'full' (repeatable; default: full and every registered strategy)")
    e.add_argument("--set", dest="items", action=_Ordered, metavar="KEY=VALUE",
                   help="an option of the --strategy before it (repeatable), e.g. --strategy lora --set r=16")
    e.add_argument("--task", choices=("sequence-classification", "token-classification", "causal-lm", "seq2seq"),
                   help="the model's head (default: from the config)")
    e.add_argument("--num-labels", type=int, default=2, help="classes of a classification head (2)")
    e.add_argument("--precision", action="append", choices=("fp32", "bf16", "int8"),
                   help="base precision(s) to estimate (repeatable; default: all three)")
    e.add_argument("--optimizer", default="adamw", choices=("adamw", "adamw8bit"))
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(handler=run_estimate_command)


def _bench_config(args: argparse.Namespace) -> Any:
    from petl.bench.config import load_config
    from petl.bench.defaults import default_config

    config = load_config(args.config) if args.config else default_config()
    if args.strategies:
        config = config.select(args.strategies)
    if args.seeds:
        config = config.replace(seeds=tuple(args.seeds))
    if args.device:
        config = config.replace(device=args.device)
    if args.quick:
        config = config.quick()
    return config


def run_bench_command(args: argparse.Namespace) -> int:
    """``petl bench``: run, print the table, and say where the files are. Exit code 1
    when a row failed (its error is in the table and the files)."""
    from petl.bench.report import format_table, write_reports
    from petl.bench.runner import default_output_dir, run_benchmark

    config = _bench_config(args)
    output = Path(args.output) if args.output else default_output_dir()
    result = run_benchmark(config, output, progress=not args.no_progress, write=False)
    write_reports(result, output, plots=not args.no_plots)
    print(format_table(result))
    print(f"\nWall time {result.wall_time_s:.0f} s. Results in {output}/ (results.json, results.csv, results.md"
          f"{', plots' if not args.no_plots else ''}).")
    return 1 if any(row.error for row in result.rows) else 0


def strategies_from_items(items: list[tuple[str, str]] | None) -> list[tuple[str, str, dict[str, Any]]] | None:
    """``(label, name, options)`` triples from ordered ``--strategy`` / ``--set`` options.

    Raises:
        ConfigError: A ``--set`` before any ``--strategy``, or a malformed ``--set``.
    """
    from petl.cli import parse_set

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


def run_estimate_command(args: argparse.Namespace) -> int:
    """``petl estimate``: print the parameter and memory table (or JSON)."""
    from petl.bench.estimate import PRECISIONS, estimate, format_estimate

    source, config_rows, config_task = _estimate_source(args.model)
    rows = strategies_from_items(args.items) or config_rows
    report = estimate(source, rows, task=args.task or config_task, num_labels=args.num_labels,
                      precisions=tuple(args.precision or PRECISIONS), optimizer=args.optimizer)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_estimate(report))
    return 1 if any(row.error for row in report.rows) else 0
