"""Training memory of one strategy at one base precision: the arithmetic behind ``petl estimate``.

For ``P_t`` trainable parameters and the frozen ones ``p``:

    weights    = sum over frozen params of b_frozen(p) + P_t * b_train
    gradients  = P_t * b_train
    optimizer  = 2 * P_t * b_train  (AdamW: two states in the parameter's dtype)
               = 2 * P_t            (8-bit AdamW: two 1-byte states)

with bytes per parameter by base precision:

* ``fp32``: ``b_frozen = b_train = 4``;
* ``bf16``: ``b_frozen = 2``; ``b_train = 4`` for adapters and heads (petl keeps
  trainable weights in fp32 under autocast), ``2`` for full fine-tuning (the weights
  themselves are bf16);
* ``int8``: the linear layers bitsandbytes quantizes take 1 byte per weight plus a
  4-byte scale per output row; every other parameter (embeddings, norms, biases,
  task heads) is fp32 (4 bytes), as peft's ``prepare_model_for_kbit_training`` leaves
  it; ``b_train = 4``;
* ``int4``: the same layers take half a byte per weight plus a 4-byte scale per block
  of 64 weights (bitsandbytes' 4-bit defaults, without double quantization); the rest as
  for ``int8``.

Full fine-tuning cannot train 8-bit or 4-bit weights. Activations and the peak of a
step come from a trace (:mod:`petl.bench.activations`), added by :mod:`petl.bench.estimate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from petl.modeling.layers import linear_dims

__all__ = [
    "INT4_BLOCK", "PRECISIONS", "QUANTIZED", "MemoryEstimate", "dequantized_bytes", "memory_estimate",
    "quantized_weights",
]

PRECISIONS = ("fp32", "bf16", "int8", "int4")
"""Base precisions ``petl estimate`` knows."""
QUANTIZED = ("int8", "int4")
"""Precisions whose body linear layers bitsandbytes quantizes."""
INT4_BLOCK = 64
"""Weights per 4-bit block, each with one fp32 absmax scale (bitsandbytes' default blocksize)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of one strategy at one base precision, in bytes."""

    precision: str
    optimizer: str
    weights_bytes: int | None
    gradient_bytes: int | None
    optimizer_bytes: int | None
    note: str | None = None
    """Why the estimate does not apply (``None`` when it does)."""
    activation_bytes: int | None = None
    """The most saved activations and temporaries alive at once in the forward and backward
    pass (``None`` when not traced: no batch shape was given, or the trace failed)."""
    peak_bytes: int | None = None
    """The traced steady-state peak of a training step: weights, optimizer states and the most
    activations, temporaries and gradients alive at once (``None`` when not traced)."""
    activation_note: str | None = None
    """Why the activations were not traced although a batch shape was given."""

    @property
    def total_bytes(self) -> int | None:
        """The traced peak when there is one, else weights + gradients + optimizer states."""
        if self.weights_bytes is None or self.gradient_bytes is None or self.optimizer_bytes is None:
            return None
        if self.peak_bytes is not None:
            return self.peak_bytes
        return self.weights_bytes + self.gradient_bytes + self.optimizer_bytes


def quantized_weights(model: nn.Module) -> dict[int, int]:
    """``id(weight) -> output rows`` of the linear layers 8-bit loading quantizes
    (the choice of :func:`petl.modeling.loading.load_model`: :func:`int8_skip_modules` stay)."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    from petl.modeling.loading import int8_skip_modules

    keep = int8_skip_modules(model)
    out = {}
    for name, module in model.named_modules():
        # bitsandbytes replaces exact nn.Linear and Conv1D layers (not other subclasses of nn.Linear)
        if (isinstance(module, Conv1D) or type(module) is nn.Linear) and should_convert_module(name, keep):
            out[id(module.weight)] = linear_dims(module)[1]
    return out


def _quantized_bytes(precision: str, numel: int, rows: int) -> int:
    if precision == "int8":
        return numel + 4 * rows
    return math.ceil(numel / 2) + 4 * math.ceil(numel / INT4_BLOCK)


def memory_estimate(model: nn.Module, quantized: dict[int, int], *, precision: str, optimizer: str,
                    full: bool) -> MemoryEstimate:
    """Weights, gradients and optimizer states of a (wrapped or plain) model built on any device
    (see the module docstring); ``quantized`` is :func:`quantized_weights` of the unwrapped model."""
    if precision in QUANTIZED and full:
        bits = precision.removeprefix("int")
        return MemoryEstimate(precision, optimizer, None, None, None,
                              note=f"full fine-tuning cannot train {bits}-bit weights")
    b_train = 2 if precision == "bf16" and full else 4
    frozen_bytes = trainable = 0
    for param in model.parameters():
        n = param.numel()
        if param.requires_grad:
            trainable += n
        elif precision == "fp32":
            frozen_bytes += 4 * n
        elif precision == "bf16":
            frozen_bytes += 2 * n
        elif id(param) in quantized:
            frozen_bytes += _quantized_bytes(precision, n, quantized[id(param)])
        else:
            frozen_bytes += 4 * n
    states = 2 * trainable if optimizer == "adamw8bit" else 2 * trainable * b_train
    return MemoryEstimate(precision, optimizer, frozen_bytes + trainable * b_train, trainable * b_train, states)


def dequantized_bytes(model: nn.Module, quantized: dict[int, int], precision: str) -> int:
    """One fp32 copy of the largest quantized weight still frozen: the temporary bitsandbytes
    dequantizes in each pass through a quantized layer (0 unless ``precision`` quantizes)."""
    if precision not in QUANTIZED:
        return 0
    sizes = [p.numel() for p in model.parameters() if id(p) in quantized and not p.requires_grad]
    return 4 * max(sizes, default=0)
