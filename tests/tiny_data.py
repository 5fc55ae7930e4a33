"""Tiny in-memory task data for tests: random token ids whose labels follow a rule, for every task."""

from __future__ import annotations

from typing import Any

import tiny_models as tm
import torch

from petl.data import Collator, TaskData, TokenizedDataset
from petl.tasks import CLASSIFICATION_TASKS, IGNORE_INDEX

TAGS = ["O", "B-X", "I-X"]


def _examples(task: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` examples whose labels follow a simple rule of the tokens, so they can be learned."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 9, (1,), generator=g))
        ids = torch.randint(3, tm.VOCAB, (length,), generator=g).tolist()
        item: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * length}
        if task == "sequence-classification":
            item["labels"] = ids[0] % tm.NUM_LABELS
        elif task == "token-classification":
            item["labels"] = [i % tm.NUM_LABELS for i in ids]
        elif task == "causal-lm":
            item["labels"] = [IGNORE_INDEX, IGNORE_INDEX] + ids[2:]  # a two-token prompt without loss
        else:  # seq2seq: copy the first tokens
            item["labels"] = ids[:3]
        out.append(item)
    return out


def task_data(task: str, n_train: int = 24, n_eval: int = 12, pad_id: int = 0) -> TaskData:
    """A ``TaskData`` of random token ids for ``task`` (ids below ``tests.tiny_models.VOCAB``)."""
    classification = task in CLASSIFICATION_TASKS
    return TaskData(
        train=TokenizedDataset(_examples(task, n_train, seed=1)),
        eval=TokenizedDataset(_examples(task, n_eval, seed=2)) if n_eval else None,
        collator=Collator(pad_id),
        task=task,
        num_labels=tm.NUM_LABELS if classification else None,
        label_names=TAGS if classification else None,
    )


class Interrupt(Exception):
    """Raised by :func:`interrupt_after` in the middle of a training run."""


def interrupt_after(model: torch.nn.Module, forwards: int) -> None:
    """Raise :class:`Interrupt` inside the training forward pass after ``forwards`` of them
    (one per optimizer step without accumulation), through a hook on ``model.classifier``."""
    calls = {"n": 0}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] > forwards:
                raise Interrupt

    model.classifier.register_forward_hook(hook)
