"""Parameter accounting for wrapped and plain models."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ParameterCount", "count_parameters"]


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
