"""Every peft tuner that injects in place, as a petl strategy, generated from peft's own registry.

peft registers each of its methods in ``peft.mapping``: ``PEFT_TYPE_TO_CONFIG_MAPPING`` (the
config dataclass) and ``PEFT_TYPE_TO_TUNER_MAPPING`` (the ``BaseTuner`` that swaps target layers
for adapter layers). For each name of :data:`TUNERS` this module builds, without a file per
method:

* a config class (a frozen :class:`~petl.core.config.StrategyConfig`) whose options are peft's
  config fields with peft's names, types and defaults, minus the ones that describe a file or
  a peft runtime (:data:`~petl.strategies.peft_bridge.PEFT_METADATA`), ``modules_to_save``
  (petl's own option, same meaning) and ``fan_in_fan_out`` (derived from the layer kind). On
  construction each value is checked against peft's type hint and then by peft's own config
  (its ``__post_init__``); unknown options get petl's did-you-mean ``ConfigError``;
* a strategy class on :class:`~petl.strategies.peft_bridge.PeftTunerStrategy`, the path LoRA
  uses too: in-place injection, peft's folder format both ways, task heads in
  ``modules_to_save``, merging where peft can merge.

Registered (name: method; ``*`` not the identity at initialisation, ``-`` does not merge; VeRA,
RandLoRA, SHiRA, DeLoRA and Lily also save tensors that do not train):

* ``loha``: LoHa, a low-rank Hadamard-product update (Hyeon-Woo et al. 2022);
* ``lokr``: LoKr, a Kronecker-product update (Yeh et al. 2023);
* ``ia3``: (IA)^3, learned vectors rescaling keys, values and feed-forward inputs (Liu et al. 2022);
* ``oft``: OFT, a block-diagonal orthogonal rotation of each weight (Qiu et al. 2023);
* ``boft``: BOFT, orthogonal fine-tuning with butterfly factors (Liu et al. 2024);
* ``hra``: HRA, a chain of Householder reflections (Yuan et al. 2024);
* ``vera``: VeRA, frozen shared random projections with trained scaling vectors (Kopiczko et al. 2024);
* ``fourierft`` ``*``: FourierFT, an update from a few trained Fourier coefficients (Gao et al. 2024);
* ``miss``: MiSS, a shard-shared update (Kang et al. 2024);
* ``c3a`` ``*``: C3A, a block circular-convolution update (Chen et al. 2024);
* ``shira``: SHiRA, a sparse high-rank update on a fixed mask (Bhardwaj et al. 2024);
* ``road``: RoAd, 2D rotations of each output pair (Liao et al. 2025);
* ``randlora``: RandLoRA, a full-rank update from shared random bases (Albert et al. 2025);
* ``delora``: DeLoRA, a low-rank update of bounded norm (Bini et al. 2025);
* ``lily`` ``-``: Lily, low-rank adapters sharing a global projector (Zhong et al. 2024).

LoHa, LoKr, HRA and DeLoRA compute from the base layer's weight, so on a bitsandbytes 4-bit base
they refuse with an ``UnsupportedModelError`` (``Tuner.four_bit``); the others train on one.

Not registered (peft 0.21 names, and why):

* prompt learning (``PROMPT_TUNING``, ``P_TUNING``, ``MULTITASK_PROMPT_TUNING``, ``PREFIX_TUNING``,
  ``CPT``, ``CARTRIDGE``): the virtual tokens are prepended by ``PeftModel``'s forward, which
  petl does not use; petl's own ``prompt``, ``p_tuning`` and ``prefix`` strategies do prompt
  tuning, p-tuning and prefix tuning in place (:mod:`petl.strategies.prompt`,
  :mod:`petl.strategies.prefix`);
* ``ADAPTION_PROMPT``: replaces LLaMA-style attention modules through ``PeftModel`` only;
* ``XLORA``: a mixture of already trained LoRA adapters, loaded through ``PeftModel``;
* ``POLY``: routes by ``task_ids`` that every forward pass must be given;
* ``TRAINABLE_TOKENS``: trains the embedding rows of given ``token_indices``; it has no
  default and nothing to train without them;
* ``UNILORA``: keeps its shared parameter vector on the ``PeftModel``, not on the layers;
* ``SHADOW``: a side network next to the decoder stack, not a layer adapter (decoders only);
* ``VBLORA``, ``WAVEFT``, ``LN_TUNING``, ``PVERA``: their defaults do not fit a hidden size of 32
  (vector length 256, 2,592 coefficients, named norm layers) or they need a ``PeftModel``
  to save their shared projections; not verified here;
* ``ADAMSS``, ``BEFT``, ``DEFT``, ``FROD``, ``GLORA``, ``GRALORA``, ``HIRA``, ``OSF``, ``PEANUT``,
  ``PSOFT``, ``SUPERTUNING``, ``TINYLORA``: inject in place in a first probe, but are not yet
  run through petl's conformance suite (kept out to bound its time); register one by adding
  it to :data:`TUNERS` once the suite passes for it.

``LORA`` and ``ADALORA`` have their own modules (:mod:`petl.strategies.lora`,
:mod:`petl.strategies.adalora`) with petl's option names; they share the bridge.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import peft
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from petl.core import validators as v
from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.errors import ConfigError, PetlError, UnsupportedModelError
from petl.strategies.peft_bridge import PEFT_METADATA, PeftTunerStrategy

__all__ = ["NOT_REGISTERED", "TUNERS", "PeftTunerConfig", "Tuner", "strategy_class"]


class Tuner(NamedTuple):
    """One registered peft method."""

    peft_type: str
    description: str
    """The strategy's one-line summary (``petl list`` shows it)."""
    identity_at_init: bool = True
    mergeable: bool = True
    saves_frozen: bool = False
    """Saves tensors that do not train (VeRA's and RandLoRA's random bases, SHiRA's mask indices)."""
    four_bit: bool = True
    """Trains on a bitsandbytes 4-bit base (its layers compute from the base layer's output, not its weight)."""
    check: Callable[[dict[str, Any]], None] | None = None
    """Refuses (``ConfigError``) option combinations that peft accepts but that break the model."""


def _check_hra(options: dict[str, Any]) -> None:
    """HRA's symmetric initialisation (``init_weights=True`` with an even ``r``) repeats every
    Householder vector twice so that the reflections cancel; Gram-Schmidt (``apply_GS=True``)
    then reduces each repeat to a zero vector and divides by its norm, so the outputs are NaN
    (or, when rounding leaves a residue, a random rotation of the model). peft 0.21 does not check."""
    if options.get("apply_GS") and options.get("init_weights") and options.get("r", 0) % 2 == 0:
        raise ConfigError(
            f"hra with apply_GS=True and init_weights=True needs an odd r, got r={options['r']}: the symmetric "
            "initialisation repeats each vector, Gram-Schmidt turns the repeats into zero vectors, and the "
            "outputs become NaN. Use an odd r, set init_weights=False, or leave apply_GS=False."
        )


TUNERS: dict[str, Tuner] = {
    "loha": Tuner("LOHA", "LoHa: a low-rank Hadamard-product weight update (Hyeon-Woo et al. 2022), on peft.",
                  four_bit=False),
    "lokr": Tuner("LOKR", "LoKr: a Kronecker-product weight update (Yeh et al. 2023), on peft.", four_bit=False),
    "ia3": Tuner("IA3", "(IA)^3: learned vectors rescaling keys, values and feed-forward inputs "
                 "(Liu et al. 2022), on peft."),
    "oft": Tuner("OFT", "OFT: a block-diagonal orthogonal rotation of each weight (Qiu et al. 2023), on peft."),
    "boft": Tuner("BOFT", "BOFT: orthogonal fine-tuning with butterfly factors (Liu et al. 2024), on peft."),
    "hra": Tuner("HRA", "HRA: a chain of Householder reflections of each weight (Yuan et al. 2024), on peft.",
                 four_bit=False, check=_check_hra),
    "vera": Tuner("VERA", "VeRA: frozen shared random projections with trained scaling vectors "
                  "(Kopiczko et al. 2024), on peft.", saves_frozen=True),
    "fourierft": Tuner("FOURIERFT", "FourierFT: a weight update from a few trained Fourier coefficients "
                       "(Gao et al. 2024), on peft.", identity_at_init=False),
    "miss": Tuner("MISS", "MiSS: a shard-shared weight update (Kang et al. 2024), on peft."),
    "c3a": Tuner("C3A", "C3A: a block circular-convolution weight update (Chen et al. 2024), on peft.",
                 identity_at_init=False),
    "shira": Tuner("SHIRA", "SHiRA: a sparse high-rank update on a fixed mask (Bhardwaj et al. 2024), on peft.",
                   saves_frozen=True),
    "road": Tuner("ROAD", "RoAd: 2D rotations of pairs of outputs (Liao et al. 2025), on peft."),
    "randlora": Tuner("RANDLORA", "RandLoRA: a full-rank update from shared random bases (Albert et al. 2025), "
                      "on peft.", saves_frozen=True),
    "delora": Tuner("DELORA", "DeLoRA: a low-rank update of bounded norm (Bini et al. 2025), on peft.",
                    saves_frozen=True, four_bit=False),
    "lily": Tuner("LILY", "Lily: low-rank adapters sharing a global projector (Zhong et al. 2024), on peft.",
                  mergeable=False, saves_frozen=True),
}
"""The peft methods registered as petl strategies, by petl name."""

NOT_REGISTERED: dict[str, str] = {
    **dict.fromkeys(("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "PREFIX_TUNING", "CPT", "CARTRIDGE"),
                    "prompt learning: PeftModel's forward prepends the virtual tokens (petl's native 'prompt', "
                    "'p_tuning' and 'prefix' strategies do prompt tuning, p-tuning and prefix tuning in place)"),
    "ADAPTION_PROMPT": "replaces LLaMA-style attention modules through PeftModel only",
    "XLORA": "a mixture of already trained LoRA adapters, loaded through PeftModel",
    "POLY": "routes by task_ids that every forward pass must be given",
    "TRAINABLE_TOKENS": "trains the embedding rows of given token_indices and has no default for them",
    "UNILORA": "keeps its shared parameter vector on the PeftModel, not on the layers",
    "SHADOW": "a side network next to the decoder stack, not a layer adapter (decoders only)",
    **dict.fromkeys(("VBLORA", "WAVEFT", "LN_TUNING", "PVERA"),
                    "defaults that do not fit small hidden sizes, or shared projections saved through PeftModel; "
                    "not verified"),
    **dict.fromkeys(("ADAMSS", "BEFT", "DEFT", "FROD", "GLORA", "GRALORA", "HIRA", "OSF", "PEANUT", "PSOFT",
                     "SUPERTUNING", "TINYLORA"),
                    "injects in place, but not yet run through petl's conformance suite"),
    **dict.fromkeys(("LORA", "ADALORA"), "own modules: petl.strategies.lora and petl.strategies.adalora"),
}
"""Every other peft type of peft's registry, with the reason it is not a strategy here."""

SKIPPED_FIELDS = PEFT_METADATA | {"modules_to_save", "fan_in_fan_out"}
"""peft config fields that are not petl options: metadata, petl's own ``modules_to_save``, and
``fan_in_fan_out``, which petl derives from the layer kind (GPT-2's ``Conv1D``)."""


@dataclass(frozen=True, kw_only=True)
class PeftTunerConfig(StrategyConfig):
    """The base of every generated config: values checked against peft's types, then by peft."""

    peft_config_class: ClassVar[type]
    tuner: ClassVar[Tuner]

    def __post_init__(self) -> None:
        super().__post_init__()
        hints = _hints(self.peft_config_class)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "modules_to_save" or field.name not in hints:
                continue
            if not _fits(value, hints[field.name]):
                raise ConfigError(
                    f"{field.name} must be {_show(hints[field.name])}, got {type(value).__name__} {value!r} "
                    f"(an option of the {self.strategy!r} strategy, as peft's {self.peft_config_class.__name__} "
                    "defines it)."
                )
            if isinstance(value, (list, set, frozenset)):  # frozen configs hold tuples
                v.set_field(self, field.name, tuple(sorted(value) if isinstance(value, (set, frozenset)) else value))
        try:
            self.peft_config_class(**self.peft_kwargs())
        except PetlError:
            raise
        except (ValueError, TypeError, AssertionError) as exc:
            raise ConfigError(f"peft refuses these options of the {self.strategy!r} strategy: {exc}") from exc
        if self.tuner.check is not None:
            self.tuner.check(self.peft_kwargs())

    def peft_kwargs(self) -> dict[str, Any]:
        """The options as peft's config takes them (tuples as lists), ``modules_to_save`` aside."""
        return {field.name: list(value) if isinstance(value := getattr(self, field.name), tuple) else value
                for field in dataclasses.fields(self) if field.name != "modules_to_save"}


class _BridgedStrategy(PeftTunerStrategy):
    """The strategy of one generated peft method (see the module docstring)."""

    config: PeftTunerConfig
    four_bit: ClassVar[bool] = True

    def inject(self, model: nn.Module) -> None:
        if not self.four_bit and getattr(model, "is_loaded_in_4bit", False):
            raise UnsupportedModelError(
                f"The {self.config.strategy!r} strategy cannot train on this 4-bit {type(model).__name__}: peft "
                f"{peft.__version__}'s {self.peft_type} layers read the base layer's weight directly, and a "
                "bitsandbytes 4-bit weight holds packed codes. Load the base in 8-bit or full precision, or use a "
                f"strategy that trains on 4-bit bases ({', '.join(sorted(_FOUR_BIT))}). The model was left as it was."
            )
        super().inject(model)

    def peft_config(self, model: nn.Module) -> peft.PeftConfig:
        options = self.config.peft_kwargs()
        options["target_modules"] = self._targets(model)
        if options["target_modules"] is not None and options.get("feedforward_modules", ()) is None:
            options["feedforward_modules"] = []  # IA3 on fallback targets (attention projections): none is one
        options["modules_to_save"] = list(self.config.modules_to_save or []) or None
        if "fan_in_fan_out" in _hints(self.peft_config_class):
            # GPT-2-style Conv1D layers store their weight transposed; saying so spares peft's warning.
            options["fan_in_fan_out"] = any(type(m).__name__ == "Conv1D" for m in model.modules())
        return self.peft_config_class(**options)


def _hints(peft_config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(peft_config_class)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` (peft's annotation); unknown kinds of hint accept."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return v.is_int(value)
    if hint is float:  # scales and initial values beyond FLOAT_LIMIT overflow float32 activations
        return v.is_finite_number(value) and abs(value) <= FLOAT_LIMIT
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        return isinstance(value, (list, tuple, set, frozenset)) and (
            not args or all(_fits(item, args[0]) for item in value))
    if origin is dict or hint is dict:  # per-layer patterns: names to plain numbers, exact in JSON
        return isinstance(value, Mapping) and all(
            isinstance(key, str) and (_fits(item, args[1]) if len(args) == 2 else _plain(item))
            for key, item in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


FLOAT_LIMIT = 1e6
"""The largest magnitude a float option of a bridged tuner may take (peft checks none)."""


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, str)) or v.is_int(value) or v.is_finite_number(value)


def _show(hint: Any) -> str:
    """A type hint as a reader expects it: ``int``, ``list[str] | str | None``, one of ``'a', 'b'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_show(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) if origin is None else str(hint).replace("typing.", "")


def _config_class(name: str, peft_config_class: type, tuner: Tuner) -> type[PeftTunerConfig]:
    """A petl config class with peft's fields (names, types, defaults and help)."""
    hints = _hints(peft_config_class)
    fields: list[tuple[str, Any, Any]] = []
    lines = []
    for field in dataclasses.fields(peft_config_class):
        if field.name in SKIPPED_FIELDS or not field.init:
            continue
        kwargs: dict[str, Any] = {"metadata": field.metadata}
        if field.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = field.default_factory
        else:
            kwargs["default"] = field.default
        fields.append((field.name, hints[field.name], dataclasses.field(**kwargs)))
        help_text = " ".join(str(field.metadata.get("help", "")).split())
        lines.append(f"    {field.name}: {help_text[:200]}")
    doc = f"Options of the {name!r} strategy: peft's {peft_config_class.__name__} fields.\n\n" + "\n".join(lines)
    cls = dataclasses.make_dataclass(
        peft_config_class.__name__, fields, bases=(PeftTunerConfig,), frozen=True, kw_only=True,
        namespace={"peft_config_class": peft_config_class, "tuner": tuner, "__doc__": doc},
    )
    cls.__module__ = __name__
    return cls


def _layer_classes(tuner_class: type) -> tuple[type, ...]:
    """The plain (not quantized) adapter layer classes of a tuner's package (``peft.tuners.x.layer``)."""
    try:
        module = importlib.import_module(tuner_class.__module__.rsplit(".", 1)[0] + ".layer")
    except ImportError:
        return ()
    return tuple(obj for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, BaseTunerLayer) and issubclass(obj, nn.Module)
                 and obj.__module__ == module.__name__)


def strategy_class(name: str, tuner: Tuner) -> type[PeftTunerStrategy]:
    """The registered-to-be strategy class of one peft method (not registered by this call)."""
    peft_type = peft.PeftType(tuner.peft_type)
    peft_config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    tuner_class = PEFT_TYPE_TO_TUNER_MAPPING[peft_type]
    config_class = _config_class(name, peft_config_class, tuner)
    options = [f.name for f in dataclasses.fields(config_class) if f.name not in ("modules_to_save", "target_modules")]
    namespace = {
        "__doc__": f"{tuner.description}\n\nInjects peft's {tuner_class.__name__} layers in place; see "
                   f":mod:`{__name__}`.",
        "__module__": __name__,
        "config_class": config_class,
        "tuner_class": tuner_class,
        "peft_config_class": peft_config_class,
        "peft_type": tuner.peft_type,
        "peft_options": {option: option for option in options},
        "mergeable": tuner.mergeable,
        "identity_at_init": tuner.identity_at_init,
        "saves_frozen": tuner.saves_frozen,
        "four_bit": tuner.four_bit,
        "mergeable_layers": _layer_classes(tuner_class) if tuner.mergeable else (),
    }
    if not tuner.mergeable:
        namespace["merge_refusal"] = f"peft {peft.__version__} cannot fold {tuner.peft_type} into the base weights"
    return types.new_class(f"{peft_config_class.__name__.removesuffix('Config')}Strategy", (_BridgedStrategy,),
                           exec_body=lambda ns: ns.update(namespace))


_FOUR_BIT = ("adalora", "bottleneck", "lora", "prefix", *(name for name, t in TUNERS.items() if t.four_bit))
"""The built-in strategies that train on a 4-bit base (checked by tests/modeling/test_four_bit.py)."""


def _register_all() -> None:
    for name, tuner in TUNERS.items():
        if tuner.peft_type not in {t.value for t in PEFT_TYPE_TO_TUNER_MAPPING}:
            continue  # an older or newer peft without this method
        cls = strategy_class(name, tuner)
        register(name)(cls)
        globals()[cls.__name__] = cls
        globals()[cls.config_class.__name__] = cls.config_class


_register_all()
