"""The data side of a training run: turning what the user passed into a ``TaskData``,
the order in which an epoch visits the training set, and a last check of the labels.

The order of epoch ``e`` is a permutation drawn from a generator seeded with the run's
seed and ``e`` only, so a resumed run regenerates it and skips the batches already
seen: no sampler state needs saving. With ``TrainConfig.group_by_length`` the batches are
drawn from examples of similar length, from the same generator
(:class:`~petl.training.sampling.LengthGroupedOrder`).

A streamed training set (an iterable-style dataset, see :func:`is_stream`) has no
length and no sampler: the loop reads it in passes, starting pass ``p`` with
``set_epoch(p)`` (a shuffled ``datasets`` stream reshuffles with its seed and ``p``), and
a resumed run starts the saved pass again and skips the batches already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from petl.errors import ConfigError, LabelError
from petl.tasks import IGNORE_INDEX, TASKS, auto_class_name, check_task, task_of_model

__all__ = ["CheckedCollator", "EpochOrder", "is_stream", "resolve_data"]


def is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is iterable-style (a stream without a length, read in passes)."""
    return isinstance(dataset, torch.utils.data.IterableDataset)


def _is_task_data(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("train", "eval", "collator", "task"))


def resolve_data(
    model: nn.Module, train_data: Any, eval_data: Any, *, tokenizer: Any, task: str | None,
    data_options: Mapping[str, Any] | None,
) -> Any:
    """A ``TaskData`` from what the user passed (prepared data, or raw sources to load)."""
    if task is not None:
        check_task(task)
    model_task = task_of_model(model)
    if _is_task_data(train_data):
        if eval_data is not None or data_options:
            raise ConfigError(
                "train_data is a prepared TaskData: put the evaluation set in its `eval` field and load it with the "
                "data options, rather than passing eval_data= or data_options= to petl.train."
            )
        data = train_data
        if task is not None and task != data.task:
            raise ConfigError(f"task={task!r} was given, but the TaskData was prepared for {data.task!r}.")
    else:
        task = task or model_task
        if task is None:
            raise ConfigError(
                f"Cannot tell the task of a {type(model).__name__}. Pass task= one of {', '.join(TASKS)}."
            )
        from petl.data import load_task_data  # lazy: petl.data imports datasets

        options = dict(data_options or {})
        if tokenizer is None and "pad_token_id" not in options:
            # Pre-tokenized data needs no tokenizer; its batches are padded with the model's pad id.
            options["pad_token_id"] = getattr(getattr(model, "config", None), "pad_token_id", None)
        data = load_task_data(task, train_data, eval_data, tokenizer=tokenizer, **options)
    if data.task not in TASKS:
        raise ConfigError(f"The data's task {data.task!r} is not one of {', '.join(TASKS)}.")
    if model_task is not None and model_task != data.task:
        raise ConfigError(
            f"A {type(model).__name__} is built for {model_task!r}, but the data is for {data.task!r}. "
            f"Load the model with the head of the task (e.g. {auto_class_name(data.task)})."
        )
    if data.train is None or (not is_stream(data.train) and len(data.train) == 0):
        raise ConfigError("There is no training data: pass a training set with at least one example.")
    return data


class EpochOrder(Sampler[int]):
    """A shuffled order of the training set that depends only on the seed and the epoch.

    Resuming needs no sampler state: the order of epoch ``e`` is regenerated, and the
    batches already seen are skipped.
    """

    grouping: str | None = None
    """How batches are formed, as a checkpoint's fingerprint records it: ``None`` for uniformly
    random batches (what checkpoints without the record used); see :mod:`petl.training.sampling`."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_order(self, epoch: int) -> None:
        """Use the order of ``epoch`` (not ``set_epoch``: Accelerate calls that with its own count)."""
        self.epoch = epoch

    def epoch_generator(self) -> torch.Generator:
        """A fresh generator of the current epoch, seeded with the seed and the epoch only."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=self.epoch_generator()).tolist())

    def __len__(self) -> int:
        return self.size


class CheckedCollator:
    """The data's collator, refusing class labels that the model's head cannot output."""

    def __init__(self, collator: Any, num_labels: int | None, split: str) -> None:
        self.collator, self.num_labels, self.split = collator, num_labels, split

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        labels = batch.get("labels")
        if self.num_labels is not None and labels is not None and not labels.is_floating_point():
            bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_labels))]
            if bad.numel():
                raise LabelError(
                    f"The {self.split} data has label {int(bad[0])}, but the model's head has {self.num_labels} "
                    f"outputs (labels 0..{self.num_labels - 1}). Fix the labels, or load the model with "
                    f"num_labels={int(bad.max()) + 1} or more."
                )
        return batch
