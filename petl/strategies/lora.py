"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", section 4.1), built on peft.

A frozen linear layer ``h = W0 x`` becomes

    h = W0 x + (alpha / r) * B A x,    A in R^{r x d_in},  B in R^{d_out x r}

with ``A`` random and ``B`` zero at initialisation, so the wrapped model starts out
computing exactly what the base model computed. Each adapted layer adds
``r * (d_in + d_out)`` trainable parameters, and ``merge`` folds ``(alpha / r) B A``
into ``W0`` so that inference costs nothing extra. :meth:`LoraStrategy.merged_for_inference`
does so for the length of a block only (evaluation runs in one): on leaving it a copy of
each adapted ``W0`` is put back, bit for bit (see :mod:`petl.strategies.peft_merge`).

petl does not re-implement LoRA: it injects peft's layers into the model in place
(no wrapper class around the model) and saves in peft's format, so a folder written
by ``petl.save`` also loads with ``peft.PeftModel.from_pretrained`` (and, through the
``task_type`` it records, with ``peft.AutoPeftModelFor...``), and ``petl.load`` reads a
folder written by peft's ``save_pretrained`` (:meth:`LoraStrategy.config_from_peft`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import peft
import torch
from peft.tuners.lora import layer as peft_lora
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

from petl.core import validators as v
from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.core.strategy import StrategyBase
from petl.errors import CheckpointError, PetlError, TargetNotFoundError
from petl.modeling.layers import linear_layer_names
from petl.strategies.peft_merge import merged_peft_layers
from petl.tasks import PEFT_TASK_TYPES, task_of_model

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

PEFT_METADATA = frozenset({"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                           "revision", "inference_mode", "runtime_config"})
"""``adapter_config.json`` fields that describe the file or how peft runs, not what the adapter computes."""
PEFT_NO_EFFECT = frozenset({"fan_in_fan_out", "qalora_group_size", "megatron_core", "loftq_config", "eva_config",
                            "corda_config", "lora_ga_config"})
"""Fields that change nothing once the adapter's tensors are loaded: ``fan_in_fan_out`` peft corrects
per layer kind (as petl derives it), the others configure features petl refuses or initialisations."""
PLAIN_INITS: tuple[bool | str, ...] = (True, False, "gaussian", "eva", "orthogonal")
"""``init_lora_weights`` values that only initialise the adapter's own tensors, which loading
overwrites. The others (``pissa``, ``olora``, ``corda``, ``loftq``, ...) change the base weights."""
PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                   "QUESTION_ANS": ("qa_outputs",)}
"""Heads peft's ``PeftModelFor...`` class of a ``task_type`` adds to ``modules_to_save`` when it loads."""


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
    peft_type: ClassVar[str | None] = "LORA"
    peft_config_class: ClassVar[type] = peft.LoraConfig
    peft_options: ClassVar[dict[str, str]] = {
        "r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "bias": "bias", "use_rslora": "use_rslora",
    }
    """peft's name -> petl's name of the options carried over one to one from ``adapter_config.json``."""
    peft_read: ClassVar[frozenset[str]] = frozenset({"target_modules", "modules_to_save", "init_lora_weights"})
    """Further ``adapter_config.json`` fields :meth:`config_from_peft` reads (or checks) itself."""
    mergeable_layers: ClassVar[tuple[type, ...]] = (
        peft_lora.Linear, peft_lora.Embedding, peft_lora.Conv1d, peft_lora.Conv2d, peft_lora.Conv3d,
    )
    """peft layers whose ``merge`` only adds to the base layer's tensors in place, so that
    :meth:`merged_for_inference` can put them back by copying (quantized ones cannot)."""

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
        existing = {id(module) for module in model.modules()}
        try:
            self.tuner = self.tuner_class(model, config, ADAPTER_NAME)
        except BaseException as exc:
            _strip_peft(model)
            if isinstance(exc, ValueError):
                raise self._target_error(model, exc) from exc
            raise
        # peft's new modules start in training mode; in a model in eval mode their dropout would be live.
        for module in model.modules():
            if id(module) not in existing:
                module.training = model.training

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
        """peft's ``adapter_config.json`` content for this adapter.

        ``task_type`` names the model's head in peft's terms (``None`` for a head petl does not
        know), so that ``peft.AutoPeftModelFor...`` loads the folder with the matching class.
        """
        config = self.tuner.peft_config[ADAPTER_NAME].to_dict()
        config["base_model_name_or_path"] = getattr(getattr(model, "config", None), "name_or_path", None)
        config["task_type"] = PEFT_TASK_TYPES.get(task_of_model(model) or "")
        return config

    @classmethod
    def config_from_peft(cls, adapter_config: dict[str, Any], model: nn.Module) -> StrategyConfig:
        """The config of an adapter peft saved, refusing every peft option petl cannot honour.

        ``modules_to_save`` is resolved against ``model`` as peft does (by name suffix, names
        matching nothing ignored, plus the heads peft's task class adds) into full module names.
        """
        defaults = _peft_defaults(cls.peft_config_class)
        read = set(cls.peft_options) | cls.peft_read | PEFT_METADATA | PEFT_NO_EFFECT
        refused = []
        for key, value in sorted(adapter_config.items()):
            if key in read:
                continue
            if key in defaults:
                if not _same(value, defaults[key]):
                    refused.append(f"{key}={value!r} (peft's default: {defaults[key]!r})")
            elif not _is_unset(value):
                refused.append(f"{key}={value!r} (an option peft {peft.__version__} does not know)")
        init = adapter_config.get("init_lora_weights", True)
        if not any(_same(init, plain) for plain in PLAIN_INITS):
            refused.append(f"init_lora_weights={init!r} (it changes the base model's weights when peft loads it)")
        if refused:
            raise CheckpointError(
                f"adapter_config.json sets {', '.join(refused)}, which petl's {cls.config_class.strategy!r} strategy "
                "cannot reproduce, so the loaded model would compute something else. Load the folder with "
                "peft.PeftModel.from_pretrained instead, or train the adapter without these options."
            )
        options = {ours: adapter_config.get(theirs, defaults.get(theirs)) for theirs, ours in cls.peft_options.items()}
        options["target_modules"] = _peft_targets(adapter_config.get("target_modules"))
        options["modules_to_save"] = _peft_heads(adapter_config, model)
        return cls.config_class.from_dict(options)

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

    @contextmanager
    def merged_for_inference(self, model: nn.Module) -> Iterator[bool]:
        """Fold ``B A`` into each adapted weight for the block; afterwards the model is back bit for bit.

        Costs one extra copy of every adapted layer's base weight (and bias) on its device for the
        block's length. Yields ``False`` and changes nothing when a layer cannot be restored by copying
        (quantized or tied weights, disabled adapters; see :mod:`petl.strategies.peft_merge`).

        Raises:
            PetlError: ``model`` is in training mode with gradients enabled.
        """
        with merged_peft_layers(model, self.mergeable_layers, self.config.strategy) as merged:
            yield merged


def _peft_defaults(config_class: type) -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _same(value: Any, default: Any) -> bool:
    # 1 == True in Python; an option set to 1 where peft's default is True is not the default.
    return type(value) is type(default) and value == default


def _is_unset(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, dict)) and not value)


def _peft_targets(value: Any) -> tuple[str, ...] | str | None:
    """peft's ``target_modules``: a regular expression, or names (a set in memory, so order is not kept)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(name, str) for name in value):
        return tuple(sorted(set(value)))
    raise CheckpointError(f"adapter_config.json has target_modules={value!r}, not a list of names or a string.")


def _peft_heads(adapter_config: dict[str, Any], model: nn.Module) -> tuple[str, ...]:
    """The full names of the modules peft would train in full on ``model``: a module matches a
    name when its own name ends with it (peft's rule), and names matching nothing are ignored."""
    requested = adapter_config.get("modules_to_save") or []
    if not isinstance(requested, list) or not all(isinstance(name, str) and name for name in requested):
        raise CheckpointError(f"adapter_config.json has modules_to_save={requested!r}, not a list of module names.")
    wanted = [*requested, *PEFT_TASK_HEADS.get(adapter_config.get("task_type") or "", ())]
    found: list[str] = []
    peft_parts: list[str] = []  # inside an adapter layer or a trained copy: peft's modules, not the model's
    for name, module in model.named_modules():
        if any(name.startswith(part + ".") for part in peft_parts):
            continue
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            peft_parts.append(name)
        if name and any(name.endswith(target) for target in wanted):
            found.append(name)
    return tuple(name for name in found if not any(name.startswith(other + ".") for other in found))


def _strip_peft(model: nn.Module) -> None:
    if "peft_config" in vars(model):
        del model.peft_config


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "value"):  # enums such as PeftType and TaskType
        return value.value
    raise TypeError(f"Cannot serialise {type(value).__name__} to JSON")
