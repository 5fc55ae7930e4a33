"""What a benchmark measures, per row and for the whole run, and how seeds are combined.

For a row with trainable parameters ``P_t`` out of ``P`` and full fine-tuning's
``P_t^full``:

    trainable share   = P_t / P
    ratio to full     = P_t / P_t^full
    step-time ratio   = median step time / full fine-tuning's median step time

The task metric ``m_s`` of each seed ``s`` (from ``petl.train``'s final evaluation)
is reported as its mean, sample standard deviation (``None`` with one seed), minimum
and maximum. Memory is that of the seed whose run peaked highest.

A seed whose accuracy is no better than always predicting the most frequent evaluation
label is *stalled*: it did not learn the task. The report and the verdict name such seeds,
since their number measures a failed run, not the strategy at a working setting.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchResult", "StrategyResult", "add_differences", "aggregate"]


@dataclass
class StrategyResult:
    """One row of the comparison."""

    label: str
    """The row's name in tables and plots."""
    strategy: str
    """The strategy's registry name, or ``"full"``."""
    options: dict[str, Any]
    """The strategy options as configured."""
    learning_rate: float | None
    """The learning rate (``None``: the trainer's default)."""
    mixed_precision: str
    optimizer: str
    load_in_8bit: bool
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_share: float | None = None
    """Trainable / total parameters, between 0 and 1."""
    ratio_to_full: float | None = None
    """Trainable parameters / full fine-tuning's trainable parameters (``None`` without a full row)."""
    memory_kind: str | None = None
    """``"cpu-rss"`` (peak resident memory of the run's process) or ``"cuda"`` (max allocated)."""
    memory_after_load_mib: float | None = None
    """Peak memory once the data is tokenised and the model loaded and wrapped, before training."""
    peak_memory_mib: float | None = None
    """Peak memory at the end of training."""
    train_memory_mib: float | None = None
    """``peak_memory_mib - memory_after_load_mib``: what training added."""
    step_time_ms: float | None = None
    """Median training step time in the side-by-side timing loop."""
    step_time_ms_min: float | None = None
    step_time_ms_max: float | None = None
    timed_steps: int | None = None
    throughput: float | None = None
    """Training examples per second at the median step time."""
    step_time_ratio: float | None = None
    """Median step time / full fine-tuning's."""
    metric: str | None = None
    """The task metric's name, e.g. ``eval_accuracy``."""
    metric_mean: float | None = None
    metric_std: float | None = None
    metric_min: float | None = None
    metric_max: float | None = None
    metric_values: list[float] = field(default_factory=list)
    """The metric of each seed, in seed order."""
    metric_ci: list[float] | None = None
    """The 95% Student t interval of the mean over seeds, ``[low, high]`` (``None``: one seed)."""
    diff_to_full: float | None = None
    """Mean over the shared seeds of (this row's metric - full fine-tuning's), paired by seed."""
    diff_ci: list[float] | None = None
    """The 95% interval of that paired difference (``None``: fewer than two shared seeds)."""
    indistinguishable: bool | None = None
    """Whether ``diff_ci`` contains 0: these runs cannot tell the row from full fine-tuning."""
    constant_metric: float | None = None
    """What always predicting the most frequent evaluation label scores (accuracy of sequence
    classification; ``None`` elsewhere)."""
    stalled_seeds: list[int] = field(default_factory=list)
    """The seeds whose metric is no better than ``constant_metric``: runs that did not learn the task."""
    checkpoint: str | None = None
    """Which weights were evaluated: ``"last"`` (the evaluation set picks no checkpoint)."""
    search: dict[str, Any] | None = None
    """The ``[search]`` study of this row: chosen settings, validation score, every trial."""
    eval_loss_mean: float | None = None
    eval_means: dict[str, float] = field(default_factory=dict)
    """The mean over seeds of every evaluation metric (e.g. ``eval_exact_match`` next to ``eval_f1``)."""
    seeds: list[int] = field(default_factory=list)
    adapter_bytes: int | None = None
    """Bytes of what ``petl.save`` writes (full fine-tuning: the model's safetensors)."""
    global_steps: int | None = None
    """Optimizer steps of one training run."""
    train_time_s: float | None = None
    """Mean time of ``petl.train`` per seed (training and evaluation)."""
    wall_time_s: float | None = None
    """Mean wall time of one run's process work per seed (loading, training, saving)."""
    error: str | None = None
    """Why the row (or part of it) failed, or ``None``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StrategyResult:
        return cls(**values)


@dataclass
class BenchResult:
    """Everything one benchmark run produced."""

    name: str
    rows: list[StrategyResult]
    config: dict[str, Any]
    """The benchmark config (``BenchConfig.to_dict``), enough to rerun it."""
    environment: dict[str, Any]
    """Versions, hardware, the git commit and the date (see :mod:`petl.bench.environment`)."""
    wall_time_s: float
    """Wall time of the whole benchmark."""
    device: str
    data: dict[str, Any] = field(default_factory=dict)
    """Facts about the data: sizes, and for synthetic data the bag-of-words reference accuracy."""
    timing: dict[str, Any] = field(default_factory=dict)
    """How step times were measured (warm-up, timed rounds, batch shapes)."""
    output_dir: Path | None = None
    verdict: str | None = None
    """One sentence: the cheapest strategy within the tolerance of full fine-tuning (:mod:`petl.bench.verdict`)."""

    def row(self, label: str) -> StrategyResult:
        """The row called ``label``."""
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"No row {label!r}; rows: {[r.label for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date": self.environment.get("date"),
            "wall_time_s": self.wall_time_s,
            "device": self.device,
            "environment": self.environment,
            "data": self.data,
            "timing": self.timing,
            "config": self.config,
            "verdict": self.verdict,
            "results": [row.to_dict() for row in self.rows],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], output_dir: Path | None = None) -> BenchResult:
        """Read back what :meth:`to_dict` wrote (``results.json``), e.g. to redraw the reports."""
        return cls(
            name=values["name"], rows=[StrategyResult.from_dict(r) for r in values["results"]],
            config=values["config"], environment=values["environment"], wall_time_s=values["wall_time_s"],
            device=values["device"], data=values.get("data", {}), timing=values.get("timing", {}),
            output_dir=output_dir, verdict=values.get("verdict"),
        )


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def aggregate(row: StrategyResult, runs: list[dict[str, Any]], seeds: list[int], metric: str) -> None:
    """Fill ``row`` from the per-seed worker results ``runs`` (in seed order)."""
    from petl.bench.stats import stalled_seeds

    ok = [(seed, run) for seed, run in zip(seeds, runs, strict=True) if "error" not in run]
    failed = [f"seed {seed}: {run['error']}" for seed, run in zip(seeds, runs, strict=True) if "error" in run]
    if failed:
        row.error = "; ".join(([row.error] if row.error else []) + failed)
    if not ok:
        return
    first = ok[0][1]
    row.seeds = [seed for seed, _ in ok]
    row.trainable_params, row.total_params = first["trainable_params"], first["total_params"]
    row.trainable_share = row.trainable_params / row.total_params if row.total_params else None
    row.memory_kind = first["memory_kind"]
    highest = max((run for _, run in ok), key=lambda run: run["peak_memory_mib"])
    row.memory_after_load_mib = highest["memory_after_load_mib"]
    row.peak_memory_mib = highest["peak_memory_mib"]
    row.train_memory_mib = row.peak_memory_mib - row.memory_after_load_mib
    values = [run["metrics"][metric] for _, run in ok if metric in run["metrics"]]
    if len(values) < len(ok):
        missing = [seed for seed, run in ok if metric not in run["metrics"]]
        note = f"metric {metric!r} missing for seeds {missing} (reported: {sorted(first['metrics'])})"
        row.error = f"{row.error}; {note}" if row.error else note
    spread = _spread(values)
    row.metric = metric
    row.metric_values = values
    row.metric_mean, row.metric_std, row.metric_min, row.metric_max = (
        spread["mean"], spread["std"], spread["min"], spread["max"]
    )
    scored = [(seed, run) for seed, run in ok if metric in run["metrics"]]
    row.constant_metric = first.get("constant_metric")
    row.stalled_seeds = stalled_seeds([run["metrics"][metric] for _, run in scored], [seed for seed, _ in scored],
                                      row.constant_metric, first.get("eval_examples"))
    losses = [run["metrics"]["eval_loss"] for _, run in ok if "eval_loss" in run["metrics"]]
    row.eval_loss_mean = statistics.fmean(losses) if losses else None
    row.eval_means = {key: statistics.fmean(run["metrics"][key] for _, run in ok)
                      for key in sorted(first["metrics"]) if all(key in run["metrics"] for _, run in ok)}
    row.adapter_bytes = first["saved_bytes"]
    notes = sorted({note for _, run in ok for note in run.get("notes", [])})
    if notes:
        row.error = "; ".join(([row.error] if row.error else []) + notes)
    row.global_steps = first["global_step"]
    row.checkpoint = first.get("checkpoint")
    row.train_time_s = statistics.fmean(run["train_time_s"] for _, run in ok)
    row.wall_time_s = statistics.fmean(run["wall_time_s"] for _, run in ok)


def add_timing(rows: list[StrategyResult], timing: dict[str, Any], batch_size: int) -> None:
    """Copy the side-by-side step times into the rows."""
    for row in rows:
        measured = timing.get("timings", {}).get(row.label)
        if measured is None:
            error = timing.get("errors", {}).get(row.label) or timing.get("error")
            if error:
                note = f"timing: {error}"
                row.error = f"{row.error}; {note}" if row.error else note
            continue
        row.step_time_ms = measured["step_time_ms"]
        row.step_time_ms_min = measured["step_time_ms_min"]
        row.step_time_ms_max = measured["step_time_ms_max"]
        row.timed_steps = measured["steps"]
        row.throughput = batch_size / (row.step_time_ms / 1000)


def add_differences(rows: list[StrategyResult], baseline: str = "full") -> None:
    """Each row's 95% interval over seeds and its paired difference from full fine-tuning
    (see :mod:`petl.bench.stats`)."""
    from petl.bench.stats import mean_interval, paired_difference

    full = next((r for r in rows if r.strategy == baseline and r.metric_values), None)
    for row in rows:
        interval = mean_interval(row.metric_values) if len(row.metric_values) == len(row.seeds) else None
        row.metric_ci = [interval.low, interval.high] if interval is not None and interval.low is not None else None
        if full is None or row is full or len(row.metric_values) != len(row.seeds):
            continue
        diff = paired_difference(row.metric_values, row.seeds, full.metric_values, full.seeds)
        if diff is not None:
            row.diff_to_full = diff.mean
            row.diff_ci = [diff.low, diff.high] if diff.low is not None else None
            row.indistinguishable = diff.contains_zero


def add_ratios(rows: list[StrategyResult], baseline: str = "full") -> None:
    """Ratios of trainable parameters and step time to the full fine-tuning row."""
    full = next((r for r in rows if r.strategy == baseline), None)
    if full is None:
        return
    for row in rows:
        if row.trainable_params is not None and full.trainable_params:
            row.ratio_to_full = row.trainable_params / full.trainable_params
        if row.step_time_ms is not None and full.step_time_ms:
            row.step_time_ratio = row.step_time_ms / full.step_time_ms
