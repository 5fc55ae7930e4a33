"""Merging an adapter into a quantized (bitsandbytes 4-bit or 8-bit) base, explicitly.

A merge computes ``W' = W + delta`` for every adapted weight. When ``W`` is stored in 4 or
8 bits (QLoRA's NF4/FP4 blocks, LLM.int8() rows), the layer could only keep ``W'`` by
rounding it back to 16 or 256 code values per block or row, and that rounding changes
what the model computes by far more than float rounding (peft does this, with a warning
that generations may differ). So :func:`petl.merge` refuses a quantized base
(:func:`refuse_quantized`), and ``petl.merge(model, dequantize=True)`` takes the explicit
route instead (:func:`merge_dequantized`)::

    adapter tensors (and trained heads) copied aside
    unwrap                      base with its quantized layers, adapter gone
    dequantize_linears          each 4/8-bit layer -> plain nn.Linear holding codes * scale
    wrap + copy tensors back    the same adapter on the dequantized base (as petl.load would)
    strategy.merge              W' = dequant(W) + delta, in full precision

The result computes what the quantized, wrapped model computed, up to the float rounding
of the merge (the dequantized weights are exactly the values the 4-bit forward used);
it is a full-precision model and takes the memory of one. The steps run as one
transaction: if any fails, the model is put back wrapped and quantized, as it was.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from petl.core.strategy import StrategyBase
from petl.core.wrapping import Snapshot, WrapState, _interrupts_deferred, state_of, unwrap, wrap
from petl.errors import NotMergeableError, PetlError
from petl.modeling.quantization import dequantize_linears, quantized_linear_names

__all__ = ["DequantizedMergeWarning", "merge_dequantized", "refuse_quantized"]


class DequantizedMergeWarning(UserWarning):
    """``petl.merge(model, dequantize=True)`` turned a quantized base into a full-precision one."""


def _merges_weights(state: WrapState) -> bool:
    """Whether the strategy folds its adapter into weights at all (else its own ``merge`` refuses)."""
    return getattr(type(state.strategy), "merge", None) is not StrategyBase.merge


def refuse_quantized(model: nn.Module, state: WrapState) -> None:
    """Raise unless ``model``'s base can be merged into without re-quantizing.

    Raises:
        NotMergeableError: The base holds bitsandbytes 4-bit or 8-bit linear layers.
    """
    names = quantized_linear_names(model)
    if not names or not _merges_weights(state):
        return
    raise NotMergeableError(
        f"This {type(model).__name__} has {len(names)} quantized (bitsandbytes 4-bit/8-bit) linear layers "
        f"({names[0]}{', ...' if len(names) > 1 else ''}). Merging the {state.strategy.config.strategy!r} adapter "
        "into them would round W + delta back to 4 or 8 bits, which changes the model's outputs. Either call "
        "petl.merge(model, dequantize=True) to replace them by full-precision layers holding the dequantized "
        "weights and merge exactly there (the model then takes full-precision memory), or petl.save the "
        "adapter, load the base in full precision and petl.load the adapter onto it before merging. "
        "The model was left wrapped and unchanged."
    )


def _dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's full-precision weights, which the dequantized layers join."""
    quantized = {id(p) for name in quantized_linear_names(model) for p in model.get_submodule(name).parameters()}
    floats = (p.dtype for p in model.parameters() if id(p) not in quantized and p.is_floating_point())
    return next(floats, torch.float32)


def merge_dequantized(model: nn.Module) -> nn.Module:
    """Dequantize the base of the wrapped ``model`` and merge its adapter there (see the module docstring).

    The dequantized layers take the dtype of the model's other floating-point weights
    (float32 after petl's k-bit preparation, whatever the 4-bit compute dtype). A
    :class:`DequantizedMergeWarning` says how many layers were dequantized.

    Returns:
        The merged, unwrapped, full-precision model.

    Raises:
        NotMergeableError: The strategy cannot merge (its own refusal; nothing dequantized).
        PetlError: A step failed; the model is left wrapped and quantized, as it was.
    """
    from petl.core.io import adapter_tensors

    state = state_of(model)
    if not _merges_weights(state):
        return state.strategy.merge(model)  # raises the strategy's own NotMergeableError
    config = state.strategy.config
    saved = {key: tensor.detach().clone() for key, tensor in adapter_tensors(model).items()}
    dtype = _dtype(model)
    snapshot = Snapshot(model)
    try:
        base = unwrap(model)
        names = dequantize_linears(base, dtype)
        wrap(base, config)
        _copy_back(base, saved)
        from petl.core.wrapping import merge

        merged = merge(base)
    except BaseException as exc:
        with _interrupts_deferred():
            snapshot.restore()
            current = adapter_tensors(model)  # unwrap put the heads' original values back in place
            with torch.no_grad():
                for key, value in saved.items():
                    current[key].copy_(value)
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):
            raise
        raise PetlError(f"petl.merge(model, dequantize=True) failed: {type(exc).__name__}: {exc}. "
                        "The model was left wrapped and quantized, as it was.") from exc
    warnings.warn(
        f"petl.merge(dequantize=True) dequantized {len(names)} quantized linear layers of this "
        f"{type(model).__name__} to {str(dtype).removeprefix('torch.')} and merged the adapter into them: the "
        "model is now a full-precision model (it takes that memory; reload the base quantized to train again).",
        DequantizedMergeWarning, stacklevel=3,
    )
    return merged


def _copy_back(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """The saved adapter and head tensors into the re-wrapped ``model``, as ``petl.load`` copies them."""
    from petl.core.io import adapter_tensors
    from petl.core.validators import check_state_dict

    state = state_of(model)
    expected = adapter_tensors(model)
    check_state_dict(expected, saved, source="The adapter before dequantization",
                     fix="This is a bug in petl; please report it.")
    head_keys = set(state.heads.state_dict(model)) if state.heads is not None else set()
    with torch.no_grad():
        for key in head_keys:
            expected[key].copy_(saved[key])
    state.strategy.load_adapter_state_dict(model, {k: v for k, v in saved.items() if k not in head_keys})
