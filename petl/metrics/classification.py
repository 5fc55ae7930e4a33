"""Classification metrics: accuracy and F1 (macro, micro, weighted or binary).

For each class ``c`` with true positives ``tp``, false positives ``fp`` and false
negatives ``fn``: ``F1_c = 2 tp / (2 tp + fp + fn)`` (0 when the class never occurs
in predictions or references). Macro F1 is the unweighted mean of ``F1_c`` over the
classes that occur in the references or the predictions; weighted F1 weights each
``F1_c`` by the class's count in the references; micro F1 pools the counts of every
class (equal to accuracy for single-label data); binary F1 is ``F1_c`` of ``pos_label``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from petl.errors import ConfigError

__all__ = ["AVERAGES", "accuracy", "f1_score"]

AVERAGES = ("macro", "micro", "weighted", "binary")


def _check(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> None:
    if len(predictions) != len(references):
        raise ConfigError(
            f"Got {len(predictions)} predictions but {len(references)} references; pass one prediction per reference."
        )


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """The fraction of predictions equal to their reference (0.0 for no examples)."""
    _check(predictions, references)
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def f1_score(
    predictions: Sequence[Hashable],
    references: Sequence[Hashable],
    *,
    average: str = "macro",
    pos_label: Hashable = 1,
) -> float:
    """F1 of single-label predictions.

    Args:
        predictions: The predicted class of each example.
        references: The true class of each example.
        average: "macro", "micro", "weighted" or "binary" (see the module docstring).
        pos_label: The positive class for ``average="binary"``.

    Raises:
        ConfigError: Unknown ``average``, or lengths that differ.
    """
    _check(predictions, references)
    if average not in AVERAGES:
        raise ConfigError(f"Unknown F1 average {average!r}; choose one of {', '.join(AVERAGES)}.")
    tp: Counter[Hashable] = Counter()
    fp: Counter[Hashable] = Counter()
    fn: Counter[Hashable] = Counter()
    for p, r in zip(predictions, references, strict=True):
        if p == r:
            tp[r] += 1
        else:
            fp[p] += 1
            fn[r] += 1

    def per_class(c: Hashable) -> float:
        denominator = 2 * tp[c] + fp[c] + fn[c]
        return 2 * tp[c] / denominator if denominator else 0.0

    if average == "binary":
        return per_class(pos_label)
    if average == "micro":
        total_tp = sum(tp.values())
        denominator = 2 * total_tp + sum(fp.values()) + sum(fn.values())
        return 2 * total_tp / denominator if denominator else 0.0
    classes = set(predictions) | set(references)
    if not classes:
        return 0.0
    if average == "weighted":
        support = Counter(references)
        return sum(per_class(c) * support[c] for c in classes) / len(references)
    return sum(per_class(c) for c in classes) / len(classes)
