"""A wrapped model trained by ``transformers.Trainer`` or a TRL trainer behaves as under ``petl.train``.

Saving needs nothing: ``petl.wrap`` gives the model a ``save_pretrained`` that writes
the adapter folder (see :mod:`petl.core.pretrained`), so ``Trainer.save_model`` and every
checkpoint hold the adapter, not the whole model. Two things need the one line
``petl.attach(trainer)``:

* **The strategy's training hooks.** :class:`PetlCallback` calls
  ``strategy.on_train_begin(model, max_steps)`` when training starts,
  ``strategy.on_step_end(model, step)`` after every optimizer step and before the
  gradients are zeroed (the Trainer's ``on_optimizer_step`` event), and adds
  ``strategy.regularization_loss(model)`` to the loss the model returns while it trains.
  AdaLoRA needs all three: without them its rank budget is never reallocated and it
  trains as fixed-rank LoRA. Its allocator state goes into every checkpoint
  (``petl_training_state.json`` and ``.safetensors``) and comes back on
  ``resume_from_checkpoint``, so a resumed run allocates as an uninterrupted one does.
* **Loading petl checkpoints.** The Trainer loads a checkpoint (``resume_from_checkpoint``,
  ``load_best_model_at_end``) as a whole model or as a ``PeftModel``'s adapter; a
  petl-wrapped model is neither. ``attach`` makes both load the adapter folder into the
  wrapped model in place (:func:`petl.core.io.load_weights`), checked and all-or-nothing.

The regulariser is added where the Trainer would add it: when the Trainer normalises
the loss by the number of label tokens of the whole accumulated batch (models that
take ``num_items_in_batch``), it no longer divides each micro-batch's loss by the
accumulation steps, so the term is divided by them (and by the number of processes
when ``average_tokens_across_devices`` multiplies the loss by it), to weigh the same
as under ``petl.train``.
"""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from petl.core.io import CONFIG_NAME, load_weights
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import CheckpointError, PetlError
from petl.files import atomic_write, atomic_write_text
from petl.training.checkpoint import decode_structure, encode_structure, strategy_state

__all__ = ["STATE_NAME", "PetlCallback", "attach"]

logger = logging.getLogger(__name__)

STATE_NAME = "petl_training_state"
"""Base name of the files a checkpoint holds the strategy's training state in."""


class PetlCallback(TrainerCallback):
    """Runs a wrapped model's strategy hooks under ``transformers.Trainer`` (and TRL's trainers).

    Added by :func:`attach`; add it yourself with ``callbacks=[petl.integrations.PetlCallback()]``
    when you only need the hooks. On a model that petl did not wrap it does nothing.
    """

    def __init__(self) -> None:
        self.resume_folder: Path | None = None
        """The checkpoint the Trainer is resuming from, set by :func:`attach`'s loader."""
        self._handle: Any = None
        self._args: Any = None

    # -- events ----------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       **kwargs: Any) -> None:
        if model is None or not is_wrapped(model):
            return
        strategy = state_of(model).strategy
        strategy.on_train_begin(model, int(state.max_steps))
        if self.resume_folder is not None:
            self._load_state(model, self.resume_folder)
            self.resume_folder = None
        self._remove_hook()
        self._args = args
        self._handle = model.register_forward_hook(self._add_regularization, with_kwargs=True)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                          **kwargs: Any) -> None:
        if model is not None and is_wrapped(model):
            # global_step counts the steps finished; this is the one that just stepped.
            state_of(model).strategy.on_step_end(model, int(state.global_step) + 1)

    def on_save(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None or not is_wrapped(model) or not args.should_save:
            return
        value = strategy_state(state_of(model).strategy, model)
        if value is None:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            logger.warning("petl: no checkpoint folder %s to store the strategy's training state in.", folder)
            return
        tensors: dict[str, torch.Tensor] = {}
        structure = encode_structure(value, tensors)
        atomic_write(folder / f"{STATE_NAME}.safetensors", lambda tmp: save_file(tensors, tmp))
        atomic_write_text(folder / f"{STATE_NAME}.json", json.dumps(structure) + "\n")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hook()

    # -- helpers ---------------------------------------------------------------------------------

    def _add_regularization(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                            output: Any) -> Any:
        if not module.training or not torch.is_grad_enabled() or not is_wrapped(module):
            return None
        loss = output.get("loss") if isinstance(output, dict) else None
        if loss is None:
            return None
        extra = state_of(module).strategy.regularization_loss(module)
        if extra is None:
            return None
        if kwargs.get("num_items_in_batch") is not None and self._args is not None:
            extra = extra / _loss_scale(self._args)
        output["loss"] = loss + extra
        return output

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _load_state(self, model: nn.Module, folder: Path) -> None:
        strategy = state_of(model).strategy
        json_path, tensors_path = folder / f"{STATE_NAME}.json", folder / f"{STATE_NAME}.safetensors"
        if not json_path.is_file():
            if strategy_state(strategy, model) is not None:
                logger.warning(
                    "petl: the checkpoint %s holds no training state of the %r strategy (it was not saved with "
                    "petl.attach); the run resumes with a fresh one.", folder, strategy.config.strategy)
            return
        try:
            tensors = load_file(tensors_path) if tensors_path.is_file() else {}
            value = decode_structure(json.loads(json_path.read_text(encoding="utf-8")), tensors)
        except (OSError, ValueError, PetlError) as exc:
            raise CheckpointError(
                f"The strategy's training state in {folder} is unreadable ({exc}). Delete that checkpoint to "
                "resume from an older one."
            ) from exc
        strategy.load_training_state(model, value)


def _loss_scale(args: Any) -> float:
    """How much the Trainer's loss handling weighs a micro-batch's loss, relative to petl.train's."""
    scale = float(args.gradient_accumulation_steps)
    if getattr(args, "average_tokens_across_devices", False):
        scale *= max(int(getattr(args, "world_size", 1)), 1)
    return scale


def attach(trainer: Any) -> Any:
    """Make ``trainer`` train, checkpoint and reload a petl-wrapped model correctly.

    Adds a :class:`PetlCallback` and lets the trainer's checkpoint loading
    (``train(resume_from_checkpoint=...)``, ``load_best_model_at_end``) read petl's
    adapter folders. Folders without ``petl_config.json`` still load the Trainer's way.
    Calling it twice is harmless.

    Args:
        trainer: A ``transformers.Trainer`` or a subclass (``trl.SFTTrainer``, ...) whose
            model is wrapped with ``petl.wrap`` or ``petl.load``.

    Returns:
        The same trainer.

    Raises:
        PetlError: ``trainer`` is not a Trainer, or its model is not wrapped by petl.
    """
    model = getattr(trainer, "model", None)
    if not callable(getattr(trainer, "add_callback", None)) or not isinstance(model, nn.Module):
        raise PetlError(
            f"petl.attach expects a transformers.Trainer (or a TRL trainer), got {type(trainer).__name__}."
        )
    if not is_wrapped(model):
        raise PetlError(
            f"The trainer's {type(model).__name__} is not wrapped by petl. Pass petl.wrap(model, ...) as the "
            "trainer's model, then call petl.attach(trainer)."
        )
    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, PetlCallback)), None)
    if callback is None:
        callback = PetlCallback()
        trainer.add_callback(callback)
    if not getattr(trainer, "_petl_attached", False):
        _patch_loading(trainer, callback)
    return trainer


def _is_petl_folder(folder: Any) -> bool:
    return folder is not None and os.path.isfile(os.path.join(str(folder), CONFIG_NAME))


def _patch_loading(trainer: Any, callback: PetlCallback) -> None:
    load_checkpoint, load_best = trainer._load_from_checkpoint, trainer._load_best_model

    def _load_from_checkpoint(self: Any, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not _is_petl_folder(resume_from_checkpoint):
            return load_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading the petl adapter from %s.", resume_from_checkpoint)
        load_weights(self.model, resume_from_checkpoint)
        callback.resume_folder = Path(resume_from_checkpoint)
        return None

    def _load_best_model(self: Any) -> None:
        best = self.state.best_model_checkpoint
        if not _is_petl_folder(best):
            return load_best()
        logger.info("Loading the best petl adapter from %s (score: %s).", best, self.state.best_metric)
        load_weights(self.model, best)
        return None

    trainer._load_from_checkpoint = types.MethodType(_load_from_checkpoint, trainer)
    trainer._load_best_model = types.MethodType(_load_best_model, trainer)
    trainer._petl_attached = True
