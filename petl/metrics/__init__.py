"""Evaluation metrics that work offline.

* :func:`evaluator_for` gives the evaluator of a task, with the ``evaluate``-style
  ``add_batch(logits=..., labels=...)`` / ``compute()`` API the trainer uses:
  accuracy and macro F1 for sequence classification, entity-level (conlleval-style)
  precision / recall / F1 and tag accuracy for token classification, nothing for
  generative tasks (whose trainer reports ``perplexity = exp(mean token loss)``).
  Question answering scores answer spans, so its evaluator needs the evaluation windows:
  :class:`petl.metrics.qa.QuestionAnsweringEvaluator` (SQuAD v1.1 / CMRC 2018 exact match and F1).
* :func:`evaluate_module_path` gives the folder of a metric module shipped with petl,
  for ``evaluate.load(str(path))``: ``evaluate.load("accuracy")`` downloads its
  script from the Hub, these load without a network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from petl.errors import ConfigError, suggest
from petl.metrics.classification import accuracy, f1_score
from petl.metrics.evaluators import ClassificationEvaluator, NoMetricsEvaluator, TokenClassificationEvaluator
from petl.metrics.ner import entities, entity_scores
from petl.tasks import check_task

__all__ = [
    "EVALUATE_MODULES",
    "ClassificationEvaluator",
    "NoMetricsEvaluator",
    "TaskEvaluator",
    "TokenClassificationEvaluator",
    "accuracy",
    "entities",
    "entity_scores",
    "evaluate_module_path",
    "evaluator_for",
    "f1_score",
    "perplexity",
]

_MODULES_DIR = Path(__file__).parent / "modules"

EVALUATE_MODULES = ("accuracy", "f1", "seqeval")
"""The ``evaluate`` metric modules petl ships: ``accuracy``; ``f1`` (macro by default);
``seqeval`` (entity-level scores with seqeval's output keys, computed by petl)."""


@runtime_checkable
class TaskEvaluator(Protocol):
    """Accumulates batches and computes a task's metrics, like an ``evaluate`` metric."""

    def add_batch(self, *, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the model's logits and the labels of one batch."""
        ...

    def compute(self) -> dict[str, float]:
        """The metrics over every batch added (keys without an ``eval_`` prefix)."""
        ...


def evaluator_for(task: str, label_names: Sequence[str] | None = None) -> TaskEvaluator:
    """The evaluator of ``task``.

    Args:
        task: One of :data:`petl.tasks.TASKS`.
        label_names: The tag of each label id; needed for token classification.

    Returns:
        sequence-classification: ``accuracy`` and macro ``f1``; token-classification:
        entity-level ``precision``, ``recall``, ``f1`` and tag ``accuracy``;
        causal-lm and seq2seq: no metrics (``{}``).

    Raises:
        UnknownTaskError: Unknown task.
        ConfigError: Token classification without ``label_names``.
    """
    check_task(task)
    if task == "sequence-classification":
        return ClassificationEvaluator()
    if task == "token-classification":
        if not label_names:
            raise ConfigError(
                "Entity-level F1 needs the tag of each label id, but no label_names were given. Pass the tags "
                'in id order, e.g. label_names=["O", "B-PER", "I-PER", ...], or use string tags in the data.'
            )
        return TokenClassificationEvaluator(label_names)
    if task == "question-answering":
        raise ConfigError(
            "Question answering maps spans back to each question's context, so its evaluator needs the evaluation "
            "windows: use petl.metrics.qa.QuestionAnsweringEvaluator.for_dataset(task_data.eval)."
        )
    return NoMetricsEvaluator()


def evaluate_module_path(name: str) -> Path:
    """The folder of one of petl's ``evaluate`` modules, for ``evaluate.load(str(path))`` offline.

    Raises:
        ConfigError: ``name`` is not one of :data:`EVALUATE_MODULES`.
    """
    if name not in EVALUATE_MODULES:
        raise ConfigError(
            f"petl ships no evaluate module {name!r}.{suggest(name, EVALUATE_MODULES)} "
            f"Choose one of {', '.join(EVALUATE_MODULES)}."
        )
    return _MODULES_DIR / name


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean token cross-entropy (in nats); ``inf`` when it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
