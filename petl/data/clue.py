"""Rows without a gold label in natural-language-inference files (OCNLI, SNLI, MNLI).

NLI releases keep the pairs on which the annotators did not agree, with the label
``"-"`` ("no gold label"): 50 of OCNLI's 3,000 dev pairs, and the same convention in
SNLI and MultiNLI. Such a row is no class; training on it would add a spurious fourth
class and evaluating on it would count a guess against the model. So a file that holds
sentence pairs (``sentence1``/``sentence2`` or ``premise``/``hypothesis``) and a string
``label`` (or ``gold_label``) column has those rows dropped when it is read, and the
number dropped is logged. Any other file is returned unchanged.

The other CLUE classification sets need no special reading: TNEWS is read as JSON lines
with ``label_column="label_desc"`` (its ``label`` column holds the codes 100-116, with
gaps), EPRSTMT's ``sentence``/``label`` columns are found automatically.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets

__all__ = ["NO_GOLD_LABEL", "drop_no_gold_label"]

logger = logging.getLogger(__name__)

NO_GOLD_LABEL = "-"
"""The label NLI data sets give a pair the annotators did not agree on."""
_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"))
_LABELS = ("label", "gold_label")


def drop_no_gold_label(dataset: datasets.Dataset, where: Any = "the data") -> datasets.Dataset:
    """``dataset`` without its sentence-pair rows labelled ``"-"`` (no gold label), with the count logged.

    Args:
        dataset: The rows as read.
        where: The file (or a description of the data), for the log line.

    Returns:
        ``dataset`` itself when it is not sentence-pair data with a string label column or has
        no such row; otherwise a filtered copy.
    """
    columns = dataset.column_names
    if not any(a in columns and b in columns for a, b in _PAIRS):
        return dataset
    label = next((c for c in _LABELS if c in columns), None)
    if label is None or getattr(dataset.features.get(label), "dtype", None) not in ("string", "large_string"):
        return dataset
    keep = [i for i, value in enumerate(dataset[label]) if value != NO_GOLD_LABEL]
    dropped = len(dataset) - len(keep)
    if dropped == 0:
        return dataset
    logger.info("Dropped %d of %d rows of %s whose %r is %r (no gold label: the annotators did not agree).",
                dropped, len(dataset), where, label, NO_GOLD_LABEL)
    return dataset.select(keep)
