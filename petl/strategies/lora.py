"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", section 4.1), built on peft.

A frozen linear layer ``h = W0 x`` becomes

    h = W0 x + (alpha / r) * B A x,    A in R^{r x d_in},  B in R^{d_out x r}

with ``A`` random and ``B`` zero at initialisation, so the wrapped model starts out
computing exactly what the base model computed. Each adapted layer adds
``r * (d_in + d_out)`` trainable parameters, and ``merge`` folds ``(alpha / r) B A``
into ``W0`` so that inference costs nothing extra.

petl does not re-implement LoRA: it injects peft's layers into the model in place
(no wrapper class around the model) and saves in peft's format, so a folder written
by ``petl.save`` also loads with ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import peft
import torch
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from petl.core import validators as v
from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.core.strategy import StrategyBase
from petl.errors import PetlError, TargetNotFoundError
from petl.modeling.layers import linear_layer_names

__all__ = ["LoraConfig", "LoraStrategy"]

ADAPTER_NAME = "default"
PEFT_PREFIX = "base_model.model."

# Attention query/value projection names, tried in order for families peft has no default for.
FALLBACK_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("q_lin", "v_lin"),
    ("q", "v"),
    ("query_key_value",),
    ("c_attn",),
)


@dataclass(frozen=True, kw_only=True)
class LoraConfig(StrategyConfig):
    """Options of the ``lora`` strategy."""

    r: int = 8
    """Rank of the update ``B A``; trainable parameters grow linearly with it."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``),
    so changing ``r`` does not require retuning the learning rate."""
    dropout: float = 0.0
    """Dropout on the adapter's input, a regulariser for small data sets."""
    target_modules: tuple[str, ...] | str | None = None
    """Module names (or suffixes) to adapt, a regular expression string, or ``"all-linear"``.
    ``None`` uses peft's per-architecture default (the attention query and value projections)."""
    bias: str = "none"
    """Which biases to train: ``"none"``, ``"all"`` or ``"lora_only"``."""
    use_rslora: bool = False
    """Rank-stabilised scaling ``alpha / sqrt(r)`` (Kalajdzievski 2023), better for large ranks."""

    def __post_init__(self) -> None:
        super().__post_init__()
        v.check_positive_int("r", self.r)
        v.check_number("alpha", self.alpha, low=0, low_open=True)
        v.check_float32("alpha", self.alpha)  # the update is multiplied by alpha / r in the layer's dtype
        v.check_number("dropout", self.dropout, low=0, high=1)
        v.check_choice("bias", self.bias, ("none", "all", "lora_only"))
        v.check_bool("use_rslora", self.use_rslora)
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            v.set_field(self, "target_modules", v.str_tuple("target_modules", self.target_modules))
        if isinstance(self.target_modules, tuple):
            v.check(len(self.target_modules) > 0, "target_modules must not be empty; pass None for the defaults.")


@register("lora")
class LoraStrategy(StrategyBase):
    """LoRA through peft's ``LoraModel``, injected in place."""

    config_class: ClassVar[type[StrategyConfig]] = LoraConfig
    handles_heads: ClassVar[bool] = True
    tuner_class: ClassVar[type] = peft.LoraModel

    config: LoraConfig

    def __init__(self, config: LoraConfig) -> None:
        super().__init__(config)
        self.tuner: Any = None

    def _targets(self, model: nn.Module) -> list[str] | str | None:
        """The configured targets, or a default for families peft has none for."""
        target = self.config.target_modules
        if target is not None:
            return list(target) if isinstance(target, tuple) else target
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in self.tuner_class.target_module_mapping:
            return None  # peft's own per-architecture default
        leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        for names in FALLBACK_TARGETS:
            if leaves.issuperset(names):
                return list(names)
        raise TargetNotFoundError(
            f"There is no default target_modules for model type {model_type!r} ({type(model).__name__}). "
            f"Linear layers it has: {linear_layer_names(model)}. Pass target_modules=[...] with some of "
            'these names (usually the attention query and value projections), or target_modules="all-linear".'
        )

    def _peft_options(self, model: nn.Module) -> dict[str, Any]:
        """The peft config options LoRA and AdaLoRA share."""
        c = self.config
        return {
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": self._targets(model),
            "bias": c.bias,
            "modules_to_save": list(c.modules_to_save or []) or None,
            # GPT-2-style Conv1D layers store their weight transposed; saying so up front
            # spares the user peft's per-layer warning (peft would correct it anyway).
            "fan_in_fan_out": any(type(m).__name__ == "Conv1D" for m in model.modules()),
        }

    def peft_config(self, model: nn.Module) -> peft.PeftConfig:
        """The equivalent peft config for ``model``."""
        return peft.LoraConfig(r=self.config.r, use_rslora=self.config.use_rslora, **self._peft_options(model))

    def inject(self, model: nn.Module) -> None:
        if hasattr(model, "peft_config"):
            raise PetlError(
                f"This {type(model).__name__} already carries peft adapters (it has a `peft_config`). "
                "Pass the plain base model, or call merge_and_unload() on the peft model first."
            )
        config = self.peft_config(model)
        try:
            self.tuner = self.tuner_class(model, config, ADAPTER_NAME)
        except BaseException as exc:
            _strip_peft(model)
            if isinstance(exc, ValueError):
                raise self._target_error(model, exc) from exc
            raise

    def _target_error(self, model: nn.Module, exc: ValueError) -> PetlError:
        """peft's ``ValueError`` for targets it cannot use, in the user's terms."""
        targets = self.config.target_modules
        hint = (f"Linear layers it has: {linear_layer_names(model)}. Pass some of these names, "
                'or target_modules="all-linear".')
        text = str(exc)
        if "not found in the base model" in text or "target_modules" in text:
            return TargetNotFoundError(
                f"target_modules={targets!r} matches no module of this {type(model).__name__}. {hint}"
            )
        if "is not supported" in text:  # e.g. a LayerNorm or a whole attention block named as a target
            kind = text.removeprefix("Target module ").split("(", 1)[0].strip() or "module"
            return TargetNotFoundError(
                f"target_modules={targets!r} names a {kind}, which {self.config.strategy} cannot adapt: it "
                f"adapts linear layers (and embeddings and convolutions). {hint}"
            )
        return PetlError(
            f"peft could not add {self.config.strategy} to this {type(model).__name__} with "
            f"target_modules={targets!r}: {exc}. {hint}"
        )

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = peft.get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
        return {PEFT_PREFIX + key: value for key, value in state.items()}

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        stripped = {key.removeprefix(PEFT_PREFIX): value for key, value in state_dict.items()}
        result = peft.set_peft_model_state_dict(model, stripped, adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise PetlError(f"peft did not recognise these adapter tensors: {unexpected[:5]}")

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """peft's ``adapter_config.json`` content for this adapter."""
        config = self.tuner.peft_config[ADAPTER_NAME].to_dict()
        config["base_model_name_or_path"] = getattr(getattr(model, "config", None), "name_or_path", None)
        return config

    def extra_files(self, model: nn.Module) -> dict[str, str]:
        text = json.dumps(self.adapter_config(model), indent=2, sort_keys=True, default=_json_default)
        return {"adapter_config.json": text + "\n"}

    def remove(self, model: nn.Module) -> nn.Module:
        # peft's unload keeps the *trained* copy of modules_to_save; unwrap must give back the original.
        for name, module in list(model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.original_module)
        return self.tuner.unload()

    def merge(self, model: nn.Module) -> nn.Module:
        return self.tuner.merge_and_unload()


def _strip_peft(model: nn.Module) -> None:
    if "peft_config" in vars(model):
        del model.peft_config


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "value"):  # enums such as PeftType and TaskType
        return value.value
    raise TypeError(f"Cannot serialise {type(value).__name__} to JSON")
