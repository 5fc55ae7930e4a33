"""peft adapters folded into the base weights for the length of a block, then taken out bit for bit.

Every peft-based strategy (:mod:`petl.strategies.peft_bridge`) implements
:meth:`petl.core.strategy.Strategy.merged_for_inference` with :func:`merged_peft_layers`. On entry
every adapted layer goes through peft's own ``merge`` (in place, ``safe_merge=False``)::

    W <- W0 + delta,    delta = (alpha / r) B A              (LoRA)
                        delta = scaling / r_k * P (Lambda Q)  (AdaLoRA, SVDLinear)

after which peft's forward sees ``layer.merged`` and calls only the base layer: the adapter
costs nothing. On exit ``delta`` is NOT subtracted again (``(W0 + delta) - delta`` need not
round back to ``W0``): a copy of each merged layer's base tensors, taken before the merge,
is copied back in place, and each layer's ``merged_adapters`` is set back to what it was,
so the adapter runs again. Exit happens in a ``finally`` with SIGINT held back, so an
exception or a (second) Ctrl-C cannot leave the model half merged.

Cost: memory for those copies, i.e. one extra copy of every adapted layer's base weight and
bias on its own device for the length of the block (LoRA on attention query/value: 2 of the
~6 matrices per block; ``target_modules="all-linear"``: nearly every weight but the
embeddings); time for one ``B A`` product and two weight copies per layer per block.

Nothing is merged (the block yields ``False`` and logs why, once) when a layer could not be
restored by copying back: a layer kind other than the plain ones listed by the strategy
(quantized, multi-head attention, a peft variant such as DoRA), base tensors that are
sharded, on the meta device or shared with another parameter (tied embeddings), or adapters
disabled through peft's ``disable_adapter``.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from petl.core.strategy import refuse_training
from petl.core.wrapping import _interrupts_deferred

__all__ = ["merged_peft_layers"]

logger = logging.getLogger(__name__)
_explained: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()
"""The refusals already logged per model, so that each evaluation does not repeat them."""


@dataclass
class _Record:
    """One merged layer: its ``merged_adapters`` before, and its base tensors' values before."""

    layer: BaseTunerLayer
    flags: list[str]
    saved: list[tuple[nn.Parameter, int, torch.Tensor]]
    """(parameter, its storage address before, a copy of its value before)."""


def _to_merge(layer: BaseTunerLayer) -> list[str]:
    """The layer's active adapters that its forward would run (present and not merged yet)."""
    names = getattr(layer, "adapter_layer_names", ()) or ("lora_A",)  # LoRA: lora_A, IA3: ia3_l, ...
    adapters = getattr(layer, names[0], {})
    return [name for name in layer.active_adapters if name in adapters and name not in layer.merged_adapters]


def _plain(param: torch.Tensor) -> bool:
    return (type(param) is nn.Parameter and type(param.data) is torch.Tensor and param.is_floating_point()
            and param.device.type != "meta")


def _refusal(model: nn.Module, layers: Sequence[tuple[str, BaseTunerLayer]],
             layer_types: tuple[type, ...]) -> str | None:
    """Why these adapter layers cannot all be merged and restored exactly, or ``None``."""
    for name, layer in layers:
        if layer.disable_adapters:
            return f"its adapters are disabled (peft's disable_adapter) at {name}"
        if type(layer) not in layer_types:
            return f"{name} is a {type(layer).__module__}.{type(layer).__qualname__} layer"
    pending = [(name, layer) for name, layer in layers if _to_merge(layer)]
    for name, layer in pending:
        if getattr(layer, "lora_variant", None):
            return f"{name} uses a peft variant ({', '.join(sorted(layer.lora_variant))})"
        if not all(_plain(p) for p in layer.get_base_layer().parameters(recurse=False)):
            return f"the base weights of {name} are not plain dense floating-point tensors"
    if not pending:
        return None
    users = Counter(p.untyped_storage().data_ptr() for _, p in model.named_parameters(remove_duplicate=False)
                    if _plain(p) and p.numel())
    for name, layer in pending:
        if any(p.numel() and users[p.untyped_storage().data_ptr()] > 1
               for p in layer.get_base_layer().parameters(recurse=False)):
            return f"the base weight of {name} is shared with another parameter (tied weights)"
    return None


@contextmanager
def merged_peft_layers(model: nn.Module, layer_types: tuple[type, ...], strategy: str) -> Iterator[bool]:
    """Fold every peft adapter layer of ``model`` into its base weights for the block.

    Args:
        model: A model carrying peft tuner layers.
        layer_types: The peft layer classes whose ``merge`` is a plain in-place update of
            the base layer's tensors (matched exactly, not by subclass).
        strategy: The strategy's name, for messages.

    Yields:
        ``True`` when every adapter is folded in (already merged layers, as in a nested
        block, are left alone and not restored here), ``False`` when nothing changed.

    Raises:
        PetlError: ``model`` is in training mode with gradients enabled, on entry or at a
            forward pass inside the block.
    """
    refuse_training(model, strategy)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    reason = _refusal(model, layers, layer_types)
    if reason is not None or not layers:
        explained = _explained.setdefault(model, set())
        if reason is not None and reason not in explained:
            explained.add(reason)
            logger.info("%s runs unmerged for inference: %s.", strategy, reason)
        yield False
        return
    records: list[_Record] = []
    try:
        with _interrupts_deferred(), torch.no_grad():
            for _, layer in layers:
                if not _to_merge(layer):
                    continue
                base = layer.get_base_layer()
                saved = [(p, p.data_ptr(), p.detach().clone()) for p in base.parameters(recurse=False)]
                records.append(_Record(layer, list(layer.merged_adapters), saved))  # first: a failed merge is undone
                layer.merge(safe_merge=False, adapter_names=_to_merge(layer))
        guard = model.register_forward_pre_hook(lambda module, args: refuse_training(module, strategy))
        try:
            yield True
        finally:
            guard.remove()
    finally:
        with _interrupts_deferred():
            _restore(records)


def _restore(records: list[_Record]) -> None:
    with torch.no_grad():
        for record in reversed(records):
            for param, address, saved in record.saved:
                if param.data_ptr() == address and param.shape == saved.shape and param.dtype == saved.dtype:
                    param.data.copy_(saved)  # same storage, so views and static addresses stay valid
                else:  # the layer replaced the tensor: the copy becomes it
                    param.data = saved
            record.layer.merged_adapters[:] = record.flags
