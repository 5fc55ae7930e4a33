"""``evaluate`` metric modules that load offline: ``evaluate.load(str(petl.metrics.evaluate_module_path(name)))``.

Each module folder holds one script that ``evaluate`` imports; the scripts compute with
petl's own metrics (:mod:`petl.metrics`) and describe themselves with :func:`metric_info`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

__all__ = ["metric_info"]


def metric_info(
    description: str, arguments: Sequence[str], returns: Sequence[str], *, tags: bool = False
) -> evaluate.MetricInfo:
    """The ``evaluate.MetricInfo`` of a petl metric module.

    Args:
        description: One sentence on what the metric measures.
        arguments: Lines describing ``_compute``'s options beyond predictions and references.
        returns: Lines describing the keys the metric returns.
        tags: Inputs are lists of string tags per sentence (else one integer label per example).
    """
    import datasets
    import evaluate

    kind = "list of list of str" if tags else "list of int"
    value = datasets.Sequence(datasets.Value("string")) if tags else datasets.Value("int64")
    lines = ["Args:", f"    predictions ({kind}): Predicted labels.", f"    references ({kind}): True labels.",
             *(f"    {line}" for line in arguments), "Returns:", *(f"    {line}" for line in returns)]
    return evaluate.MetricInfo(
        description=description, citation="", inputs_description="\n".join(lines),
        features=datasets.Features({"predictions": value, "references": value}),
    )
