"""F1, an ``evaluate`` module that loads offline (macro-averaged by default).

``F1_c = 2 tp / (2 tp + fp + fn)`` per class; ``average="macro"`` takes the mean over
the classes seen in references or predictions, ``"micro"`` pools the counts,
``"weighted"`` weights by reference counts, ``"binary"`` reports ``pos_label``.
Load it with ``evaluate.load(str(petl.metrics.evaluate_module_path("f1")))``.
"""

import datasets
import evaluate

from petl.metrics.classification import f1_score

_DESCRIPTION = "F1 score, the harmonic mean of precision and recall, per class and averaged."
_INPUTS = """
Args:
    predictions (list of int): Predicted labels.
    references (list of int): True labels.
    average (str): "macro" (default), "micro", "weighted" or "binary".
    pos_label (int): The positive class for average="binary" (default 1).
Returns:
    f1 (float): The averaged F1, in [0, 1].
"""


class F1(evaluate.Metric):
    """F1 of single-label predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self, predictions: list[int], references: list[int], average: str = "macro", pos_label: int = 1
    ) -> dict[str, float]:
        return {"f1": f1_score(predictions, references, average=average, pos_label=pos_label)}
