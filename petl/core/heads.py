"""Finding and training the task head a model adds fresh on top of its body.

``AutoModelForSequenceClassification.from_pretrained(...)`` puts a randomly
initialised classifier on a pretrained encoder. An adapter trained without that
classifier is useless, and one saved without it cannot reproduce predictions, so
petl trains and saves the fresh head by default. The user's original head values
are kept aside and put back by ``petl.unwrap``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from petl.errors import TargetNotFoundError
from petl.modeling.heads import find_task_heads

__all__ = ["HeadState", "resolve_heads"]

def resolve_heads(model: nn.Module, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The full names of the modules to train in full: ``requested``, or the fresh task
    head when ``None``.

    A requested name is either a full module name (``"bert.pooler"``) or, as in peft's
    ``modules_to_save``, the tail of one at a dot boundary (``"pooler"``), which
    selects every module whose name ends with it.

    Raises:
        TargetNotFoundError: A requested name matches no module of the model.
    """
    if requested is None:
        return find_task_heads(model)
    names = [name for name, _ in model.named_modules() if name]
    resolved: list[str] = []
    missing: list[str] = []
    for wanted in requested:
        matches = [name for name in names if name == wanted or name.endswith("." + wanted)]
        if not matches:
            missing.append(wanted)
        resolved.extend(name for name in matches if name not in resolved)
    if missing:
        top = ", ".join(name for name, _ in model.named_children())
        raise TargetNotFoundError(
            f"modules_to_save names {missing}, which match no module of the model ({type(model).__name__}). "
            f"Give module names as in model.named_modules() (a full name, or its last parts such as "
            f"'pooler' for 'bert.pooler'); its top-level modules are: {top}."
        )
    # A module inside another one already listed is trained through its parent.
    heads = tuple(name for name in resolved if not any(name.startswith(other + ".") for other in resolved))
    left_out = [name for name in find_task_heads(model) if name not in heads]
    if heads and left_out:
        warnings.warn(
            f"modules_to_save={list(requested)} leaves out the fresh task head {left_out}, which will keep "
            f"its random initial weights. Add it to modules_to_save to train it (pass "
            f"modules_to_save=[] to train no head at all without this warning).",
            UserWarning,
            stacklevel=3,
        )
    return heads


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
