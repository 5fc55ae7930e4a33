"""Quantized bases: one description of how the frozen linear layers are stored, and the
layer-level tools that read it back (which layers are quantized, dequantizing them).

bitsandbytes stores the body's linear weights of a model loaded with a
``BitsAndBytesConfig`` in one of two ways:

* **8-bit** (LLM.int8(), Dettmers et al. 2022): int8 rows with one absmax scale each,
  ``W ~ (W_int8 * scale_row) / 127``;
* **4-bit** (QLoRA, Dettmers et al. 2023, section 2): blocks of 64 weights, each with one
  absmax scale, every weight one of 16 code values: NF4 (``quant_type="nf4"``, quantiles
  of a normal distribution, the paper's choice for normally distributed weights) or FP4
  (``"fp4"``, a 4-bit float). *Double quantization* (section 2, ``double_quant``)
  quantizes the absmax scales themselves to 8 bits in blocks of 256, saving about
  0.37 bits per weight. Each forward dequantizes a layer's weight to ``compute_dtype``
  and multiplies in that dtype; gradients flow to the input (and so to adapters), never
  to the stored codes.

:class:`Quantization` describes either, and :func:`quantization_from_options` is the one
place that builds it from the user's options (``load_model``'s arguments, ``petl train``'s
flags, a ``petl bench`` config's keys), so that every entry point accepts the same
choices and refuses the same conflicts. Merging an adapter into such a layer would have
to round ``W + delta`` back to 4 or 8 bits, which changes what the model computes;
:func:`dequantize_linears` replaces the quantized layers by plain ``nn.Linear`` layers
instead, for :func:`petl.merge` with ``dequantize=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from petl.errors import ConfigError

__all__ = [
    "COMPUTE_DTYPES", "FOUR_BIT_KEYS", "QUANTIZATION_KEYS", "QUANT_TYPES", "Quantization", "dequantize_linears",
    "quantization_from_options", "quantized_linear_names",
]

QUANT_TYPES = ("nf4", "fp4")
"""bitsandbytes' 4-bit code books: NormalFloat4 (QLoRA's) and a 4-bit float."""
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""The dtypes a 4-bit layer may dequantize to and multiply in."""
_BITS = (4, 8)


def _choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices or isinstance(value, bool):
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class Quantization:
    """How bitsandbytes stores the frozen linear weights of a base model.

    ``Quantization(bits=8)`` is what ``load_in_8bit=True`` has always meant; the other
    fields describe 4-bit storage and must keep their defaults with 8 bits.
    """

    bits: int = 4
    """4 (QLoRA's NF4/FP4 blocks) or 8 (LLM.int8() rows)."""
    quant_type: str = "nf4"
    """The 4-bit code book: ``"nf4"`` (for normally distributed weights, QLoRA's choice) or ``"fp4"``."""
    double_quant: bool = False
    """Quantize the 4-bit blocks' absmax scales too (about 0.37 bits per weight less), at no cost in
    accuracy reported by QLoRA; off by default, as in bitsandbytes."""
    compute_dtype: str = "float32"
    """The dtype each 4-bit layer dequantizes to and multiplies in: ``"float32"`` (CPU-safe, exact
    adapters), ``"bfloat16"`` or ``"float16"`` (faster and smaller on GPUs)."""

    def __post_init__(self) -> None:
        _choice("bits", self.bits, _BITS)
        _choice("quant_type", self.quant_type, QUANT_TYPES)
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"double_quant must be True or False, got {self.double_quant!r}.")
        _choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        if self.bits == 8 and (self.quant_type, self.double_quant, self.compute_dtype) != ("nf4", False, "float32"):
            raise ConfigError(
                "quant_type, double_quant and compute_dtype describe 4-bit storage, but bits=8 was asked for. "
                "Use bits=4 (load_in_4bit) with them, or leave them at their defaults for 8-bit loading."
            )

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        """:attr:`compute_dtype` as a ``torch.dtype``."""
        return getattr(torch, self.compute_dtype)

    def describe(self) -> str:
        """A short human-readable form: ``"4-bit nf4 (double quantization, float32 compute)"``."""
        if self.bits == 8:
            return "8-bit (LLM.int8())"
        double = "double quantization, " if self.double_quant else ""
        return f"4-bit {self.quant_type} ({double}{self.compute_dtype} compute)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``Quantization(**q.to_dict()) == q``)."""
        return {"bits": self.bits, "quant_type": self.quant_type, "double_quant": self.double_quant,
                "compute_dtype": self.compute_dtype}

    def bnb_config(self, skip_modules: list[str]) -> Any:
        """transformers' ``BitsAndBytesConfig`` for this storage; ``skip_modules`` stay in full precision."""
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=self.torch_compute_dtype, llm_int8_skip_modules=skip_modules,
        )


FOUR_BIT_KEYS = ("bnb_4bit_quant_type", "bnb_4bit_double_quant", "bnb_4bit_compute_dtype")
"""The options that describe 4-bit storage (``petl train``'s ``--bnb-4bit-*`` flags)."""
QUANTIZATION_KEYS = ("load_in_8bit", "load_in_4bit", *FOUR_BIT_KEYS)
"""Every option :func:`quantization_from_options` reads."""


def quantization_from_options(options: Mapping[str, Any], *, flags: bool = False,
                              prefix: str = "") -> Quantization | None:
    """The :class:`Quantization` the user's options ask for, or ``None`` for full precision.

    Args:
        options: Any of ``load_in_8bit``, ``load_in_4bit`` (bools), ``bnb_4bit_quant_type``,
            ``bnb_4bit_double_quant`` and ``bnb_4bit_compute_dtype``; missing or ``None``
            values take their defaults. Other keys are an error.
        flags: Name the options as ``petl train`` flags (``--load-in-4bit``) in messages.
        prefix: Put before each option's name in messages (``"[model] "``).

    Raises:
        ConfigError: Both 8-bit and 4-bit loading, a 4-bit option without ``load_in_4bit``,
            or an invalid value.
    """
    def named(key: str) -> str:
        return prefix + ("--" + key.replace("_", "-") if flags else key)

    unknown = sorted(set(options) - set(QUANTIZATION_KEYS))
    if unknown:
        valid = ", ".join(map(named, QUANTIZATION_KEYS))
        raise ConfigError(f"Unknown quantization options {unknown}. Valid: {valid}.")
    given = {key: value for key, value in options.items() if value is not None}
    for key in ("load_in_8bit", "load_in_4bit", "bnb_4bit_double_quant"):
        if key in given and not isinstance(given[key], bool):
            raise ConfigError(f"{named(key)} must be true or false, got {given[key]!r}.")
    eight, four = given.get("load_in_8bit", False), given.get("load_in_4bit", False)
    if eight and four:
        raise ConfigError(f"{named('load_in_8bit')} and {named('load_in_4bit')} were both given; a base is stored in "
                          "one precision. Pick one of them.")
    extra = [named(key) for key in FOUR_BIT_KEYS if key in given]
    if extra and not four:
        raise ConfigError(f"{', '.join(extra)} describe 4-bit loading, which is off. Add {named('load_in_4bit')}, "
                          "or leave them out.")
    if eight:
        return Quantization(bits=8)
    if not four:
        return None
    _choice(named("bnb_4bit_quant_type"), given.get("bnb_4bit_quant_type", "nf4"), QUANT_TYPES)
    _choice(named("bnb_4bit_compute_dtype"), given.get("bnb_4bit_compute_dtype", "float32"), COMPUTE_DTYPES)
    return Quantization(
        bits=4, quant_type=given.get("bnb_4bit_quant_type", "nf4"),
        double_quant=given.get("bnb_4bit_double_quant", False),
        compute_dtype=given.get("bnb_4bit_compute_dtype", "float32"),
    )


def _bnb_linear_types() -> tuple[type, ...]:
    """bitsandbytes' quantized linear classes, without importing it when nothing could use it."""
    if "bitsandbytes" not in sys.modules:  # no layer of its classes can exist
        return ()
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit, bnb.nn.Linear8bitLt


def quantized_linear_names(model: nn.Module) -> list[str]:
    """The names of the bitsandbytes 4-bit and 8-bit linear layers in ``model`` (also those
    inside an adapter layer, as peft's ``base_layer``), in module order."""
    types = _bnb_linear_types()
    if not types:
        return []
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def _dequantized(module: nn.Module, dtype: torch.dtype) -> nn.Linear:
    """A plain ``nn.Linear`` computing what the quantized ``module`` computes, in ``dtype``."""
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    state = getattr(module, "state", None)  # Linear8bitLt's matmul state holds its row scales
    weight = dequantize_bnb_weight(module.weight, state)
    plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                      device="meta", dtype=dtype)
    plain.weight = nn.Parameter(weight.detach().to(dtype).reshape(module.out_features, module.in_features),
                                requires_grad=False)
    if module.bias is not None:
        plain.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=module.bias.requires_grad)
    return plain.train(module.training)


def dequantize_linears(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Replace every bitsandbytes quantized linear layer of ``model`` by a plain ``nn.Linear``.

    Each new layer holds the weight bitsandbytes' forward dequantizes (``W ~ codes * scale``,
    so it computes what the quantized layer computed, up to the rounding of ``dtype``), in
    ``dtype``, on the old weight's device. The model's transformers markers
    (``is_loaded_in_4bit``, ``config.quantization_config``, ...) are removed with them.
    Returns the names of the replaced layers (none when the model is not quantized).
    """
    names = quantized_linear_names(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _dequantized(model.get_submodule(name), dtype))
    if names:
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
            if flag in vars(model):
                setattr(model, flag, False)
    return names


def keep_one_4bit_layout(model: nn.Module) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` in the layout it was quantized to.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight in place on its
    first forward pass in evaluation mode without gradients: a CPU inference layout with the
    scales rounded to bfloat16. That repacking fails on layers whose input size is not a multiple
    of the quantization block (64), and it makes evaluation compute something other than what
    training computes, on the same model. petl turns it off, so a run's evaluation, its saved
    adapter and a merge all see the stored codes. Returns the number of layers it applies to.
    """
    types = _bnb_linear_types()
    count = 0
    for module in model.modules():
        if types and isinstance(module, types[0]) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
