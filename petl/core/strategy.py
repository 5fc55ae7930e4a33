"""The strategy protocol: what ``petl.wrap``, save/load, the trainer and the
benchmark need from a parameter-efficient tuning method.

A strategy is a class registered under a name (see :mod:`petl.core.registry`). It is
built from its config, injects itself into a model in place, and from then on is
reached only through the methods below, so that no module outside
``petl/strategies/`` needs to know which strategy it is driving.

Strategies may subclass :class:`StrategyBase` for the optional hooks' defaults;
any class with the same methods works as well.

A strategy that peft also implements may declare it, so that ``petl.load`` reads a
folder written by peft's ``save_pretrained`` (which has no ``petl_config.json``): it sets
``peft_type`` to the ``peft_type`` of peft's ``adapter_config.json`` (``"LORA"``) and
turns that file into its config with :meth:`StrategyBase.config_from_peft` (and, where
peft's tensors differ from its own, :meth:`StrategyBase.tensors_from_peft`).

Evaluation asks the strategy for :meth:`Strategy.merged_for_inference`: a block in which an
adapter that is a weight change (LoRA, AdaLoRA) is folded into the base weights, so that a
forward pass costs what the base model's costs, and after which the model is back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from petl.core.config import StrategyConfig
from petl.errors import CheckpointError, NotMergeableError, PetlError

__all__ = ["Strategy", "StrategyBase", "refuse_training"]


@runtime_checkable
class Strategy(Protocol):
    """What a registered strategy provides.

    Attributes:
        config_class: The :class:`StrategyConfig` subclass holding its options.
        handles_heads: ``True`` when the strategy trains and saves
            ``config.modules_to_save`` itself (LoRA does, through peft); otherwise
            ``petl.wrap`` does it for the strategy.
    """

    config_class: ClassVar[type[StrategyConfig]]
    handles_heads: ClassVar[bool]
    config: StrategyConfig

    def inject(self, model: nn.Module) -> None:
        """Add the adapter to ``model`` in place; only the adapter may require grad.

        The caller has already frozen every base parameter. Raise a ``PetlError``
        when the model cannot take the adapter. ``petl.wrap`` undoes whatever an
        ``inject`` that raises has changed in the module tree (modules, classes,
        attributes, hooks, ``requires_grad``, model configs) but clones no tensor, so
        ``inject`` must never change an existing tensor in place.
        """

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's tensors, keyed as the strategy will read them back."""

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy tensors produced by :meth:`adapter_state_dict` into the adapter."""

    def remove(self, model: nn.Module) -> nn.Module:
        """Undo :meth:`inject`: every module, hook and attribute it added goes."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the adapter into the base weights and remove it.

        Raises:
            NotMergeableError: The adapter cannot be expressed as a weight change.
        """

    def extra_files(self, model: nn.Module) -> dict[str, str]:
        """Extra text files (name -> content) to write next to the weights."""

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        """Called once by the trainer with the number of optimizer steps planned."""

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called by the trainer after every optimizer step, before gradients are zeroed.

        ``step`` counts optimizer steps from 1. AdaLoRA reallocates its rank budget here.
        """

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term the trainer adds to the task loss, or ``None``."""

    def training_state(self, model: nn.Module) -> Any:
        """State the strategy keeps outside its parameters (plain data and tensors) that a
        checkpoint must hold for an exact resume, or ``None``."""

    def load_training_state(self, model: nn.Module, state: Any) -> None:
        """Take back what :meth:`training_state` returned, when a run resumes."""

    def merged_for_inference(self, model: nn.Module) -> AbstractContextManager[bool]:
        """A block in which ``model`` runs with the adapter folded into its base weights.

        Yields ``True`` when the adapter is folded in: forward passes then cost what the base
        model's cost, and compute what the wrapped model computes up to float rounding (the
        merged weight ``W0 + delta`` is rounded once, in the weight's dtype). Yields ``False``
        when nothing changed: the strategy's adapter is no weight change (the default), or
        this model's adapter cannot be merged here (the strategy logs why). However the
        block is left (normally, by an exception or by ``KeyboardInterrupt``), the model is
        then back bit for bit: every weight, and the adapter active again. Nested blocks are
        safe; the inner one changes nothing.

        Only for inference: a merged adapter receives no gradient, so training inside the
        block would silently train nothing.

        Raises:
            PetlError: ``model`` is in training mode with gradients enabled, on entry or at
                a forward pass inside the block.
        """


class StrategyBase:
    """Defaults for the optional parts of :class:`Strategy`.

    Subclasses define ``config_class``, ``inject``, ``adapter_state_dict``,
    ``load_adapter_state_dict`` and ``remove``.
    """

    config_class: ClassVar[type[StrategyConfig]]
    handles_heads: ClassVar[bool] = False
    merge_refusal: ClassVar[str] = "its adapter is not a linear change of existing weights"
    """Completes the sentence "<name> cannot be merged because ..." raised by ``merge``."""
    peft_type: ClassVar[str | None] = None
    """The ``peft_type`` of the peft folders this strategy reads (``"LORA"``), or ``None``.
    Looked up by :func:`petl.core.registry.for_peft_type` on the class itself, not inherited,
    so that a subclass with other options does not claim its parent's folders by accident."""

    @classmethod
    def config_from_peft(cls, adapter_config: dict[str, Any], model: nn.Module) -> StrategyConfig:
        """This strategy's config for a folder written by peft, from its ``adapter_config.json``.

        Every peft option must be carried over or be one that does not change what the
        loaded model computes; any other one is refused, never dropped.

        Args:
            adapter_config: The parsed ``adapter_config.json``.
            model: The base model the adapter is about to be loaded onto (not changed).

        Raises:
            CheckpointError: peft's options have no equivalent here; the message names them.
        """
        raise CheckpointError(
            f"The {cls.config_class.strategy!r} strategy cannot read folders written by peft. "
            "Save the adapter with petl.save instead."
        )

    @classmethod
    def tensors_from_peft(cls, adapter_config: dict[str, Any],
                          tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """peft's saved tensors in the form :meth:`adapter_state_dict` gives them (unchanged by default)."""
        return tensors

    adapter_name: str = "default"
    """This adapter's name on its model: ``"default"`` for ``petl.wrap``, the name given to
    ``petl.add_adapter`` (set on the instance before :meth:`inject`). peft-based strategies
    use it as peft's adapter name, so that several of them share one model's layers."""

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def check_stack(self, model: nn.Module, others: Sequence[Any]) -> None:
        """Refuse to be added beside the adapters ``others`` already on ``model`` (see
        :mod:`petl.core.adapters`); called before :meth:`inject`, it changes no model.

        It may remember what it will share with them (LoRA joins their peft tuner). The
        default allows one adapter of this class per model.

        Raises:
            PetlError: The adapters cannot stack; the message says why.
        """
        same = [other for other in others if type(other) is type(self)]
        if same:
            raise PetlError(
                f"This model already carries a {self.config.strategy!r} adapter ({same[0].adapter_name!r}), and the "
                f"{self.config.strategy!r} strategy holds one adapter per model. Delete that one first "
                "(petl.delete_adapter), or use another strategy for the new adapter."
            )

    def set_active(self, model: nn.Module, active: bool, trainable: bool) -> None:
        """Switch the adapter on or off in place: an inactive adapter changes no output.

        Its parameters require grad when ``active and trainable``, and not otherwise.

        Raises:
            PetlError: The strategy cannot switch its adapter off (the default).
        """
        raise PetlError(
            f"The {self.config.strategy!r} strategy cannot switch its adapter on and off, which several adapters "
            "on one model and petl.disabled need. Keep a single adapter, or give the strategy a set_active method."
        )

    def merge(self, model: nn.Module) -> nn.Module:
        raise NotMergeableError(
            f"The {self.config.strategy!r} strategy cannot be merged because {self.merge_refusal}. "
            "Keep the model wrapped for inference, or save the adapter with petl.save(model, path) "
            "and load it with petl.load(base_model, path)."
        )

    def extra_files(self, model: nn.Module) -> dict[str, str]:
        return {}

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        return None

    def on_step_end(self, model: nn.Module, step: int) -> None:
        return None

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def training_state(self, model: nn.Module) -> Any:
        return None

    def load_training_state(self, model: nn.Module, state: Any) -> None:
        raise PetlError(
            f"The {self.config.strategy!r} strategy keeps no training state, but a checkpoint holds some. "
            "Resume with the strategy the run was started with."
        )

    @contextmanager
    def merged_for_inference(self, model: nn.Module) -> Iterator[bool]:
        """Changes nothing and yields ``False`` (after the same training-mode check as a merging one)."""
        refuse_training(model, self.config.strategy)
        yield False


def refuse_training(model: nn.Module, strategy: str) -> None:
    """Raise unless ``model`` is in eval mode or gradients are disabled: what
    :meth:`Strategy.merged_for_inference` requires.

    Raises:
        PetlError: ``model.training`` and ``torch.is_grad_enabled()`` both hold.
    """
    if model.training and torch.is_grad_enabled():
        raise PetlError(
            f"merged_for_inference of the {strategy!r} strategy needs a model in inference, but this "
            f"{type(model).__name__} is in training mode with gradients enabled. Inside the block the adapter "
            "is folded into the frozen base weights, so it would receive no gradient and training would "
            "silently change nothing. Call model.eval() or run under torch.no_grad() (petl.train's evaluation "
            "does both), and train outside the block."
        )
