"""The record of a model's named adapters, and the strategy that drives them (:class:`Stack`).

:mod:`petl.core.adapters` holds the verbs (add, activate, disable, delete); this module
holds what they share: one :class:`Adapter` per name with its switches, the :class:`Stack`
that a model's :class:`~petl.core.wrapping.WrapState` drives once it has named adapters (the
protocol over all of them: the trainer's hooks go to the active, trainable ones), and
:func:`apply`, which makes the model follow every adapter's switches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from petl.core.heads import HeadState
from petl.core.strategy import refuse_training
from petl.core.wrapping import state_of
from petl.errors import ConfigError, NotMergeableError, PetlError, suggest

__all__ = ["DEFAULT", "Adapter", "Stack", "apply", "drop", "entry_of", "flags_of", "set_flags", "stack_of"]

DEFAULT = "default"


@dataclass
class Adapter:
    """One named adapter of a model and its switches."""

    name: str
    strategy: Any
    heads: HeadState | None
    """Heads petl trains for it in full (``None`` when the strategy trains them itself)."""
    active: bool = True
    trainable: bool = True
    aside: dict[str, torch.Tensor] | None = None
    """The heads' trained values while the adapter is inactive (the heads then hold their originals)."""

    def head_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained values of the heads petl trains for this adapter, by full name."""
        if self.heads is None:
            return {}
        return dict(self.aside) if self.aside is not None else self.heads.state_dict(model)


class _StackConfig:
    """What a training checkpoint records of several adapters: each one's strategy, options and switches."""

    def __init__(self, entries: Sequence[Adapter]) -> None:
        self.strategy = "+".join(entry.strategy.config.strategy for entry in entries)
        self.modules_to_save = tuple(h for e in entries for h in (e.strategy.config.modules_to_save or ()))
        self._record = {e.name: {"strategy": e.strategy.config.strategy, "active": e.active,
                                 "trainable": e.trainable, **e.strategy.config.to_dict()} for e in entries}

    def to_dict(self) -> dict[str, Any]:
        return dict(self._record)


class Stack:
    """The strategy of a model holding named adapters: the protocol over all of them.

    The trainer's hooks go to the active, trainable adapters; with a single adapter
    everything goes to it, so such a model saves, merges and resumes as before.
    """

    handles_heads = True

    def __init__(self, entries: dict[str, Adapter]) -> None:
        self.entries = entries

    @property
    def config(self) -> Any:
        """The single adapter's config, or a record of every adapter's."""
        only = self._only()
        return only.strategy.config if only is not None else _StackConfig(list(self.entries.values()))

    def _only(self) -> Adapter | None:
        return next(iter(self.entries.values())) if len(self.entries) == 1 else None

    def _single(self, what: str) -> Adapter:
        only = self._only()
        if only is None:
            raise PetlError(f"This model carries {len(self.entries)} adapters ({', '.join(self.entries)}), so {what} "
                            "needs to be told which one: pass adapter=NAME.")
        return only

    def _training(self) -> list[Adapter]:
        return [entry for entry in self.entries.values() if entry.active and entry.trainable]

    def inject(self, model: nn.Module) -> None:
        raise PetlError("A Stack is not injected; add adapters with petl.add_adapter(model, name, strategy).")

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        entry = self._single("saving")
        return {**entry.strategy.adapter_state_dict(model), **entry.head_tensors(model)}

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        entry = self._single("loading")
        heads = entry.head_tensors(model)
        with torch.no_grad():
            for key, target in heads.items():
                target.copy_(state_dict[key])
        entry.strategy.load_adapter_state_dict(model, {k: v for k, v in state_dict.items() if k not in heads})

    def remove(self, model: nn.Module) -> nn.Module:
        for entry in reversed(list(self.entries.values())):
            drop(model, entry)
        self.entries.clear()
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        only = self._only()
        if only is None or not only.active:
            raise NotMergeableError(
                f"This model carries {len(self.entries)} adapters ({', '.join(self.entries)}), active: "
                f"{[e.name for e in self.entries.values() if e.active]}; petl.merge folds in a single active adapter. "
                "Delete the others first (petl.delete_adapter), or save each one by name."
            )
        return only.strategy.merge(model)

    def extra_files(self, model: nn.Module) -> dict[str, str]:
        return self._single("saving").strategy.extra_files(model)

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        for entry in self._training():
            entry.strategy.on_train_begin(model, total_steps)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        for entry in self._training():
            entry.strategy.on_step_end(model, step)

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        terms = [t for t in (e.strategy.regularization_loss(model) for e in self._training()) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def training_state(self, model: nn.Module) -> Any:
        only = self._only()
        if only is not None:
            return only.strategy.training_state(model)
        states = {e.name: e.strategy.training_state(model) for e in self.entries.values()}
        return {name: state for name, state in states.items() if state is not None} or None

    def load_training_state(self, model: nn.Module, state: Any) -> None:
        only = self._only()
        if only is not None:
            return only.strategy.load_training_state(model, state)
        for name, value in state.items():
            entry_of(self, name).strategy.load_training_state(model, value)
        return None

    def merged_for_inference(self, model: nn.Module) -> Any:
        active = [entry for entry in self.entries.values() if entry.active]
        if len(active) == 1:
            return active[0].strategy.merged_for_inference(model)
        return _unmerged(model, self.config.strategy)


@contextmanager
def _unmerged(model: nn.Module, strategy: str) -> Iterator[bool]:
    refuse_training(model, strategy)
    yield False


def stack_of(model: nn.Module) -> Stack:
    """The model's :class:`Stack`, made from its single adapter on first use."""
    state = state_of(model)
    if not isinstance(state.strategy, Stack):
        name = getattr(state.strategy, "adapter_name", DEFAULT)
        state.strategy, state.heads = Stack({name: Adapter(name, state.strategy, state.heads)}), None
    return state.strategy


def entry_of(stack: Stack, name: Any) -> Adapter:
    if not isinstance(name, str) or name not in stack.entries:
        raise ConfigError(f"This model has no adapter named {name!r}; it has {list(stack.entries)}."
                          f"{suggest(str(name), stack.entries)}")
    return stack.entries[name]


def flags_of(stack: Stack) -> dict[str, tuple[bool, bool]]:
    return {name: (entry.active, entry.trainable) for name, entry in stack.entries.items()}


def set_flags(stack: Stack, flags: dict[str, tuple[bool, bool]]) -> None:
    for name, (active, trainable) in flags.items():
        if name in stack.entries:
            stack.entries[name].active, stack.entries[name].trainable = active, trainable


def apply(model: nn.Module, stack: Stack) -> None:
    """Make the model follow every adapter's switches (strategies' layers, heads, ``requires_grad``)."""
    for entry in stack.entries.values():
        entry.strategy.set_active(model, entry.active, entry.trainable)
        if entry.heads is None:
            continue
        params = entry.heads.parameters(model)
        with torch.no_grad():
            if entry.active and entry.aside is not None:
                for key, value in entry.aside.items():
                    params[key].copy_(value)
                entry.aside = None
            elif not entry.active and entry.aside is None:
                entry.aside = {key: param.detach().clone() for key, param in params.items()}
                for key, value in entry.heads.originals.items():
                    params[key].copy_(value)
        for param in params.values():
            param.requires_grad_(entry.active and entry.trainable)


def drop(model: nn.Module, entry: Adapter) -> None:
    """Take one adapter out: its heads get their original values back, then the strategy removes itself."""
    if entry.heads is not None:
        if entry.aside is None:
            entry.heads.restore(model)
        for param in entry.heads.parameters(model).values():
            param.requires_grad_(False)  # a frozen base parameter again
    entry.strategy.remove(model)
