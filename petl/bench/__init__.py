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

from petl.bench.config import BenchConfig, StrategySpec, load_config
from petl.bench.defaults import default_config
from petl.bench.results import BenchResult, StrategyResult
from petl.bench.runner import run_benchmark

__all__ = [
    "BenchConfig",
    "BenchResult",
    "StrategyResult",
    "StrategySpec",
    "default_config",
    "load_config",
    "run_benchmark",
]
