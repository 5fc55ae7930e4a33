"""(IA)^3 as a third-party petl strategy (Liu et al. 2022, "Few-Shot Parameter-Efficient
Fine-Tuning is Better and Cheaper than In-Context Learning", section 3.3).

Each targeted projection's output is rescaled by a learned vector, ``h = l * (W x + b)``,
with ``l`` starting at ones, so the wrapped model first computes what the base model did.
The rescaling is a row scaling of ``W`` and ``b``, so it merges exactly.

The package registers the strategy as ``ia3_hooks`` through the ``petl.strategies`` entry
point in its pyproject.toml; after ``pip install`` it shows up in ``petl.available()``. (petl's
built-in ``ia3`` is peft's; a plugin must pick a name no other strategy holds.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import petl
from petl.core.params import copy_checked
from petl.core.validators import check, set_field, str_tuple
from petl.errors import TargetNotFoundError
from petl.modeling import linear_dims
from petl.strategies.hooks import HookedChild, map_first

# Key and value projections across common families (feature scaling of attention, as in the paper).
DEFAULT_TARGETS = ("k_proj", "v_proj", "key", "value", "k_lin", "v_lin", "k", "v", "c_attn", "query_key_value")
SCALE = "petl_ia3"


@dataclass(frozen=True, kw_only=True)
class IA3Config(petl.StrategyConfig):
    """Options of the ``ia3_hooks`` strategy."""

    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Leaf names of the projections whose outputs are rescaled."""

    def __post_init__(self) -> None:
        super().__post_init__()
        set_field(self, "target_modules", str_tuple("target_modules", self.target_modules))
        check(len(self.target_modules) > 0, "target_modules must name at least one module.")


class Scale(nn.Module):
    """A learned per-output-feature scale, initialised to ones."""

    def __init__(self, features: int, like: torch.Tensor) -> None:
        super().__init__()
        dtype = like.dtype if like.is_floating_point() else torch.float32
        self.vector = nn.Parameter(torch.ones(features, device=like.device, dtype=dtype))


def _out_features(module: nn.Module) -> int | None:
    dims = linear_dims(module)  # nn.Linear (and its 8-bit kinds) or GPT-2's transposed Conv1D
    return dims[1] if dims is not None else None


def _rescale(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    vector = getattr(module, SCALE).vector
    return map_first(output, lambda out: out * vector.to(out.dtype))


class IA3Strategy(petl.StrategyBase):
    """Rescale the outputs of key/value projections by learned vectors."""

    config_class: ClassVar[type[petl.StrategyConfig]] = IA3Config
    config: IA3Config

    def inject(self, model: nn.Module) -> None:
        targets = [
            (name, module)
            for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] in self.config.target_modules and _out_features(module)
        ]
        if not targets:
            raise TargetNotFoundError(
                f"No module of this {type(model).__name__} is named one of {list(self.config.target_modules)}. "
                "Pass target_modules=[...] with the leaf names of its key/value projections."
            )
        self.children = [
            HookedChild.attach(model, name, SCALE, Scale(_out_features(module), module.weight), forward_hook=_rescale)
            for name, module in targets
        ]

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{child.path}.{SCALE}.vector": child.module(model).vector for child in self.children}

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        copy_checked(self.adapter_state_dict(model), state_dict, source="The (IA)^3 vectors",
                     fix="Load them onto a model wrapped with the same target_modules.")

    def remove(self, model: nn.Module) -> nn.Module:
        for child in self.children:
            child.remove(model)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for child in self.children:
                module = model.get_submodule(child.path)
                vector = child.module(model).vector
                if isinstance(module, nn.Linear):
                    module.weight.mul_(vector[:, None])
                else:  # Conv1D: output features are the weight's columns
                    module.weight.mul_(vector[None, :])
                if module.bias is not None:
                    module.bias.mul_(vector)
        return self.remove(model)
