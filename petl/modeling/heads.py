"""Which modules of a model form the task head it adds fresh on top of its pretrained body.

``AutoModelForSequenceClassification.from_pretrained(...)`` puts a randomly initialised
classifier on a pretrained encoder. petl trains and saves that head by default
(:mod:`petl.core.heads`), and 8-bit loading keeps it in full precision
(:mod:`petl.modeling.loading`); both find it here.
"""

from __future__ import annotations

from torch import nn

__all__ = ["find_task_heads"]

_FRESH_HEAD_CLASSES = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
)


def find_task_heads(model: nn.Module) -> tuple[str, ...]:
    """Names of the top-level modules that form a fresh task head.

    A head is fresh when the model is a classification-style model (its class name
    ends in ``ForSequenceClassification`` and the like) and the module is a
    top-level child with parameters that is neither the pretrained body
    (``model.base_model``) nor the output embeddings.
    """
    if not type(model).__name__.endswith(_FRESH_HEAD_CLASSES):
        return ()
    body = getattr(model, "base_model", model)
    if body is model:
        return ()
    try:
        output_embeddings = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        output_embeddings = None
    return tuple(
        name
        for name, child in model.named_children()
        if child is not body and child is not output_embeddings and any(True for _ in child.parameters())
    )
