"""Entity-level NER scores, an ``evaluate`` module that loads offline and needs no ``seqeval`` package.

Entities are chunked from IOB1 / IOB2 (and IOBES) tags as conlleval does; precision,
recall and F1 are micro-averaged over entities (see :mod:`petl.metrics.ner`). The
output keys follow the ``seqeval`` metric of the Hub: one dict per entity type, then
``overall_precision``, ``overall_recall``, ``overall_f1`` and ``overall_accuracy``.
Load it with ``evaluate.load(str(petl.metrics.evaluate_module_path("seqeval")))``.
"""

import evaluate

from petl.metrics.modules import metric_info
from petl.metrics.ner import entity_scores


class Seqeval(evaluate.Metric):
    """Entity-level scores of IOB-tagged sentences."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(
            "Entity-level precision, recall and F1 of sequence labelling (conlleval chunking).", [],
            ["<TYPE> (dict): precision, recall, f1 and number (reference entities) of each entity type.",
             "overall_precision, overall_recall, overall_f1 (float): micro-averaged over entities.",
             "overall_accuracy (float): Tag accuracy."],
            tags=True,
        )

    def _compute(self, predictions: list[list[str]], references: list[list[str]]) -> dict:
        scores = entity_scores(predictions, references)
        return {
            **scores["per_type"],
            "overall_precision": scores["precision"],
            "overall_recall": scores["recall"],
            "overall_f1": scores["f1"],
            "overall_accuracy": scores["accuracy"],
        }
