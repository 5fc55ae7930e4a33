"""F1, an ``evaluate`` module that loads offline (macro-averaged by default).

``F1_c = 2 tp / (2 tp + fp + fn)`` per class; ``average="macro"`` takes the mean over
the classes seen in references or predictions, ``"micro"`` pools the counts,
``"weighted"`` weights by reference counts, ``"binary"`` reports ``pos_label``.
Load it with ``evaluate.load(str(petl.metrics.evaluate_module_path("f1")))``.
"""

import evaluate

from petl.metrics.classification import f1_score
from petl.metrics.modules import metric_info


class F1(evaluate.Metric):
    """F1 of single-label predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(
            "F1 score, the harmonic mean of precision and recall, per class and averaged.",
            ['average (str): "macro" (default), "micro", "weighted" or "binary".',
             'pos_label (int): The positive class for average="binary" (default 1).'],
            ["f1 (float): The averaged F1, in [0, 1]."],
        )

    def _compute(
        self, predictions: list[int], references: list[int], average: str = "macro", pos_label: int = 1
    ) -> dict[str, float]:
        return {"f1": f1_score(predictions, references, average=average, pos_label=pos_label)}
