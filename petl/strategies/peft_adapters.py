"""Several named peft adapters in the same layers: what LoRA needs for ``petl.add_adapter``.

peft keeps the adapters of one tuner per layer, keyed by name (``lora_A["a"]``,
``lora_A["b"]``), and a layer adds up the updates of its *active* adapters. petl's
LoRA adapters on one model therefore share one peft tuner (the first adapter's
``LoraModel``), each under its own peft name, and each one switches only its own name
in and out of every layer's active list (:func:`set_active`), so the others stay as
they are. A head trained in full (``modules_to_save``) belongs to one adapter, since
peft's ``ModulesToSaveWrapper`` runs one adapter's copy at a time.

Deleting one adapter (:func:`remove_adapter`) takes its tensors out of the shared
layers with peft's ``delete_adapter`` and turns layers left without any adapter back
into the plain layers they wrapped, so the model is as if the adapter had never been
added.
"""

from __future__ import annotations

import warnings
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

__all__ = ["adapter_names", "join_tuner", "remove_adapter", "set_active"]


def adapter_names(layer: Any) -> set[str]:
    """The names of the adapters a peft layer holds."""
    return {name for attr in layer.adapter_layer_names for name in getattr(layer, attr).keys()}


def join_tuner(tuner: Any, model: nn.Module, name: str, config: Any) -> None:
    """Add the adapter ``name`` with peft config ``config`` to ``tuner``, already on ``model``.

    On failure ``tuner`` forgets the config again (the caller puts the model's modules back).
    """
    tuner.peft_config[name] = config
    try:
        tuner.inject_adapter(model, name)
    except BaseException:
        tuner.peft_config.pop(name, None)
        raise


def set_active(model: nn.Module, name: str, active: bool, trainable: bool) -> None:
    """Switch the peft adapter ``name`` on or off in every layer of ``model`` that holds it.

    Its tensors require grad when ``active and trainable``; every other adapter's tensors keep
    their flags (peft's own ``set_adapter`` would make every active adapter trainable).
    """
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and name in module.modules_to_save:
            module.set_adapter(name if active else [], inference_mode=not trainable)
        elif isinstance(module, BaseTunerLayer) and name in adapter_names(module):
            flags = {param: param.requires_grad for param in module.parameters()}
            others = [other for other in module.active_adapters if other != name]
            module.set_adapter(others + [name] if active else others)
            for param, flag in flags.items():
                param.requires_grad_(flag)
            for attr in module.adapter_layer_names:
                if name in getattr(module, attr):
                    getattr(module, attr)[name].requires_grad_(active and trainable)


def remove_adapter(tuner: Any, model: nn.Module, name: str) -> None:
    """Take the adapter ``name`` out of layers that other adapters of ``tuner`` share.

    Its trained head copies go (the original head modules come back), and layers left with no
    adapter become the plain layers they wrapped.
    """
    for path, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper) and name in module.modules_to_save:
            _replace(model, path, module.original_module)
    with warnings.catch_warnings():  # peft warns when it picks another active adapter; petl sets them after
        warnings.simplefilter("ignore")
        tuner.delete_adapter(name)
    for path, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and not adapter_names(module):
            _replace(model, path, module.get_base_layer())


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
