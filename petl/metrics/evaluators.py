"""Evaluators that turn model logits and labels into metrics, one per task.

Each follows the ``evaluate`` API: ``add_batch`` stores the argmax predictions of a
batch, ``compute`` returns the metrics over everything added and starts afresh.
Positions labelled -100 (padding, special tokens, later sub-tokens) are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from petl.metrics.classification import accuracy, f1_score
from petl.metrics.ner import entity_scores
from petl.tasks import IGNORE_INDEX

__all__ = ["ClassificationEvaluator", "NoMetricsEvaluator", "TokenClassificationEvaluator"]

logger = logging.getLogger(__name__)


class ClassificationEvaluator:
    """Accuracy and macro F1 of sequence classification (``logits``: batch x classes)."""

    def __init__(self) -> None:
        self._predictions: list[int] = []
        self._references: list[int] = []

    def add_batch(self, *, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Store the predicted and true class of each example with a label other than -100."""
        predictions = logits.detach().argmax(dim=-1).reshape(-1).cpu()
        labels = labels.detach().reshape(-1).cpu()
        keep = labels != IGNORE_INDEX
        self._predictions += predictions[keep].tolist()
        self._references += labels[keep].tolist()

    def compute(self) -> dict[str, float]:
        """``accuracy`` and macro ``f1`` over the stored examples ({} when none); then reset."""
        predictions, references = self._predictions, self._references
        self._predictions, self._references = [], []
        if not references:
            return {}
        return {"accuracy": accuracy(predictions, references), "f1": f1_score(predictions, references)}


class TokenClassificationEvaluator:
    """Entity-level precision / recall / F1 and tag accuracy (``logits``: batch x length x tags).

    Args:
        label_names: The IOB tag of each label id, e.g. ``["O", "B-PER", "I-PER"]``.
    """

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = list(label_names)
        self._predictions: list[list[str]] = []
        self._references: list[list[str]] = []

    def add_batch(self, *, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Store each sentence's predicted and true tags at the positions not labelled -100."""
        predictions = logits.detach().argmax(dim=-1).cpu()
        labels = labels.detach().cpu()
        names = self.label_names
        for row_predictions, row_labels in zip(predictions, labels, strict=True):
            keep = row_labels != IGNORE_INDEX
            self._predictions.append([names[i] for i in row_predictions[keep].tolist()])
            self._references.append([names[i] for i in row_labels[keep].tolist()])

    def compute(self) -> dict[str, float]:
        """``precision``, ``recall``, ``f1`` over entities and tag ``accuracy`` ({} when empty); then reset."""
        predictions, references = self._predictions, self._references
        self._predictions, self._references = [], []
        if not references:
            return {}
        scores = entity_scores(predictions, references)
        return {key: float(scores[key]) for key in ("precision", "recall", "f1", "accuracy")}


class NoMetricsEvaluator:
    """For generative tasks: the trainer reports the loss and ``perplexity = exp(loss)`` itself."""

    def add_batch(self, *, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Ignore the batch."""

    def compute(self) -> dict[str, float]:
        """No metrics: ``{}``."""
        return {}
