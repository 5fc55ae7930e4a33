"""Hooked child modules: a strategy adds a module under an existing layer and drives it
with forward hooks, so no model class is swapped and no model code is copied.

The bottleneck adapters work this way, and so can a plugin strategy::

    child = HookedChild.attach(model, "encoder.layer.0.output.dense", "my_adapter", MyAdapter(...),
                               forward_hook=lambda module, args, output: map_first(output, module.my_adapter))
    ...
    child.remove(model)   # the hooks and the module go; the layer is as it was

The child is a real submodule (``layer.my_adapter``), so ``.to()``, state dicts,
Accelerate and DDP see it; :func:`placement` gives it the device and floating-point
dtype of the layer it follows (for an 8-bit bitsandbytes layer, the dtype of the
surrounding block).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from petl.core.params import copy_checked
from petl.core.strategy import StrategyBase

__all__ = ["HookedChild", "OneModuleStrategy", "children_named", "map_first", "placement"]


def map_first(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to a module's output, or to the first item of a tuple output."""
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


def placement(target: nn.Module, block: nn.Module | None = None) -> tuple[torch.device, torch.dtype]:
    """Device and floating-point dtype for a module added under ``target``.

    ``target``'s own weight decides when it is floating point; an 8-bit layer's integer
    weight does not, and then the first floating-point parameter of ``block`` (the
    transformer block around it) does.
    """
    block = target if block is None else block
    own = list(target.parameters(recurse=False))
    device = own[0].device if own else next((p.device for p in block.parameters()), torch.device("cpu"))
    weight = getattr(target, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return device, weight.dtype
    floats = (p.dtype for p in block.parameters() if p.is_floating_point())
    return device, next(floats, torch.get_default_dtype())


def children_named(model: nn.Module, name: str) -> list[str]:
    """The full names of the modules of ``model`` called ``name`` (a strategy's children already there)."""
    return [full for full, _ in model.named_modules() if full.rsplit(".", 1)[-1] == name]


@dataclass
class HookedChild:
    """One module added under the layer at ``path`` as ``name``, with the hooks that drive it."""

    path: str
    name: str
    handles: list[RemovableHandle] = field(default_factory=list)

    @classmethod
    def attach(
        cls, model: nn.Module, path: str, name: str, child: nn.Module, *,
        forward_hook: Callable[..., Any] | None = None, pre_hooks: Mapping[str, Callable[..., Any]] | None = None,
    ) -> HookedChild:
        """Add ``child`` under ``model.get_submodule(path)`` and register its hooks.

        Args:
            forward_hook: A forward hook on the layer at ``path`` (it may return a new output).
            pre_hooks: Forward pre-hooks on other layers, by their full path (e.g. to read an input).
        """
        target = model.get_submodule(path)
        child.train(target.training)  # a new module starts in training mode; follow the model's mode
        record = cls(path, name)
        target.add_module(name, child)
        for other, hook in (pre_hooks or {}).items():
            record.handles.append(model.get_submodule(other).register_forward_pre_hook(hook))
        if forward_hook is not None:
            record.handles.append(target.register_forward_hook(forward_hook))
        return record

    def module(self, model: nn.Module) -> nn.Module:
        """The added child module."""
        return model.get_submodule(f"{self.path}.{self.name}")

    def remove(self, model: nn.Module) -> None:
        """Remove the hooks and the child; the layer is left as it was before :meth:`attach`."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        try:
            target = model.get_submodule(self.path)
        except AttributeError:
            return
        target._modules.pop(self.name, None)


class OneModuleStrategy(StrategyBase):
    """A strategy whose parameters are one module added to the model as ``model.<module_name>``
    (``prefix``, ``prompt``); that module has an ``active`` flag its hooks or functions obey."""

    module_name: ClassVar[str]
    """The attribute of the model holding the strategy's module."""
    noun: ClassVar[str]
    """What the module is, for messages ("prefix", "prompt")."""

    def encoder(self, model: nn.Module) -> nn.Module:
        """The strategy's module on a wrapped model."""
        return model.get_submodule(self.module_name)

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{self.module_name}.{key}": value for key, value in self.encoder(model).state_dict().items()}

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        copy_checked(self.adapter_state_dict(model), state_dict, source=f"The {self.noun} tensors",
                     fix=f"Load them onto a model wrapped with the same {self.noun} options.")

    def set_active(self, model: nn.Module, active: bool, trainable: bool) -> None:
        """Switch the module on or off: an inactive one changes no output."""
        encoder = self.encoder(model)
        encoder.active = active
        encoder.requires_grad_(active and trainable)
