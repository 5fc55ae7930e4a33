"""The order in which a run reads its examples: length-grouped training batches, evaluation
in length order, and the collator that builds each training batch (packed or padded).

Batches are padded to their longest example, so a batch drawn at random pads its short
sentences to the longest one in it. :class:`LengthGroupedOrder` draws the examples of each
optimizer step from examples of similar length instead, by the megabatch scheme (as
transformers' ``LengthGroupedSampler``). With ``S`` the examples of one optimizer step
(``batch_size * gradient_accumulation_steps * processes``):

1. shuffle the training set with the generator of ``(seed, epoch)``, the one
   :class:`~petl.training.data.EpochOrder` uses;
2. cut the shuffled order into megabatches of ``m * S`` examples, with
   ``m = min(50, max(1, n // (4 * S)))`` (at least four megabatches where the set allows, so
   that a small set's batches still change from epoch to epoch);
3. sort each megabatch by length, longest first (a stable sort: ties stay in shuffled order)
   and cut it into steps of ``S`` examples;
4. shuffle the order of the full steps with the same generator, then swap the step that holds
   the longest example to the front (a run that runs out of memory does so at its first step,
   not hours in). The one short step (``n % S`` examples, the shortest of the last megabatch)
   stays last.

The data loader cuts the order into consecutive micro-batches of ``batch_size`` and
Accelerate hands them out whole, micro-batch ``i`` to process ``i % processes``, so every
micro-batch is a slice of one sorted step (similar lengths), and an optimizer step sees the
same examples however they are split into micro-batches and processes, as with random order
(``batch_size=8`` and ``batch_size=4, gradient_accumulation_steps=2`` still take the same
steps). The order depends only on the seed, the epoch, the lengths and ``S``, so a resumed
run regenerates it and skips the batches already seen.

What it changes: which examples share a step (similar lengths rather than any), not which
examples an epoch visits or how often. That is why it is off unless
``TrainConfig.group_by_length=True``: where length goes with the kind of example, a step holds
one kind (on petl's synthetic sentiment data, whose single clauses are short and contrasts
long, LoRA ended 5.1 points lower over four seeds, ``benchmarks/results/length_grouping_default.md``), and
losses that average over a batch's tokens (token classification, causal LM, seq2seq) weigh
the tokens of short batches more (on CoNLL-2003, ``benchmarks/results/padding.md``, grouping
ran 2.4x faster and ended 0.022 F1 lower on average over four seeds). On SST-2 it ran 2.06x
faster with the accuracy within seed noise.
Evaluation reads its set longest first (:class:`LengthOrder`); its metrics do not depend on
the order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from petl.data.packing import PackingCollator, check_packing
from petl.tasks import IGNORE_INDEX
from petl.training.config import TrainConfig
from petl.training.data import EpochOrder, is_stream

__all__ = [
    "LengthGroupedOrder",
    "LengthOrder",
    "TOKEN_AVERAGED_TASKS",
    "check_packing",
    "eval_order",
    "example_lengths",
    "grouped_steps",
    "groups_by_length",
    "labelled_tokens",
    "mean_labelled_tokens",
    "training_collator",
    "training_order",
]

logger = logging.getLogger(__name__)

MAX_MEGABATCH = 50
"""Optimizer steps per megabatch at most: larger megabatches pad less, smaller ones mix more."""


def example_lengths(dataset: Any) -> list[int] | None:
    """``len(input_ids)`` of every example, or ``None`` when an example has no ``input_ids`` list."""
    rows = getattr(dataset, "examples", None)  # a TokenizedDataset: read its list without copies
    lengths = []
    for index in range(len(dataset)):
        row = rows[index] if rows is not None else dataset[index]
        ids = row.get("input_ids") if isinstance(row, dict) else None
        if not isinstance(ids, (list, tuple, torch.Tensor)):
            return None
        lengths.append(len(ids))
    return lengths


TOKEN_AVERAGED_TASKS = ("token-classification", "causal-lm", "seq2seq")
"""Tasks whose models average the loss over a batch's labelled tokens (``labels != -100``)."""


def labelled_tokens(labels: Any, task: str) -> int:
    """The labelled positions the model's loss averages over: ``labels != -100``, but for
    ``causal-lm`` not the first position, which no token predicts (the model shifts the labels)."""
    labels = torch.as_tensor(labels)
    if task == "causal-lm":
        labels = labels[..., 1:]
    return int((labels != IGNORE_INDEX).sum())


def mean_labelled_tokens(dataset: Any, task: str) -> float | None:
    """The mean of :func:`labelled_tokens` over the examples, or ``None`` when an example has no
    ``labels`` list (a stream, or labels the collator builds)."""
    rows = getattr(dataset, "examples", None)
    if is_stream(dataset) or len(dataset) == 0:
        return None
    total = 0
    for index in range(len(dataset)):
        row = rows[index] if rows is not None else dataset[index]
        labels = row.get("labels") if isinstance(row, dict) else None
        if not isinstance(labels, (list, tuple, torch.Tensor)):
            return None
        total += labelled_tokens(labels, task)
    return total / len(dataset)


def grouped_steps(lengths: Sequence[int], step_size: int, generator: torch.Generator) -> list[list[int]]:
    """The optimizer steps of one epoch by the megabatch scheme (see the module docstring).

    Args:
        lengths: Each example's length.
        step_size: Examples per optimizer step (over every micro-batch and process).
        generator: The epoch's generator; the shuffles draw from it in a fixed order.

    Returns:
        Lists of example indices, longest first, each of ``step_size`` but the last, which may be shorter.
    """
    size = len(lengths)
    order = torch.randperm(size, generator=generator).tolist()
    span = min(MAX_MEGABATCH, max(1, size // (4 * step_size))) * step_size
    steps: list[list[int]] = []
    for start in range(0, size, span):
        ranked = sorted(order[start:start + span], key=lambda i: -lengths[i])
        steps += [ranked[i:i + step_size] for i in range(0, len(ranked), step_size)]
    short = [steps.pop()] if steps and len(steps[-1]) < step_size else []
    if steps:
        steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
        longest = max(range(len(steps)), key=lambda s: (lengths[steps[s][0]], -s))  # each step is sorted
        steps[0], steps[longest] = steps[longest], steps[0]
    return steps + short


class LengthGroupedOrder(EpochOrder):
    """Optimizer steps of examples of similar length, in an order that depends only on the seed,
    the epoch, the lengths and the step size (the megabatch scheme of the module docstring).

    Args:
        lengths: Each training example's length (``len(input_ids)``).
        seed: The run's seed.
        batch_size: Examples per micro-batch and process, the data loader's ``batch_size``.
        step_size: Examples per optimizer step, ``batch_size * gradient_accumulation_steps *
            processes``; ``None`` is ``batch_size``.
    """

    grouping = "length-grouped"

    def __init__(self, lengths: Sequence[int], seed: int, batch_size: int, step_size: int | None = None) -> None:
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size = list(lengths), batch_size
        self.step_size = step_size if step_size is not None else batch_size

    def batches(self) -> list[list[int]]:
        """The micro-batches of the current epoch (:meth:`set_order`), as the data loader cuts them."""
        order = list(self)
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[int]:
        steps = grouped_steps(self.lengths, self.step_size, self.epoch_generator())
        return iter([index for step in steps for index in step])


class LengthOrder(Sampler[int]):
    """The evaluation set longest first (a stable sort: equal lengths keep their order).

    Batches of similar length pad less; the metrics do not depend on the order in which the
    examples are read.
    """

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def groups_by_length(config: TrainConfig) -> bool:
    """Whether a run under ``config`` groups its training batches by length."""
    # packing removes the padding of uniformly random batches itself
    return config.group_by_length and not config.packing


def training_order(train: Any, config: TrainConfig, processes: int = 1) -> EpochOrder | None:
    """The sampler of the training set: ``None`` for a stream (read in its own order), else
    length-grouped steps where :func:`groups_by_length` says so and the examples have
    ``input_ids``, else :class:`EpochOrder` (uniformly random, as without grouping).

    Args:
        train: The training set.
        config: The run's options (``group_by_length``, ``packing``, ``seed``, the batch sizes).
        processes: The number of data-parallel processes, which share each optimizer step.
    """
    if is_stream(train):
        return None
    if groups_by_length(config):
        lengths = example_lengths(train)
        if lengths is not None:
            step = config.batch_size * config.gradient_accumulation_steps * processes
            return LengthGroupedOrder(lengths, config.seed, config.batch_size, step)
        logger.info("group_by_length: the training examples have no input_ids list to measure; "
                    "batches are drawn in random order.")
    return EpochOrder(len(train), config.seed)


def eval_order(dataset: Any) -> LengthOrder | None:
    """The sampler of the evaluation set: longest first, or ``None`` (the set's own order) when
    its examples have no ``input_ids`` list to measure, or when the set says its evaluation reads
    the examples in its own order (``in_order_evaluation``: question answering, whose evaluator
    maps the n-th window's logits back through the n-th window's offsets)."""
    if getattr(dataset, "in_order_evaluation", False):
        return None
    lengths = example_lengths(dataset)
    return LengthOrder(lengths) if lengths is not None else None


def training_collator(data: Any, config: TrainConfig) -> Any:
    """The collator of the training batches: the data's own, or with ``config.packing`` a
    :class:`~petl.data.packing.PackingCollator` padding with the data's pad id."""
    if not config.packing:
        return data.collator
    pad = getattr(data.collator, "pad_values", {}).get("input_ids", 0)
    return PackingCollator(pad)
