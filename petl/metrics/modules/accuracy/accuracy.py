"""Accuracy, an ``evaluate`` module that loads offline: the fraction of predictions equal to their reference.

Load it with ``evaluate.load(str(petl.metrics.evaluate_module_path("accuracy")))``.
"""

import datasets
import evaluate

from petl.metrics.classification import accuracy

_DESCRIPTION = "Accuracy: the fraction of predictions that equal their reference."
_INPUTS = """
Args:
    predictions (list of int): Predicted labels.
    references (list of int): True labels.
Returns:
    accuracy (float): Correct predictions / all predictions, in [0, 1].
"""


class Accuracy(evaluate.Metric):
    """Accuracy of single-label predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, references)}
