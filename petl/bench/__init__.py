"""The benchmark harness behind ``petl bench``: every strategy against full fine-tuning,
side by side, on any model and data, on the CPU or a GPU.

    from petl.bench import default_config, load_config, run_benchmark
    result = run_benchmark(load_config("benchmarks/sst2_minilm.toml"), "runs/sst2")
    print(result.row("lora").metric_mean, result.row("lora").step_time_ratio)

For every row it measures trainable and total parameters, peak memory (the resident
memory of an isolated process per run on the CPU, ``max_memory_allocated`` on a GPU),
the median training step time in an interleaved loop, the task metric over seeds,
the size of the saved adapter and the wall time, and writes ``results.json``,
``results.csv``, ``results.md`` and PNG plots. ``petl estimate`` (:mod:`petl.bench.estimate`)
predicts parameter counts and memory without loading weights.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BenchConfig",
    "BenchResult",
    "StrategyResult",
    "StrategySpec",
    "default_config",
    "load_config",
    "run_benchmark",
]

# Imported on first use: the harness pulls in datasets, transformers and friends.
_HOMES = {
    "BenchConfig": "petl.bench.config",
    "StrategySpec": "petl.bench.schema",
    "load_config": "petl.bench.config",
    "default_config": "petl.bench.defaults",
    "BenchResult": "petl.bench.results",
    "StrategyResult": "petl.bench.results",
    "run_benchmark": "petl.bench.runner",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'petl.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
