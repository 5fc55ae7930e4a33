"""``wrap``, ``unwrap`` and ``merge``: putting a strategy into a model and taking it out.

``wrap`` freezes the model, lets the strategy inject itself in place and keeps an
explicit record of what it did on the model (``model._petl``), so that ``unwrap``
can give back exactly the model the user passed in: the same weights, the same
``requires_grad`` flags, the same module classes and behaviour.

``wrap`` (and ``petl.load``) are transactions. A :class:`Snapshot` taken before the
strategy touches the model records, for every module, its attributes (with the
contents of its parameter, buffer, child-module and hook dictionaries) and its class,
each parameter's ``requires_grad``, and the attributes of every transformers config
the modules hold. Whatever the strategy raises, :meth:`Snapshot.restore` puts all of
it back, so the model is as it was: no adapter layer, hook, attribute or flag left
behind. No tensor is copied (a model may have billions of parameters), which is why
a strategy must never change an existing tensor in place while it injects itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from petl.core import pretrained, registry
from petl.core.config import StrategyConfig
from petl.core.heads import HeadState, resolve_heads
from petl.core.strategy import Strategy
from petl.errors import AlreadyWrappedError, ConfigError, NotWrappedError, PetlError, UnsupportedModelError
from petl.modeling.configs import model_configs
from petl.tasks import task_of_model

__all__ = ["Snapshot", "WrapState", "is_wrapped", "merge", "model_signature", "state_of", "unwrap", "wrap"]

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
        "task": task_of_model(model),
    }


class _Frozen:
    """One object's ``vars()`` and class, with the contents of its dict, list and set attributes."""

    __slots__ = ("attrs", "cls", "containers", "obj")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.cls = type(obj)
        self.attrs = dict(vars(obj))
        # Restored in place: a hook's RemovableHandle holds a reference to the very dict it lives in.
        self.containers = [(value, _contents(value)) for value in self.attrs.values()
                           if isinstance(value, (dict, list, set))]

    def restore(self) -> None:
        for container, contents in self.containers:
            if isinstance(container, list):
                container[:] = contents
            else:
                container.clear()
                container.update(contents)
        attrs = vars(self.obj)
        attrs.clear()
        attrs.update(self.attrs)
        if type(self.obj) is not self.cls:
            self.obj.__class__ = self.cls


def _contents(value: dict[Any, Any] | list[Any] | set[Any]) -> Any:
    return list(value) if isinstance(value, list) else value.copy() if isinstance(value, set) else dict(value)


class Snapshot:
    """The state of a model that a strategy's ``inject`` may change, to put back on failure.

    It records, for every module of ``model``, its attributes (``vars(module)``) with
    the contents of its dict, list and set attributes (``_modules``, ``_parameters``,
    ``_buffers``, every hook dictionary), its class, each parameter's ``requires_grad``,
    and the attributes of every transformers ``PretrainedConfig`` a module holds as
    ``.config`` (and of the configs inside those). It copies no tensor, so it is cheap
    for any model size, and it cannot undo a change made to a tensor in place.

    Args:
        model: The model about to be changed.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        modules = list(model.modules())
        self.wrapped = _ATTR in vars(model)
        self.requires_grad = [(param, param.requires_grad) for param in model.parameters()]
        configs = model_configs(modules, nested=True)
        self.objects = [_Frozen(module) for module in modules] + [_Frozen(config) for config in configs]

    def restore(self) -> None:
        """Put the model back as it was when the snapshot was taken.

        Heads that petl started training since then get their original values back, and
        a Ctrl-C that arrives meanwhile is raised once the model is whole again.
        """
        with _interrupts_deferred():
            state = vars(self.model).get(_ATTR)
            if not self.wrapped and isinstance(state, WrapState) and state.heads is not None:
                state.heads.restore(self.model)  # petl.load copies saved head values in place
            for frozen in self.objects:
                frozen.restore()
            for param, requires_grad in self.requires_grad:
                param.requires_grad_(requires_grad)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT until the block is done, then deliver it (only the main thread gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler installed outside Python, which could not be put back
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            else:
                signal.raise_signal(signal.SIGINT)


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

    ``wrap`` is a transaction: if the strategy fails part way, whatever it raises, the
    model is put back exactly as it was (modules, classes, hooks, attributes,
    ``requires_grad`` flags and the transformers configs' attributes; see
    :class:`Snapshot`). The options are checked before the model is touched. A strategy
    (a plugin's too) must therefore add modules, hooks and attributes, but never change
    an existing tensor in place during ``inject``: tensors are not copied for the undo.

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
        UnsupportedModelError: The strategy failed on this model with an error that is
            not a ``PetlError`` (from peft, transformers or torch); the message names it.
        KeyboardInterrupt: Interrupted; the model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise PetlError(f"petl.wrap expects a torch.nn.Module, got {type(model).__name__}.")
    if is_wrapped(model):
        raise AlreadyWrappedError(
            f"This {type(model).__name__} is already wrapped with the "
            f"{state_of(model).strategy.config.strategy!r} strategy. "
            "Call petl.unwrap(model) (or petl.merge(model)) before wrapping it again."
        )
    return _attach(model, _build(strategy, options))


def _attach(model: nn.Module, instance: Strategy) -> nn.Module:
    """``wrap`` once the strategy is built (``petl.add_adapter`` names it first)."""
    heads = resolve_heads(model, instance.config.modules_to_save)
    if instance.config.modules_to_save != heads:
        instance.config = _with_heads(instance.config, heads)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    snapshot = Snapshot(model)
    try:
        for param in model.parameters():
            param.requires_grad_(False)
        instance.inject(model)
        head_state = None if instance.handles_heads else HeadState.enable(model, heads)
        object.__setattr__(model, _ATTR, WrapState(instance, requires_grad, head_state, model_signature(model)))
        pretrained.install(model)  # save_pretrained (Trainer, TRL) writes the adapter folder
    except BaseException as exc:
        snapshot.restore()
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
            raise
        raise UnsupportedModelError(
            f"The {instance.config.strategy!r} strategy could not be added to this {type(model).__name__}: "
            f"{_describe(exc)}. The model was left as it was. If the options are right for this model, "
            "this is a bug in petl or in a library under it (peft, transformers); please report it "
            "with this message."
        ) from exc
    return model


def _describe(exc: BaseException) -> str:
    """``Type: message``, or just the type for an exception without a message (a bare ``assert``)."""
    text = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)"


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
    pretrained.uninstall(model)
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


def merge(model: nn.Module, *, dequantize: bool = False) -> nn.Module:
    """Fold the adapter into the base weights and return a plain model.

    The merged model computes what the wrapped one did (within floating-point
    rounding) with no adapter modules left. Trained heads keep their trained values.

    A quantized base (bitsandbytes 4-bit or 8-bit layers) is refused, since re-quantizing
    ``W + delta`` would change the outputs; ``dequantize=True`` replaces its quantized
    layers by full-precision ones first and merges there, with a warning (see
    :mod:`petl.core.quantized`).

    Raises:
        NotWrappedError: The model is not wrapped.
        NotMergeableError: The strategy's adapter cannot be folded into weights, or the
            base is quantized and ``dequantize`` is false (the model is left wrapped and
            unchanged).
    """
    from petl.core import quantized  # lazy: it builds on this module

    state = state_of(model)
    if dequantize and quantized.quantized_linear_names(model):
        return quantized.merge_dequantized(model)
    quantized.refuse_quantized(model, state)
    return _finish(model, state.strategy.merge(model), state)
