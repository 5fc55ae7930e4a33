"""The ``petl`` command.

    petl train --model minilm --task sequence-classification --train train.tsv --output runs/lora
    petl bench                       # every strategy against full fine-tuning, built-in default
    petl bench benchmarks/sst2_minilm.toml
    petl estimate llama-7b --strategy lora --set r=8

Each subcommand is one module of this package, listed in :data:`SUBCOMMANDS`, with
``NAME``, ``HELP`` (its line in ``petl --help``), ``add_arguments(parser)`` and
``run(args)`` (the parsed arguments -> the exit code); the second paragraph of its
docstring is the description ``petl NAME --help`` shows. Building the parser
imports nothing heavy, so ``petl --help`` answers at once; a handler first sets up
torch's CPU threads (``--threads``, :func:`petl.threads.configure`: OpenMP reads its
settings once, when torch loads) and then imports what its work needs. Errors petl
raises for bad input are shown as one line on stderr with exit code 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from petl.cli import bench, estimate, train
from petl.cli import list as list_command
from petl.cli.common import parse_set
from petl.errors import PetlError

__all__ = ["SUBCOMMANDS", "add_subcommand", "build_parser", "main", "parse_set"]

SUBCOMMANDS: tuple[ModuleType, ...] = (train, bench, estimate, list_command)
"""The subcommand modules, in the order ``petl --help`` lists them."""


def add_subcommand(subparsers: Any, command: ModuleType) -> argparse.ArgumentParser:
    """Add one subcommand module's parser to ``subparsers``."""
    description = inspect.cleandoc(command.__doc__ or "").split("\n\n")[1].replace("\n", " ")
    parser = subparsers.add_parser(command.NAME, help=command.HELP, description=description)
    command.add_arguments(parser)
    parser.set_defaults(handler=command.run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``petl`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="petl", description="Parameter-efficient tuning for Hugging Face models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        add_subcommand(subparsers, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``petl`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(handler(args))
    except PetlError as exc:
        print(f"petl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"petl {args.command}: interrupted", file=sys.stderr)
        return 130

