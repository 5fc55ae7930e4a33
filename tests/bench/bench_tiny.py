"""A benchmark config small enough to train in seconds (for the benchmark tests)."""

from __future__ import annotations

from pathlib import Path

from petl.bench.config import BenchConfig
from petl.bench.schema import DataSpec, ModelSpec, StrategySpec, TimingSpec, TrainSpec


def tiny_config(model_dir: Path, *rows: StrategySpec, seeds: tuple[int, ...] = (0,), **changes: object) -> BenchConfig:
    """A benchmark on the tiny model and a few synthetic examples, two optimizer steps per run."""
    return BenchConfig(
        name="tiny",
        task="sequence-classification",
        seeds=seeds,
        device="cpu",
        model=ModelSpec(name=str(model_dir)),
        data=DataSpec(train="synthetic", train_examples=24, eval_examples=16, max_length=32),
        train=TrainSpec(epochs=1, max_steps=2, batch_size=8),
        timing=TimingSpec(warmup_steps=1, steps=3, batches=2),
        strategies=rows or (StrategySpec(name="full", learning_rate=1e-4), StrategySpec(name="lora", options={"r": 4})),
        **changes,
    )
