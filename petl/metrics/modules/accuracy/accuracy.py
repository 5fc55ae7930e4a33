"""Accuracy, an ``evaluate`` module that loads offline: the fraction of predictions equal to their reference.

Load it with ``evaluate.load(str(petl.metrics.evaluate_module_path("accuracy")))``.
"""

import evaluate

from petl.metrics.classification import accuracy
from petl.metrics.modules import metric_info


class Accuracy(evaluate.Metric):
    """Accuracy of single-label predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info("Accuracy: the fraction of predictions that equal their reference.", [],
                           ["accuracy (float): Correct predictions / all predictions, in [0, 1]."])

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, references)}
