"""Parameter accounting for wrapped and plain models, and loading tensors into them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from petl.core.validators import check_state_dict

__all__ = ["ParameterCount", "copy_checked", "count_parameters"]


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a model.

    ``str()`` gives the form used in petl's tables: ``74,498 / 22,788,484 (0.33%)``.
    """

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """The trainable share of all parameters, between 0 and 1."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} / {self.total:,} ({100 * self.fraction:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count the trainable and total parameters of any module.

    Shared (tied) parameters are counted once. On a model that was not wrapped
    every parameter that requires grad counts, which is full fine-tuning.
    """
    trainable = total = 0
    for param in model.parameters():  # parameters() already yields tied tensors once
        n = param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return ParameterCount(trainable=trainable, total=total)


def copy_checked(
    targets: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], *, source: str, fix: str
) -> None:
    """Copy ``tensors`` into the model's ``targets`` (same keys, same shapes), or change nothing.

    Every key and shape is checked first (:func:`~petl.core.validators.check_state_dict`),
    so a mismatch raises a :class:`~petl.errors.CheckpointError` before any value is copied.
    """
    check_state_dict(targets, tensors, source=source, fix=fix)
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(tensors[key])
