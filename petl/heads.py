"""Finding and training the task head a model adds fresh on top of its body.

``AutoModelForSequenceClassification.from_pretrained(...)`` puts a randomly
initialised classifier on a pretrained encoder. An adapter trained without that
classifier is useless, and one saved without it cannot reproduce predictions, so
petl trains and saves the fresh head by default. The user's original head values
are kept aside and put back by ``petl.unwrap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from petl.errors import TargetNotFoundError

__all__ = ["HeadState", "find_task_heads", "resolve_heads"]

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


def resolve_heads(model: nn.Module, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The modules to train in full: ``requested``, or the fresh task head when ``None``.

    Raises:
        TargetNotFoundError: A requested name is not a module of the model.
    """
    if requested is None:
        return find_task_heads(model)
    modules = dict(model.named_modules())
    missing = [name for name in requested if name not in modules]
    if missing:
        top = ", ".join(name for name, _ in model.named_children())
        raise TargetNotFoundError(
            f"modules_to_save names {missing}, which the model ({type(model).__name__}) does not have. "
            f"Give full module names as in model.named_modules(); its top-level modules are: {top}."
        )
    return requested


@dataclass
class HeadState:
    """Heads trained in full by petl on behalf of a strategy, with their original values."""

    names: tuple[str, ...]
    originals: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def enable(cls, model: nn.Module, names: tuple[str, ...]) -> HeadState:
        """Make the heads trainable, keeping a copy of their current values."""
        state = cls(names)
        for key, param in state.parameters(model).items():
            state.originals[key] = param.detach().clone()
            param.requires_grad_(True)
        return state

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The heads' parameters keyed by their full names in ``model``."""
        params: dict[str, nn.Parameter] = {}
        for name in self.names:
            module = model.get_submodule(name)
            for key, param in module.named_parameters():
                params[f"{name}.{key}"] = param
        return params

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {key: param.detach() for key, param in self.parameters(model).items()}

    def restore(self, model: nn.Module) -> None:
        """Put the original head values back."""
        params = self.parameters(model)
        with torch.no_grad():
            for key, value in self.originals.items():
                params[key].copy_(value)
