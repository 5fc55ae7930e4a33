"""The bridge between petl's strategy protocol and a peft tuner, shared by every peft-based strategy.

peft implements each method as a config dataclass, a ``BaseTuner`` subclass (``LoraModel``,
``LoHaModel``, ``IA3Model``, ...) that swaps target layers for its adapter layers, and a
``PeftModel`` wrapper around the whole model. petl uses the first two only:
:class:`PeftTunerStrategy` builds the tuner on the user's model, which injects the adapter
layers *in place* (the tuner object is kept by the strategy, never put into the model), and
then speaks peft's formats so that folders are interchangeable:

* tensors are keyed as peft's ``PeftModel`` keys them (``base_model.model.<module>...``):
  they are read through a small stand-in for ``PeftModel`` (:class:`_PeftView`) holding the
  tuner, so state a tuner keeps outside the layers (VeRA's shared projections) is included;
* ``adapter_config.json`` is the tuner's own config plus the ``task_type`` of the model's head
  (so ``peft.AutoPeftModelFor...`` loads the folder with the matching class);
* :meth:`PeftTunerStrategy.config_from_peft` turns such a file back into petl's config and
  refuses every option it cannot carry over, never dropping one silently.

Task heads (``modules_to_save``) are trained by peft's ``ModulesToSaveWrapper``. Merging goes
through the tuner's ``merge_and_unload``; a strategy whose adapter is no weight change sets
``mergeable = False`` and is refused up front. :meth:`PeftTunerStrategy.merged_for_inference`
folds the adapter layers in for the length of a block (:mod:`petl.strategies.peft_merge`).

LoRA and AdaLoRA (:mod:`petl.strategies.lora`, :mod:`petl.strategies.adalora`) subclass it
with hand-written configs; every other peft method is generated from peft's own registry in
:mod:`petl.strategies.peft_tuners`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

from petl.core.config import StrategyConfig
from petl.core.strategy import StrategyBase
from petl.errors import CheckpointError, NotMergeableError, PetlError, TargetNotFoundError, UnsupportedModelError
from petl.modeling.layers import linear_layer_names
from petl.strategies.peft_merge import merged_peft_layers
from petl.tasks import PEFT_TASK_TYPES, task_of_model

__all__ = ["ADAPTER_NAME", "PEFT_METADATA", "PEFT_PREFIX", "PeftTunerStrategy", "carries_peft", "is_unset",
           "json_default", "peft_defaults", "peft_heads", "peft_targets", "same", "strip_peft"]

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
PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                   "QUESTION_ANS": ("qa_outputs",)}
"""Heads peft's ``PeftModelFor...`` class of a ``task_type`` adds to ``modules_to_save`` when it loads."""


class _PeftView(nn.Module):
    """What peft's state-dict functions read from a ``PeftModel``: ``base_model`` (the tuner,
    holding the user's model as ``model``) and ``peft_config``. Never part of the user's model."""

    def __init__(self, tuner: nn.Module) -> None:
        super().__init__()
        self.base_model = tuner
        self.peft_config = tuner.peft_config
        self.config = getattr(tuner.model, "config", None)  # for peft's transformers-v5 key conversion

    def get_base_model(self) -> nn.Module:
        """The user's model, as ``PeftModel.get_base_model`` gives it."""
        return self.base_model.model


class PeftTunerStrategy(StrategyBase):
    """A peft tuner injected in place: the shared implementation of every peft-based strategy.

    Subclasses set ``config_class``, ``tuner_class``, ``peft_config_class``, ``peft_type`` and
    ``peft_options``, and build peft's config in :meth:`peft_config`.
    """

    handles_heads: ClassVar[bool] = True
    tuner_class: ClassVar[type]
    peft_config_class: ClassVar[type]
    peft_options: ClassVar[dict[str, str]] = {}
    """peft's name -> petl's name of the options carried over one to one from ``adapter_config.json``."""
    peft_read: ClassVar[frozenset[str]] = frozenset({"target_modules", "modules_to_save"})
    """Further ``adapter_config.json`` fields :meth:`config_from_peft` reads (or checks) itself."""
    peft_no_effect: ClassVar[frozenset[str]] = frozenset({"fan_in_fan_out"})
    """Fields that change nothing once the tensors are loaded (``fan_in_fan_out`` peft corrects
    per layer kind, as petl derives it)."""
    mergeable: ClassVar[bool] = True
    """Whether :meth:`merge` folds the adapter into the base weights (else it raises up front)."""
    identity_at_init: ClassVar[bool] = True
    """Whether the freshly wrapped model computes what the base model computed."""
    saves_frozen: ClassVar[bool] = False
    """Whether the saved tensors include some that do not train (fixed random projections, sparse
    masks), so that more is saved than trains."""
    mergeable_layers: ClassVar[tuple[type, ...]] = ()
    """peft layers whose ``merge`` only changes the base layer's tensors, so that
    :meth:`merged_for_inference` can put them back by copying (quantized ones cannot)."""

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        self.tuner: Any = None

    @property
    def peft_name(self) -> str:
        """peft's name of this adapter in the layers: petl's adapter name (``"default"`` for one adapter)."""
        return getattr(self, "adapter_name", ADAPTER_NAME)

    def peft_config(self, model: nn.Module) -> peft.PeftConfig:
        """The equivalent peft config for ``model``."""
        raise NotImplementedError(f"{type(self).__name__} must define peft_config(model)")

    def _targets(self, model: nn.Module) -> list[str] | str | None:
        """The configured targets, or a default for families peft has none for."""
        target = getattr(self.config, "target_modules", None)
        if target is not None:
            return list(target) if isinstance(target, tuple) else target
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if self._peft_has_default(model):
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

    def _peft_has_default(self, model: nn.Module) -> bool:
        """Whether peft knows default targets for this model's family."""
        mapping = getattr(self.tuner_class, "target_module_mapping", None)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if mapping is not None:
            return model_type in mapping
        try:  # tuners with their own default tables (IA3: targets and feed-forward modules)
            self.tuner_class._prepare_adapter_config(self.peft_config_class(), {"model_type": model_type})
        except (ValueError, KeyError, TypeError):
            return False
        return True

    def inject(self, model: nn.Module) -> None:
        if hasattr(model, "peft_config"):
            raise carries_peft(model)
        config = self.peft_config(model)
        existing = {id(module) for module in model.modules()}
        try:
            self.tuner = self.tuner_class(model, config, self.peft_name)
        except BaseException as exc:
            strip_peft(model)
            if isinstance(exc, (ValueError, TypeError, NotImplementedError)):  # peft's ways to refuse a layer
                raise self._target_error(model, exc) from exc
            raise
        # peft's new modules start in training mode; in a model in eval mode their dropout would be live.
        for module in model.modules():
            if id(module) not in existing:
                module.training = model.training

    def _target_error(self, model: nn.Module, exc: Exception) -> PetlError:
        """peft's error for targets it cannot use, in the user's terms."""
        targets = getattr(self.config, "target_modules", None)
        hint = (f"Linear layers it has: {linear_layer_names(model)}. Pass some of these names, "
                'or target_modules="all-linear".')
        text = str(exc)
        if targets is None and ("not supported" in text or "does not support" in text or "not a plain" in text):
            # The default targets are layers of a kind this method has no peft layer for (GPT-2's Conv1D).
            return UnsupportedModelError(
                f"The {self.config.strategy!r} strategy cannot adapt this {type(model).__name__}: peft says "
                f"{text.rstrip('.')}. Use a strategy that supports these layers (lora, ia3), or name other "
                "target_modules."
            )
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
        return peft.get_peft_model_state_dict(_PeftView(self.tuner), adapter_name=self.peft_name)

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        result = peft.set_peft_model_state_dict(_PeftView(self.tuner), dict(state_dict), adapter_name=self.peft_name)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise PetlError(f"peft did not recognise these adapter tensors: {unexpected[:5]}")

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """peft's ``adapter_config.json`` content for this adapter.

        ``task_type`` names the model's head in peft's terms (``None`` for a head petl does not
        know), so that ``peft.AutoPeftModelFor...`` loads the folder with the matching class.
        """
        config = self.tuner.peft_config[self.peft_name].to_dict()
        config["base_model_name_or_path"] = getattr(getattr(model, "config", None), "name_or_path", None)
        config["task_type"] = PEFT_TASK_TYPES.get(task_of_model(model) or "")
        return config

    @classmethod
    def peft_option_map(cls) -> dict[str, str]:
        """peft's name -> petl's name of every option :meth:`config_from_peft` carries over."""
        return dict(cls.peft_options)

    @classmethod
    def peft_refusals(cls, adapter_config: dict[str, Any]) -> list[str]:
        """Further options of ``adapter_config`` this strategy cannot honour, as ``"key=value (why)"``."""
        return []

    @classmethod
    def config_from_peft(cls, adapter_config: dict[str, Any], model: nn.Module) -> StrategyConfig:
        """The config of an adapter peft saved, refusing every peft option petl cannot honour.

        ``modules_to_save`` is resolved against ``model`` as peft does (by name suffix, names
        matching nothing ignored, plus the heads peft's task class adds) into full module names.
        """
        defaults = peft_defaults(cls.peft_config_class)
        option_map = cls.peft_option_map()
        read = set(option_map) | cls.peft_read | PEFT_METADATA | cls.peft_no_effect
        refused = []
        for key, value in sorted(adapter_config.items()):
            if key in read:
                continue
            if key in defaults:
                if not same(value, defaults[key]):
                    refused.append(f"{key}={value!r} (peft's default: {defaults[key]!r})")
            elif not is_unset(value):
                refused.append(f"{key}={value!r} (an option peft {peft.__version__} does not know)")
        refused += cls.peft_refusals(adapter_config)
        if refused:
            raise CheckpointError(
                f"adapter_config.json sets {', '.join(refused)}, which petl's {cls.config_class.strategy!r} strategy "
                "cannot reproduce, so the loaded model would compute something else. Load the folder with "
                "peft.PeftModel.from_pretrained instead, or train the adapter without these options."
            )
        options = {ours: adapter_config.get(theirs, defaults.get(theirs)) for theirs, ours in option_map.items()}
        options["target_modules"] = peft_targets(adapter_config.get("target_modules"))
        options["modules_to_save"] = peft_heads(adapter_config, model)
        return cls.config_class.from_dict(options)

    def extra_files(self, model: nn.Module) -> dict[str, str]:
        text = json.dumps(self.adapter_config(model), indent=2, sort_keys=True, default=json_default)
        return {"adapter_config.json": text + "\n"}

    def remove(self, model: nn.Module) -> nn.Module:
        # peft's unload keeps the *trained* copy of modules_to_save; unwrap must give back the original.
        for name, module in list(model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.original_module)
        return self.tuner.unload()

    def merge(self, model: nn.Module) -> nn.Module:
        if not self.mergeable:
            return super().merge(model)  # NotMergeableError, before anything changes
        # The trained head copies stay: put them in place of their wrappers first (peft's generic unload
        # would take a wrapped non-linear head, such as RoBERTa's classification head, for a layer).
        for name, module in list(model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper) and self.peft_name in module.modules_to_save:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.modules_to_save[self.peft_name])
        try:
            return self.tuner.merge_and_unload()
        except NotImplementedError as exc:
            raise NotMergeableError(f"peft cannot merge this {self.config.strategy} adapter: {exc}") from exc

    @contextmanager
    def merged_for_inference(self, model: nn.Module) -> Iterator[bool]:
        """Fold the adapter into each adapted weight for the block; afterwards the model is back bit for bit.

        Costs one extra copy of every adapted layer's base weight (and bias) on its device for the
        block's length. Yields ``False`` and changes nothing when the adapter is no weight change or
        a layer cannot be restored by copying (quantized or tied weights, disabled adapters; see
        :mod:`petl.strategies.peft_merge`).

        Raises:
            PetlError: ``model`` is in training mode with gradients enabled.
        """
        layers = self.mergeable_layers if self.mergeable else ()
        with merged_peft_layers(model, layers, self.config.strategy) as merged:
            yield merged


def peft_defaults(config_class: type) -> dict[str, Any]:
    """Every field of a peft config dataclass with its default value."""
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def carries_peft(model: nn.Module) -> PetlError:
    """The error for a model that holds peft adapters already (it has a ``peft_config``)."""
    return PetlError(
        f"This {type(model).__name__} already carries peft adapters (it has a `peft_config`). "
        "Pass the plain base model, or call merge_and_unload() on the peft model first."
    )


def strip_peft(model: nn.Module) -> None:
    """Take off the ``peft_config`` attribute a failed tuner left on ``model``."""
    if "peft_config" in vars(model):
        del model.peft_config


def same(value: Any, default: Any) -> bool:
    # 1 == True in Python; an option set to 1 where peft's default is True is not the default.
    if isinstance(default, float) and type(value) is int:  # JSON writes 8.0 as 8 in some writers
        return float(value) == default
    return type(value) is type(default) and value == default


def is_unset(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, dict)) and not value)


def peft_targets(value: Any) -> tuple[str, ...] | str | None:
    """peft's ``target_modules``: a regular expression, or names (a set in memory, so order is not kept)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(name, str) for name in value):
        return tuple(sorted(set(value)))
    raise CheckpointError(f"adapter_config.json has target_modules={value!r}, not a list of names or a string.")


def peft_heads(adapter_config: dict[str, Any], model: nn.Module) -> tuple[str, ...]:
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


def json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "value"):  # enums such as PeftType and TaskType
        return value.value
    raise TypeError(f"Cannot serialise {type(value).__name__} to JSON")
