"""Layer kinds: what counts as a linear layer, and its shape.

One definition serves every part of petl (block discovery, LoRA's error hints, the
8-bit memory estimate, plugin strategies): ``nn.Linear`` and its subclasses
(bitsandbytes' ``Linear8bitLt`` and ``Linear4bit``, Falcon's ``FalconLinear``) and the
transposed ``Conv1D`` of GPT-2-style models.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_linear", "linear_dims", "linear_layer_names"]


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear-like layer, else ``None``.

    Covers ``nn.Linear`` and its subclasses (bitsandbytes' 8-bit and 4-bit layers,
    Falcon's ``FalconLinear``) and the transposed ``Conv1D`` of GPT-2.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nx") and hasattr(module, "nf"):
        return int(module.nx), int(module.nf)
    return None




def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer in the sense of :func:`linear_dims`."""
    return linear_dims(module) is not None


def linear_layer_names(model: nn.Module, limit: int = 12) -> str:
    """The distinct last name parts of the linear layers of ``model`` (``query, value, dense``),
    comma-separated and cut to ``limit``, for error messages that suggest target names."""
    names: list[str] = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if is_linear(module) and leaf not in names:
            names.append(leaf)
    return ", ".join(names[:limit]) or "none"
