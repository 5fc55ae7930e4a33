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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import peft
import torch
from peft.tuners.lora import layer as peft_lora
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from petl.core import validators as v
from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.errors import ConfigError, PetlError, suggest
from petl.strategies import peft_adapters
from petl.strategies.peft_bridge import ADAPTER_NAME, PEFT_PREFIX, PeftTunerStrategy, carries_peft, same
from petl.strategies.peft_bridge import strip_peft as _strip_peft

__all__ = ["ADAPTER_NAME", "PEFT_PREFIX", "LoraConfig", "LoraStrategy"]

PEFT_NO_EFFECT = frozenset({"fan_in_fan_out", "qalora_group_size", "megatron_core", "loftq_config", "eva_config",
                            "corda_config", "lora_ga_config"})
"""Fields that change nothing once the adapter's tensors are loaded: ``fan_in_fan_out`` peft corrects
per layer kind (as petl derives it), the others configure features petl refuses or initialisations."""
PLAIN_INITS: tuple[bool | str, ...] = (True, False, "gaussian", "eva", "orthogonal")
"""``init_lora_weights`` values that only initialise the adapter's own tensors, which loading
overwrites. The others (``pissa``, ``olora``, ``corda``, ``loftq``, ...) change the base weights."""
INITS = {"default": True, "random": False, "gaussian": "gaussian", "orthogonal": "orthogonal", "pissa": "pissa",
         "olora": "olora"}
"""petl's ``init`` -> peft's ``init_lora_weights`` (and ``"pissa_niter_<n>"`` as it is)."""
BASE_CHANGING_INITS = ("pissa", "olora")
"""Inits that set the adapted base weights W0 to W0 - (alpha / r) B0 A0: deterministic given W0, so loading runs
them again on the base model and the saved A, B then reproduce the trained model. PiSSA swaps new tensors in;
OLoRA (a QR decomposition of W0) subtracts in place on float32 weights, so petl keeps a copy of those."""
UNMET_INITS = {
    "eva": "it needs activations from a data pass (peft.tuners.lora.initialize_lora_eva_weights)",
    "corda": "it needs covariance statistics from a data pass (peft.tuners.lora.corda.preprocess_corda)",
    "loftq": "it quantizes the base weights and needs a loftq_config",
    "lora_ga": "it needs gradients from a data pass (peft's preprocess_loraga)",
    "mica": "it needs peft's MiCA preprocessing",
}
"""peft inits whose requirements ``petl.wrap`` cannot meet, with the reason."""


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
    use_dora: bool = False
    """DoRA (Liu et al. 2024): ``W = m * (W0 + s B A) / ||W0 + s B A||``, a trained magnitude ``m`` per output
    (starting at ``||W0||``, so still the identity at init); closer to full fine-tuning, slower steps."""
    init: str = "default"
    """How ``A`` and ``B`` start: ``"default"`` (``B = 0``), ``"gaussian"``, ``"orthogonal"``, ``"random"``
    (both random: not the identity, for debugging), ``"pissa"`` / ``"pissa_niter_<n>"`` (the top ``r``
    singular vectors of ``W0``, Meng et al. 2024), which moves that part out of ``W0`` (``petl.unwrap`` puts
    the original weights back), ``"olora"`` (the QR decomposition ``W0 = Q R``: ``B = Q_r``, ``A = R_r``, moved
    out of ``W0`` likewise; petl keeps a copy of the adapted weights for ``petl.unwrap``, Büyükakyüz 2024).
    ``eva``, ``corda`` and ``loftq`` are refused (see ``UNMET_INITS``)."""
    rank_pattern: dict[str, int] | None = None
    """Other ranks for some layers: module name (or regular expression) -> rank, e.g. ``{"v_proj": 16}``."""
    alpha_pattern: dict[str, float] | None = None
    """Other ``alpha`` for some layers, keyed like ``rank_pattern``."""
    layers_to_transform: tuple[int, ...] | None = None
    """Adapt only these layer indices (of the model's block list); ``None`` adapts every layer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        v.check_positive_int("r", self.r)
        v.check_number("alpha", self.alpha, low=0, low_open=True)
        v.check_float32("alpha", self.alpha)  # the update is multiplied by alpha / r in the layer's dtype
        v.check_number("dropout", self.dropout, low=0, high=1)
        v.check_choice("bias", self.bias, ("none", "all", "lora_only"))
        v.check_bool("use_rslora", self.use_rslora)
        v.check_bool("use_dora", self.use_dora)
        _check_init(self.init)
        for name, value in (("rank_pattern", self.rank_pattern), ("alpha_pattern", self.alpha_pattern)):
            if value is not None:
                v.check(isinstance(value, Mapping) and all(isinstance(k, str) and k for k in value),
                        f"{name} must map module names to numbers, got {value!r}.")
                for key, number in value.items():
                    if name == "rank_pattern":
                        v.check_positive_int(f"{name}[{key!r}]", number)
                    else:
                        v.check_number(f"{name}[{key!r}]", number, low=0, low_open=True)
                v.set_field(self, name, dict(value) or None)  # peft writes {} for none
        if self.layers_to_transform is not None:
            v.set_field(self, "layers_to_transform", v.int_tuple("layers_to_transform", self.layers_to_transform))
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            v.set_field(self, "target_modules", v.str_tuple("target_modules", self.target_modules))
        if isinstance(self.target_modules, tuple):
            v.check(len(self.target_modules) > 0, "target_modules must not be empty; pass None for the defaults.")


@register("lora")
class LoraStrategy(PeftTunerStrategy):
    """LoRA: low-rank updates B A of chosen linear layers (Hu et al. 2021), on peft; DoRA and PiSSA as options.

    peft's ``LoraModel`` layers are injected in place."""

    config_class: ClassVar[type[StrategyConfig]] = LoraConfig
    search_space: ClassVar[dict[str, tuple[int, ...]]] = {"r": (4, 8, 16)}  # petl bench --search: choices
    tuner_class: ClassVar[type] = peft.LoraModel
    peft_type: ClassVar[str | None] = "LORA"
    peft_config_class: ClassVar[type] = peft.LoraConfig
    peft_options: ClassVar[dict[str, str]] = {
        "r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "bias": "bias", "use_rslora": "use_rslora",
    }
    peft_read: ClassVar[frozenset[str]] = frozenset({"target_modules", "modules_to_save", "init_lora_weights"})
    peft_no_effect: ClassVar[frozenset[str]] = PEFT_NO_EFFECT
    mergeable_layers: ClassVar[tuple[type, ...]] = (
        peft_lora.Linear, peft_lora.Embedding, peft_lora.Conv1d, peft_lora.Conv2d, peft_lora.Conv3d,
    )
    """peft layers whose ``merge`` only adds to the base layer's tensors in place, so that
    :meth:`merged_for_inference` can put them back by copying (quantized ones cannot)."""

    config: LoraConfig

    def __init__(self, config: LoraConfig) -> None:
        super().__init__(config)
        self.tuner: Any = None
        self._join: Any = None
        """The peft tuner of the LoRA adapters already on the model, which this one joins (``check_stack``)."""

    @property
    def peft_name(self) -> str:
        """peft's name of this adapter in the layers it shares: petl's adapter name."""
        return self.adapter_name

    def _peft_options(self, model: nn.Module) -> dict[str, Any]:
        """The peft config options LoRA and AdaLoRA share."""
        c = self.config
        if type(self).peft_config is not LoraStrategy.peft_config:  # AdaLoRA builds its own peft config
            changed = [name for name in LORA_ONLY if getattr(c, name) != LoraConfig.__dataclass_fields__[name].default]
            if changed:
                raise ConfigError(f"{', '.join(changed)} are options of the 'lora' strategy only; the "
                                  f"{c.strategy!r} strategy does not support them. Leave them at their defaults.")
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
        """The equivalent peft config for ``model``.

        With ``init="pissa"`` it also keeps the adapted layers' base tensors as they
        are, since peft's init swaps new ones in (``weight.data = W0 - s B0 A0``): :meth:`remove`
        and a failed :meth:`inject` put them back.
        """
        c = self.config
        config = peft.LoraConfig(
            r=c.r, use_rslora=c.use_rslora, use_dora=c.use_dora, init_lora_weights=INITS.get(c.init, c.init),
            rank_pattern=dict(c.rank_pattern or {}), alpha_pattern=dict(c.alpha_pattern or {}),
            layers_to_transform=list(c.layers_to_transform) if c.layers_to_transform is not None else None,
            **self._peft_options(model),
        )
        if c.init == "olora":  # OLoRA subtracts in place: copies of the weights of the layers it may adapt
            layers = _olora_layers(model, config)
            if any(not m.weight.is_floating_point() for m in layers):
                raise ConfigError("init='olora' cannot be used on a quantized base: peft replaces the quantized "
                                  "weights with new ones, which petl.unwrap could not give back. Use init='default'.")
            self._kept = [(m.weight, m.weight.data.clone()) for m in layers]
        else:  # References, not copies: PiSSA swaps new tensors in, so only the replaced ones stay alive twice.
            self._kept = [(p, p.data) for p in model.parameters()] if c.init.startswith(BASE_CHANGING_INITS) else []
        return config

    def _put_back_base(self) -> None:
        """Give the base tensors PiSSA or OLoRA changed their original values (the same tensors or copies)."""
        for param, data in getattr(self, "_kept", ()):
            param.data = data
        self._kept = []

    def inject(self, model: nn.Module) -> None:
        if hasattr(model, "peft_config") and (self._join is None or model.peft_config is not self._join.peft_config):
            raise carries_peft(model)
        config = self.peft_config(model)
        existing = {id(module) for module in model.modules()}
        try:
            if self._join is None:
                self.tuner = self.tuner_class(model, config, self.peft_name)
            else:
                peft_adapters.join_tuner(self._join, model, self.peft_name, config)
                self.tuner = self._join
        except BaseException as exc:
            if self._join is None:
                _strip_peft(model)
            self._put_back_base()
            if isinstance(exc, ValueError):
                raise self._target_error(model, exc) from exc
            raise
        # peft's new modules start in training mode; in a model in eval mode their dropout would be live.
        for module in model.modules():
            if id(module) not in existing:
                module.training = model.training

    @classmethod
    def peft_option_map(cls) -> dict[str, str]:
        if cls.peft_config is not LoraStrategy.peft_config:  # AdaLoRA: its own peft config, no variants
            return super().peft_option_map()
        return {**cls.peft_options, **{name: name for name in LORA_ONLY if name != "init"}}

    @classmethod
    def peft_refusals(cls, adapter_config: dict[str, Any]) -> list[str]:
        init = adapter_config.get("init_lora_weights", True)
        if any(same(init, plain) for plain in PLAIN_INITS) or (isinstance(init, str) and _init_error(init) is None):
            return []
        return [f"init_lora_weights={init!r} ({_init_error(init) if isinstance(init, str) else 'unknown'})"]

    @classmethod
    def config_from_peft(cls, adapter_config: dict[str, Any], model: nn.Module) -> StrategyConfig:
        """The config of an adapter peft saved; see :meth:`PeftTunerStrategy.config_from_peft`.

        ``init_lora_weights`` is carried over where it decides the base weights (PiSSA: loading
        runs the init again on the base model); the other inits only start tensors that loading overwrites.
        """
        config = super().config_from_peft(adapter_config, model)
        init = adapter_config.get("init_lora_weights", True)
        if isinstance(init, str) and init.startswith(BASE_CHANGING_INITS):
            config = type(config).from_dict({**config.to_dict(), "init": init})
        return config

    def check_stack(self, model: nn.Module, others: Sequence[Any]) -> None:
        """Join other adapters of this tuner class (peft stacks them per layer); refuse another peft tuner's."""
        peers = [other for other in others if isinstance(other, LoraStrategy)]
        foreign = [other for other in peers if type(other).tuner_class is not self.tuner_class]
        if foreign:
            raise PetlError(
                f"peft cannot stack a {self.config.strategy!r} adapter with the {foreign[0].config.strategy!r} "
                f"adapter {foreign[0].adapter_name!r} on one model: their layers ({self.tuner_class.__name__}, "
                f"{type(foreign[0]).tuner_class.__name__}) do not share. Delete it first (petl.delete_adapter)."
            )
        if self.config.bias != "none" and any(peer.config.bias != "none" for peer in peers):
            raise PetlError(f"peft trains biases for one adapter per model, and {peers[0].adapter_name!r} already "
                            "does. Pass bias='none' for this adapter.")
        self._join = peers[0].tuner if peers else None

    def set_active(self, model: nn.Module, active: bool, trainable: bool) -> None:
        peft_adapters.set_active(model, self.peft_name, active, trainable)

    def remove(self, model: nn.Module) -> nn.Module:
        self._put_back_base()
        if self.tuner is not None and any(name != self.peft_name for name in self.tuner.peft_config):
            peft_adapters.remove_adapter(self.tuner, model, self.peft_name)  # other LoRA adapters share its layers
            return model
        # peft's unload keeps the *trained* copy of modules_to_save; unwrap must give back the original.
        for name, module in list(model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.original_module)
        return self.tuner.unload()


LORA_ONLY = ("use_dora", "init", "rank_pattern", "alpha_pattern", "layers_to_transform")
"""LoRA options that strategies built on LoRA with their own peft config (AdaLoRA) do not take."""


def _olora_layers(model: nn.Module, config: peft.LoraConfig) -> list[nn.Module]:
    """The layers whose weights peft's OLoRA init may rewrite in place: those its targets name."""
    import dataclasses

    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = config.target_modules
    if targets is None:
        targets = DEFAULTS.get(getattr(getattr(model, "config", None), "model_type", None))
    weighted = [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    if targets is None or targets == "all-linear":  # every layer with a weight: more than needed, never less
        return [m for _, m in weighted]
    named = dataclasses.replace(config, target_modules=targets)
    return [m for name, m in weighted if check_target_module_exists(named, name)]


def _init_error(init: str) -> str | None:
    """Why petl cannot use peft's ``init_lora_weights=init``, or ``None``."""
    if init in INITS or init in INITS.values():
        return None
    if init.startswith("pissa_niter_"):
        niter = init.removeprefix("pissa_niter_")
        return None if niter.isdigit() else f"the number of iterations {niter!r} is not an integer >= 0"
    if init in UNMET_INITS:
        return f"{UNMET_INITS[init]}, which petl.wrap cannot do"
    return "not an initialisation peft knows"


def _check_init(init: Any) -> None:
    v.check(isinstance(init, str), f"init must be a string such as 'default' or 'pissa', got {init!r}.")
    error = _init_error(init)
    if error is not None:
        choices = [*INITS, "pissa_niter_<n>"]
        hint = suggest(init, choices) if init not in UNMET_INITS else " Use peft directly for this init."
        raise ConfigError(f"init={init!r} cannot be used: {error}.{hint} Choices: {', '.join(choices)}.")
