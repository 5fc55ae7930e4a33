"""The ``petl`` command.

    petl train --model minilm --task sequence-classification --train train.tsv --output runs/lora
    petl bench                       # every strategy against full fine-tuning, built-in default
    petl bench benchmarks/sst2_minilm.toml
    petl estimate llama-7b --strategy lora --set r=8

Each subcommand is one module of this package with an ``add_parser(subparsers)``
function, listed in :data:`SUBCOMMANDS`; it sets ``handler`` (a function of the
parsed arguments returning the exit code) as its default. Building the parser
imports nothing heavy, so ``petl --help`` answers at once; a handler imports what
its work needs. Errors petl raises for bad input are shown as one line on stderr
with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from petl.cli import bench, estimate, train
from petl.cli.common import parse_set
from petl.errors import PetlError

__all__ = ["SUBCOMMANDS", "build_parser", "main", "parse_set"]

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (train.add_parser, bench.add_parser, estimate.add_parser)
"""The functions that add each subcommand's parser."""


def build_parser() -> argparse.ArgumentParser:
    """The ``petl`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="petl", description="Parameter-efficient tuning for Hugging Face models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
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

