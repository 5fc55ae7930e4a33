"""Step time measured side by side: every row's model takes a training step in turn.

All rows are loaded into one process and trained round-robin on the same fixed
batches: in round ``k`` each row takes one full optimizer step on batch
``k mod B``, starting from a rotated position so no row always goes first. A step is

    forward -> task loss (+ the strategy's regulariser) -> backward
    -> clip the gradient norm to 1 -> optimizer step -> strategy.on_step_end -> zero_grad

as in :func:`petl.train`, timed with ``time.perf_counter`` (after
``torch.cuda.synchronize`` on a GPU). The first ``warmup_steps`` rounds are not
timed; the reported step time is the median of the timed rounds, and

    throughput = batch_size / median step time    (examples per second).

Because the rows alternate step by step, a burst of load from another process slows
them alike, and the ratios between rows stay meaningful on a busy machine.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from petl.bench.config import BenchConfig, StrategySpec
from petl.wrapping import is_wrapped, state_of

__all__ = ["Subject", "fixed_batches", "time_rows"]

logger = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0


@dataclass
class Subject:
    """One row's model and optimizer in the timing loop."""

    row: StrategySpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    autocast: Any
    strategy: Any
    times: list[float] = field(default_factory=list)
    step: int = 0


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


def _optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


def _autocast(device: torch.device, mixed_precision: str) -> Any:
    if mixed_precision == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_subject(config: BenchConfig, row: StrategySpec, model: nn.Module, device: torch.device, steps: int) -> Subject:
    """Prepare one row's model for timed steps (on ``device``, in train mode, with its optimizer)."""
    settings = config.resolved(row)
    if not settings["load_in_8bit"]:
        model.to(device)
    model.train()
    lr = settings["learning_rate"] or (5e-5 if row.is_full else 1e-3)
    strategy = state_of(model).strategy if is_wrapped(model) else None
    if strategy is not None:
        strategy.on_train_begin(model, steps)
    return Subject(row, model, _optimizer(model, settings["optimizer"], lr),
                   _autocast(device, settings["mixed_precision"]), strategy)


def _step(subject: Subject, batch: dict[str, torch.Tensor], cuda: bool) -> float:
    model = subject.model
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with subject.autocast():
        loss = model(**batch).loss
        if subject.strategy is not None:
            extra = subject.strategy.regularization_loss(model)
            if extra is not None:
                loss = loss + extra
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
    subject.optimizer.step()
    subject.step += 1
    if subject.strategy is not None:
        subject.strategy.on_step_end(model, subject.step)
    subject.optimizer.zero_grad(set_to_none=True)
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
            elapsed = _step(subject, batch, cuda)
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
