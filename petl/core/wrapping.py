"""``wrap``, ``unwrap`` and ``merge``: putting a strategy into a model and taking it out.

``wrap`` freezes the model, lets the strategy inject itself in place and keeps an
explicit record of what it did on the model (``model._petl``), so that ``unwrap``
can give back exactly the model the user passed in: the same weights, the same
``requires_grad`` flags, the same module classes and behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from petl.core import registry
from petl.core.config import StrategyConfig
from petl.core.heads import HeadState, resolve_heads
from petl.core.strategy import Strategy
from petl.errors import AlreadyWrappedError, ConfigError, NotWrappedError, PetlError

__all__ = ["WrapState", "is_wrapped", "merge", "model_signature", "state_of", "unwrap", "wrap"]

logger = logging.getLogger(__name__)

_ATTR = "_petl"


@dataclass
class WrapState:
    """What ``wrap`` did to a model, kept on the model as ``model._petl``."""

    strategy: Strategy
    requires_grad: dict[str, bool]
    """Each base parameter's ``requires_grad`` before wrapping, to restore on unwrap."""
    heads: HeadState | None
    """Heads petl trains on the strategy's behalf (``None`` when the strategy does it)."""
    signature: dict[str, Any]


def is_wrapped(model: nn.Module) -> bool:
    """Whether ``model`` carries a petl strategy."""
    return isinstance(getattr(model, _ATTR, None), WrapState)


def state_of(model: nn.Module) -> WrapState:
    """The :class:`WrapState` of a wrapped model.

    Raises:
        NotWrappedError: The model was not wrapped with ``petl.wrap``.
    """
    state = getattr(model, _ATTR, None)
    if not isinstance(state, WrapState):
        raise NotWrappedError(
            f"This {type(model).__name__} is not wrapped by petl. "
            'Call petl.wrap(model, "lora", ...) (or petl.load(model, path)) first.'
        )
    return state


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What identifies the architecture an adapter belongs to."""
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
    }


def _build(strategy: str | StrategyConfig, options: Mapping[str, Any]) -> Strategy:
    if isinstance(strategy, StrategyConfig):
        if options:
            raise ConfigError(
                f"Options {sorted(options)} were given next to a {type(strategy).__name__}. "
                "Pass the options inside the config, or pass the strategy name with keyword options, not both."
            )
        cls = registry.get(strategy.strategy)
        if not isinstance(strategy, cls.config_class):
            raise ConfigError(
                f"The {strategy.strategy!r} strategy expects a {cls.config_class.__name__}, "
                f"got a {type(strategy).__name__}."
            )
        return cls(strategy)
    if not isinstance(strategy, str):
        raise ConfigError(
            f"The strategy must be a name such as 'lora' or a config such as petl.LoraConfig(r=8), "
            f"got {type(strategy).__name__}."
        )
    cls = registry.get(strategy)
    return cls(cls.config_class.from_dict(options))


def wrap(model: nn.Module, strategy: str | StrategyConfig, /, **options: Any) -> nn.Module:
    """Add a parameter-efficient adapter to ``model``, in place, and return it.

    Every base parameter is frozen; only the adapter (and, by default, a task head
    the model adds fresh, such as a classifier) is trainable.

    Args:
        model: Any ``torch.nn.Module``, typically a Hugging Face ``PreTrainedModel``.
        strategy: A registered strategy name (see :func:`petl.available`) or a
            strategy config such as ``petl.LoraConfig(r=8)``.
        **options: The strategy's options when ``strategy`` is a name.

    Returns:
        The same model object, now carrying the adapter.

    Raises:
        UnknownStrategyError: ``strategy`` is not registered.
        ConfigError: An option is unknown or invalid.
        TargetNotFoundError: The target modules match nothing in the model.
        AlreadyWrappedError: The model already carries a petl strategy.
    """
    if not isinstance(model, nn.Module):
        raise PetlError(f"petl.wrap expects a torch.nn.Module, got {type(model).__name__}.")
    if is_wrapped(model):
        raise AlreadyWrappedError(
            f"This {type(model).__name__} is already wrapped with the "
            f"{state_of(model).strategy.config.strategy!r} strategy. "
            "Call petl.unwrap(model) (or petl.merge(model)) before wrapping it again."
        )
    instance = _build(strategy, options)
    heads = resolve_heads(model, instance.config.modules_to_save)
    if instance.config.modules_to_save != heads:
        instance.config = _with_heads(instance.config, heads)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad_(False)
    try:
        instance.inject(model)
        head_state = None if instance.handles_heads else HeadState.enable(model, heads)
    except BaseException:
        _restore_requires_grad(model, requires_grad)
        raise
    object.__setattr__(model, _ATTR, WrapState(instance, requires_grad, head_state, model_signature(model)))
    return model


def _with_heads(config: StrategyConfig, heads: tuple[str, ...]) -> StrategyConfig:
    # Record the resolved (full) head names so that save/load rebuilds exactly the same adapter.
    options = {**config.to_dict(), "modules_to_save": heads}
    return type(config).from_dict(options)


def _restore_requires_grad(model: nn.Module, requires_grad: dict[str, bool]) -> None:
    for name, param in model.named_parameters():
        if name in requires_grad:
            param.requires_grad_(requires_grad[name])


def _finish(model: nn.Module, result: nn.Module, state: WrapState) -> nn.Module:
    """Drop the wrap record and give back the user's ``requires_grad`` flags."""
    if _ATTR in vars(model):
        object.__delattr__(model, _ATTR)
    _restore_requires_grad(result, state.requires_grad)
    return result


def unwrap(model: nn.Module) -> nn.Module:
    """Remove every trace of petl: the original weights, classes and behaviour come back.

    Returns:
        The base model (the same object for in-place strategies).

    Raises:
        NotWrappedError: The model is not wrapped.
    """
    state = state_of(model)
    if state.heads is not None:
        state.heads.restore(model)
    return _finish(model, state.strategy.remove(model), state)


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and return a plain model.

    The merged model computes what the wrapped one did (within floating-point
    rounding) with no adapter modules left. Trained heads keep their trained values.

    Raises:
        NotWrappedError: The model is not wrapped.
        NotMergeableError: The strategy's adapter cannot be folded into weights
            (the model is left wrapped and unchanged).
    """
    state = state_of(model)
    return _finish(model, state.strategy.merge(model), state)
