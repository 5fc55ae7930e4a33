"""``petl bench``: every strategy against full fine-tuning, side by side.

Train every strategy of a benchmark (and full fine-tuning) and measure them side by
side. Without CONFIG, runs the built-in default: MiniLM on petl's synthetic sentiment
data.

    petl bench                                  # the embedded default (MiniLM, synthetic sentiment)
    petl bench benchmarks/sst2_minilm.toml --output runs/sst2 --strategies lora,full --seeds 0,1
    petl bench --quick                          # a tiny budget: check every row runs
    petl bench benchmarks/sst2_minilm.toml --search --trials 4 --jobs 2   # tune every row first
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from petl.cli.common import add_threads_argument, configure_threads

__all__ = ["HELP", "NAME", "add_arguments", "run"]


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


NAME = "bench"
HELP = "compare strategies against full fine-tuning: parameters, memory, step time, task metric"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``petl bench``."""
    p.add_argument("config", nargs="?", help="a benchmark config (.toml or .json); default: the built-in benchmark")
    p.add_argument("--output", help="the run folder (default: runs/bench-<timestamp>)")
    p.add_argument("--strategies", type=_names, metavar="A,B",
                   help="run only these rows (labels or strategy names), e.g. lora,full")
    p.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="override the config's seeds")
    p.add_argument("--quick", action="store_true",
                   help="a tiny budget (64 examples, 4 steps, 3 timed steps, one seed) to check every row runs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config's device")
    p.add_argument("--search", action="store_true",
                   help="tune each row's learning rate (and declared options) with Optuna first ([search] table)")
    p.add_argument("--trials", type=int, metavar="N", help="trials per row of the search (overrides [search] trials)")
    p.add_argument("--trial-seeds", type=int, metavar="K",
                   help="training runs per search trial, scored by their mean (overrides [search] trial_seeds)")
    p.add_argument("--jobs", type=int, metavar="N", help="search trials run at once, each in its own process")
    p.add_argument("--storage", metavar="URL",
                   help="an Optuna storage shared by several machines: journal:///path/study.log or an RDB URL")
    p.add_argument("--epochs", type=int, metavar="N", help="override [train] epochs (the reported runs and trials)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_threads_argument(p)


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
    if args.epochs is not None:
        config = config.replace(train=dataclasses.replace(config.train, epochs=args.epochs))
    flags = (("enabled", True if args.search else None), ("trials", args.trials),
             ("trial_seeds", args.trial_seeds), ("jobs", args.jobs), ("storage", args.storage))
    changes = {key: value for key, value in flags if value is not None}
    if changes:
        config = config.replace(search=dataclasses.replace(config.search, **changes))
    if args.quick:
        config = config.quick()
    return config


def run(args: argparse.Namespace) -> int:
    """``petl bench``: run, print the table, and say where the files are. Exit code 1
    when a row failed (its error is in the table and the files)."""
    configure_threads(args)  # before torch loads; the worker processes inherit the environment it sets
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
