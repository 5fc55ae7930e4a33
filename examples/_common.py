"""Small helpers shared by the example scripts (not part of petl's API)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import datasets
import transformers

from petl.bench.synthetic import make_splits

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_args(description: str, **extra: dict) -> argparse.Namespace:
    """``--quick`` (or PETL_EXAMPLE_QUICK=1) shrinks every budget to seconds, for the test suite."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("PETL_EXAMPLE_QUICK") == "1",
                        help="tiny budget: a few steps on a few examples")
    parser.add_argument("--output", default="runs/examples", help="folder for adapters and logs")
    for flag, options in extra.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", **options)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()  # the fresh-head notice is expected here
    transformers.utils.logging.disable_progress_bar()
    # bitsandbytes notes at every 8-bit matmul that CPU activations are cast to fp16; once is enough.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    return parser.parse_args()


def sentiment_splits(train_size: int, eval_size: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """petl's generated sentiment data (negation, intensifiers, contrast) as datasets."""
    train, evaluation = make_splits(train_size, eval_size, seed=0)

    def to_dataset(rows: list) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"sentence": [r.sentence for r in rows], "label": [r.label for r in rows]})

    return to_dataset(train), to_dataset(evaluation)
