"""Several named adapters on one model: add, list, activate, switch off, delete.

    petl.wrap(model, "bottleneck")                       # an adapter named "default"
    petl.add_adapter(model, "style", "lora", r=4)        # a second one, of any strategy
    petl.set_active(model, ["default", "style"])         # both applied (stacked)
    with petl.disabled(model):                           # the base model, exactly
        ...
    petl.save(model, "style/", adapter="style")          # the same folder a single save writes
    petl.delete_adapter(model, "style")                  # as if it had never been added

An adapter is *active* when it changes the model's outputs, and *trainable* when, being
active, its parameters require grad; an inactive adapter is frozen, so the trainer (which
trains what requires grad) trains only the active ones. Each strategy switches its own
adapter through the optional hook :meth:`~petl.core.strategy.StrategyBase.set_active`, and
says through :meth:`~petl.core.strategy.StrategyBase.check_stack` whether it can sit beside
the others (two LoRA adapters share peft's layers under their own peft names; a second
bottleneck or prefix adapter is refused). A head trained in full (``modules_to_save``)
belongs to one adapter: while that adapter is inactive the head holds its original values,
as peft's ``ModulesToSaveWrapper`` does.

Once a model holds more than one adapter (or any of these verbs has been used on it), its
:class:`~petl.core.wrapping.WrapState` drives a :class:`Stack`: a strategy that hands the
trainer's hooks to the active, trainable adapters, so the trainer needs no change.

Every verb is a transaction like ``petl.wrap``: names and options are checked before the
model is touched, and on failure the model is left as it was (a
:class:`~petl.core.wrapping.Snapshot`, and the activation flags put back).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.core.config import StrategyConfig
from petl.core.heads import HeadState, resolve_heads
from petl.core.stack import DEFAULT, Adapter, Stack
from petl.core.stack import apply as _apply
from petl.core.stack import drop as _drop
from petl.core.stack import entry_of as _entry
from petl.core.stack import flags_of as _flags
from petl.core.stack import set_flags as _set_flags
from petl.core.stack import stack_of as _stack
from petl.core.wrapping import (
    Snapshot,
    _attach,
    _build,
    _describe,
    _interrupts_deferred,
    _with_heads,
    is_wrapped,
    state_of,
    unwrap,
)
from petl.errors import (
    CheckpointError,
    ConfigError,
    PetlError,
    TargetNotFoundError,
    UnsupportedModelError,
    suggest,
)

__all__ = ["Adapter", "AdapterInfo", "Stack", "add_adapter", "adapters", "delete_adapter", "disabled",
           "load_adapter", "part", "set_active"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class AdapterInfo:
    """What :func:`adapters` lists for one adapter."""

    name: str
    strategy: str
    active: bool
    trainable: bool
    """Whether its parameters require grad while it is active."""


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"An adapter name must be a word of letters, digits, '_' or '-' (at most 64, not starting "
                          f"with a digit or '-'), such as 'sentiment'; got {name!r}.")


def _switch(model: nn.Module, stack: Stack, flags: dict[str, tuple[bool, bool]]) -> None:
    """Apply the new switches; if that fails, the old ones (``flags``) come back."""
    try:
        with _interrupts_deferred():
            _apply(model, stack)
    except BaseException:
        with _interrupts_deferred():
            _set_flags(stack, flags)
            _apply(model, stack)
        raise


def _heads_for(model: nn.Module, config: StrategyConfig, stack: Stack) -> tuple[str, ...]:
    """The heads a new adapter trains: those asked for, or the fresh ones no other adapter trains yet."""
    claimed = {head: e.name for e in stack.entries.values() for head in (e.strategy.config.modules_to_save or ())}
    if config.modules_to_save is None:
        return tuple(head for head in resolve_heads(model, None) if head not in claimed)
    heads = resolve_heads(model, config.modules_to_save)
    taken = [head for head in heads if head in claimed]
    if taken:
        raise ConfigError(
            f"modules_to_save={list(config.modules_to_save)} names {taken}, which the adapter {claimed[taken[0]]!r} "
            "already trains in full; a head belongs to one adapter. Leave it out of modules_to_save."
        )
    return heads


def add_adapter(model: nn.Module, name: str, strategy: str | StrategyConfig, /, **options: Any) -> nn.Module:
    """Add a named adapter to ``model`` (wrapped or not), active beside the active ones, and trainable.

    Args:
        model: A model, plain (then this is ``petl.wrap`` with a name) or already carrying adapters.
        name: The new adapter's name: letters, digits, ``_`` and ``-``.
        strategy: A strategy name or config, as for :func:`petl.wrap`.
        **options: The strategy's options when ``strategy`` is a name.

    Returns:
        The same model.

    Raises:
        ConfigError: The name is invalid or taken, an option is invalid, or a head it should
            train already belongs to another adapter.
        PetlError: The strategy cannot stack with the adapters already there (the message says
            why), or cannot switch adapters on and off.
        UnsupportedModelError: The strategy failed on this model; the model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise PetlError(f"petl.add_adapter expects a torch.nn.Module, got {type(model).__name__}.")
    _check_name(name)
    instance = _build(strategy, options)
    instance.adapter_name = name
    if not is_wrapped(model):
        return _attach(model, instance)
    stack = _stack(model)
    if name in stack.entries:
        raise ConfigError(f"This model already has an adapter named {name!r}. Choose another name, or delete it "
                          "first with petl.delete_adapter(model, name).")
    heads = _heads_for(model, instance.config, stack)
    if instance.config.modules_to_save != heads:
        instance.config = _with_heads(instance.config, heads)
    instance.check_stack(model, [entry.strategy for entry in stack.entries.values()])
    snapshot, flags, injected = Snapshot(model), _flags(stack), False
    try:
        instance.inject(model)
        injected = True
        head_state = None if instance.handles_heads else HeadState.enable(model, heads)
        stack.entries[name] = Adapter(name, instance, head_state)
        _apply(model, stack)
    except BaseException as exc:
        with _interrupts_deferred():
            stack.entries.pop(name, None)
            if injected:
                try:
                    instance.remove(model)  # what the strategy shares outside the model (peft's tuner)
                except Exception:  # noqa: BLE001 - the snapshot puts the modules back anyway
                    pass
            snapshot.restore()
            _set_flags(stack, flags)
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):
            raise
        raise UnsupportedModelError(
            f"The {instance.config.strategy!r} adapter {name!r} could not be added to this {type(model).__name__}: "
            f"{_describe(exc)}. The model was left as it was."
        ) from exc
    return model


def adapters(model: nn.Module) -> list[AdapterInfo]:
    """The adapters of ``model`` in the order they were added (empty for a plain model)."""
    if not is_wrapped(model):
        return []
    state = state_of(model)
    if not isinstance(state.strategy, Stack):
        return [AdapterInfo(getattr(state.strategy, "adapter_name", DEFAULT), state.strategy.config.strategy,
                            True, True)]
    return [AdapterInfo(e.name, e.strategy.config.strategy, e.active, e.trainable)
            for e in state.strategy.entries.values()]


def set_active(model: nn.Module, names: str | Sequence[str], *, trainable: bool | None = None) -> nn.Module:
    """Make exactly the adapters ``names`` active (several are applied together; ``[]``: none).

    Args:
        model: A model carrying adapters.
        names: One adapter name or several.
        trainable: Whether the named adapters' parameters require grad; ``None`` keeps each
            adapter's setting (``True`` unless it was loaded for inference).

    Raises:
        NotWrappedError: The model carries no adapter.
        ConfigError: A name is unknown (the message suggests the nearest).
    """
    stack = _stack(model)
    wanted = [names] if isinstance(names, str) else list(names)
    for name in wanted:
        _entry(stack, name)
    flags = _flags(stack)
    for entry in stack.entries.values():
        entry.active = entry.name in wanted
        if trainable is not None and entry.active:
            entry.trainable = trainable
    _switch(model, stack, flags)
    return model


@contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """A block in which no adapter is active: the model computes what its base model computes.

    However the block is left (normally, by an exception, by Ctrl-C), the adapters that
    were active are active again, with the same ``requires_grad`` flags.

    Raises:
        NotWrappedError: The model carries no adapter.
    """
    stack = _stack(model)
    flags = _flags(stack)
    for entry in stack.entries.values():
        entry.active = False
    _switch(model, stack, flags)
    try:
        yield model
    finally:
        with _interrupts_deferred():
            _set_flags(stack, flags)
            _apply(model, stack)


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove the adapter ``name``: the model is then as it would be had it never been added.

    Deleting the last adapter is :func:`petl.unwrap`, and returns the base model.

    Raises:
        NotWrappedError: The model carries no adapter.
        ConfigError: No adapter has this name (the message suggests the nearest).
    """
    stack = _stack(model)
    entry = _entry(stack, name)
    if len(stack.entries) == 1:
        return unwrap(model)
    snapshot, before = Snapshot(model), dict(stack.entries)
    try:
        with _interrupts_deferred():
            _drop(model, entry)
            del stack.entries[name]
            _apply(model, stack)
    except BaseException as exc:
        stack.entries.clear()
        stack.entries.update(before)
        snapshot.restore()
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):
            raise
        raise UnsupportedModelError(f"The adapter {name!r} could not be deleted: {_describe(exc)}.") from exc
    return model


def part(model: nn.Module, name: str | None) -> tuple[Any, dict[str, torch.Tensor]]:
    """The strategy of the adapter ``name`` (``None``: the only one) and its trained heads' tensors.

    Raises:
        NotWrappedError: The model carries no adapter.
        ConfigError: No adapter has this name.
        PetlError: ``name`` is ``None`` and the model carries several adapters.
    """
    state = state_of(model)
    if not isinstance(state.strategy, Stack):
        own = getattr(state.strategy, "adapter_name", DEFAULT)
        if name is not None and name != own:
            raise ConfigError(f"This model has no adapter named {name!r}; it has [{own!r}].{suggest(name, [own])}")
        return state.strategy, (state.heads.state_dict(model) if state.heads is not None else {})
    entry = state.strategy._single("saving") if name is None else _entry(state.strategy, name)
    return entry.strategy, entry.head_tensors(model)


def load_adapter(model: nn.Module, path: str | Path, name: str, *, trainable: bool = False) -> nn.Module:
    """``petl.load(model, path, adapter=name)``: add the adapter saved at ``path`` under ``name``.

    It is active beside the active ones and, unless ``trainable``, frozen (for inference,
    as peft's ``load_adapter``). On any failure the model is left as it was.

    Raises:
        CheckpointError: The folder is missing, corrupted or for another model.
        ConfigError: The name is invalid or taken.
    """
    from petl.core import io  # lazy: io builds on this module

    _check_name(name)
    if is_wrapped(model) and name in [info.name for info in adapters(model)]:
        raise ConfigError(f"This model already has an adapter named {name!r}. Load it under another name, or "
                          "delete it first with petl.delete_adapter(model, name).")
    folder = Path(path)
    config, weights = io._read_folder(model, folder)
    snapshot = Snapshot(model)
    try:
        add_adapter(model, name, config)
    except TargetNotFoundError as exc:
        raise CheckpointError(f"The adapter in {folder} does not fit this {type(model).__name__}: {exc} "
                              "Load it onto the base model it was trained on. The model was left as it was.") from exc
    try:
        expected = io.adapter_tensors(model, name)
        io.check_state_dict(expected, weights, source=f"The adapter in {folder}",
                            fix="Load it onto the same base model it was trained on.")
        strategy, heads = part(model, name)
        with torch.no_grad():
            for key in heads:
                expected[key].copy_(weights[key])
        strategy.load_adapter_state_dict(model, {k: v for k, v in weights.items() if k not in heads})
        stack = _stack(model)
        stack.entries[name].trainable = trainable
        _apply(model, stack)
    except BaseException as exc:
        with _interrupts_deferred():
            try:
                delete_adapter(model, name)
            except Exception:  # noqa: BLE001 - the snapshot puts the modules back anyway
                pass
            snapshot.restore()
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):
            raise
        raise CheckpointError(f"The adapter in {folder} could not be loaded into this {type(model).__name__}: "
                              f"{_describe(exc)}. The model was left as it was.") from exc
    return model
