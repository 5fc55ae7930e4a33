"""Step time measured side by side: every row's model takes a training step in turn.

All rows are loaded into one process and trained round-robin on the same fixed
batches: in round ``k`` each row takes one full optimizer step on batch
``k mod B``, starting from a rotated position so no row always goes first. A step is
the trainer's own (:class:`petl.training.step.StepRunner`: the same loss, regulariser,
optimizer with its weight-decay groups, default learning rate, precision and
gradient clipping as :func:`petl.train`), timed with ``time.perf_counter`` (after
``torch.cuda.synchronize`` on a GPU). The first ``warmup_steps`` rounds are not
timed; the reported step time is the median of the timed rounds, and

    throughput = batch_size / median step time    (examples per second).

Because the rows alternate step by step, a burst of load from another process slows
them alike, and the ratios between rows stay meaningful on a busy machine.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from petl.bench.config import BenchConfig
from petl.bench.schema import StrategySpec
from petl.training.config import TrainConfig
from petl.training.step import StepRunner

__all__ = ["Subject", "fixed_batches", "make_subject", "time_rows"]

logger = logging.getLogger(__name__)


@dataclass
class Subject:
    """One row's model and its step runner in the timing loop."""

    row: StrategySpec
    runner: StepRunner
    times: list[float] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.runner.model


def fixed_batches(
    data: Any, batch_size: int, count: int, seed: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """``count`` batches drawn once (seeded) from the training set, collated and on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.train), generator=generator).tolist()
    batches = []
    for k in range(count):
        rows = [order[(k * batch_size + i) % len(order)] for i in range(batch_size)]
        batch = data.collator([data.train[i] for i in rows])
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def make_subject(config: BenchConfig, row: StrategySpec, model: nn.Module, device: torch.device, steps: int) -> Subject:
    """Prepare one row's model for timed steps: on ``device``, in train mode, with the
    trainer's optimizer, precision and gradient clipping for this row."""
    settings = config.resolved(row)
    if not settings["load_in_8bit"]:
        model.to(device)
    model.train()
    train_config = TrainConfig(learning_rate=settings["learning_rate"], optimizer=settings["optimizer"],
                               mixed_precision=settings["mixed_precision"])
    return Subject(row, StepRunner(model, train_config, total_steps=steps, device=device))


def _timed_step(subject: Subject, batch: dict[str, torch.Tensor], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    subject.runner(batch)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _rounds(subjects: list[Subject], rounds: int) -> Iterator[tuple[int, list[Subject]]]:
    for k in range(rounds):
        shift = k % len(subjects)
        yield k, subjects[shift:] + subjects[:shift]


def time_rows(subjects: list[Subject], batches: list[dict[str, torch.Tensor]], *, warmup: int, steps: int,
              progress: bool = True) -> dict[str, dict[str, float]]:
    """Run the round-robin loop and return each row's step-time statistics.

    Returns:
        ``{label: {"step_time_ms", "step_time_ms_min", "step_time_ms_max", "steps"}}``
        with the median, minimum and maximum over the timed steps.
    """
    from tqdm.auto import tqdm

    cuda = any(p.is_cuda for s in subjects for p in s.model.parameters())
    rounds = warmup + steps
    for k, order in tqdm(_rounds(subjects, rounds), total=rounds, desc="timing", unit="round",
                         disable=not progress):
        batch = batches[k % len(batches)]
        for subject in order:
            elapsed = _timed_step(subject, batch, cuda)
            if k >= warmup:
                subject.times.append(elapsed)
    return {
        s.row.display: {
            "step_time_ms": 1000 * statistics.median(s.times),
            "step_time_ms_min": 1000 * min(s.times),
            "step_time_ms_max": 1000 * max(s.times),
            "steps": len(s.times),
        }
        for s in subjects
        if s.times
    }
