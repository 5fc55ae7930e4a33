"""One training step, written once: the trainer, the benchmark's step timing and the
step-time scripts in ``benchmarks/`` all take it through this module.

    loss = task_loss(batch) + R(model)         (R: the strategy's regulariser, if any)
    backward(loss)
    clip the global gradient norm to max_grad_norm
    optimizer.step(); strategy.on_step_end(model, t); zero_grad()   (then the scheduler steps)

:func:`training_loss` and :func:`finish_step` are the two halves the trainer calls
around Accelerate's ``backward`` and gradient accumulation; :class:`StepRunner`
puts them together, with the trainer's optimizer and precision, for code that
takes single steps outside the trainer (timing loops).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from petl.core.wrapping import is_wrapped, state_of
from petl.errors import PetlError
from petl.training.config import TrainConfig, default_learning_rate

__all__ = ["StepRunner", "autocast_for", "build_optimizer", "finish_step", "training_loss"]


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; weight decay on matrices only (not biases or norms)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [g for g in ({"params": decay, "weight_decay": config.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb  # lazy: optional heavy import

        return bnb.optim.AdamW8bit(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def training_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], strategy: Any, unwrapped: nn.Module,
    token_scale: float | None = None, task: str | None = None,
) -> torch.Tensor:
    """The task loss of ``batch`` plus the strategy's regulariser.

    Args:
        model: The model to run (a DDP wrapper under data parallelism).
        batch: Model inputs with ``labels``.
        strategy: The model's strategy, or ``None`` under full fine-tuning.
        unwrapped: The user's model, which the strategy's hooks see.
        token_scale: With ``TrainConfig.token_weighted_loss``, the mean labelled tokens per
            training example: the task loss (a mean over the batch's labelled tokens) is multiplied
            by ``labelled tokens / (token_scale * examples)``, its share of an average batch.
        task: The task (needed with ``token_scale``: causal LM does not count its first position).

    Raises:
        PetlError: The model returned no loss (the batch has no labels).
    """
    loss = model(**batch).loss
    if loss is None:
        raise PetlError(
            f"The {type(unwrapped).__name__} returned no loss: its batches need `labels`. "
            "Check that the data's collator returns labels for this task."
        )
    if token_scale is not None:
        from petl.training.sampling import labelled_tokens

        labels = batch["labels"]
        loss = loss * (labelled_tokens(labels, task or "") / (token_scale * labels.shape[0]))
    if strategy is not None:
        extra = strategy.regularization_loss(unwrapped)
        if extra is not None:
            loss = loss + extra
    return loss


def finish_step(optimizer: Any, strategy: Any, unwrapped: nn.Module, step: int) -> None:
    """Apply the (already clipped) gradients as optimizer step ``step`` (counted from 1).

    The strategy's ``on_step_end`` runs after ``optimizer.step()`` and before the
    gradients are zeroed: AdaLoRA reads them there to reallocate its rank budget.
    """
    optimizer.step()
    if strategy is not None:
        strategy.on_step_end(unwrapped, step)
    optimizer.zero_grad(set_to_none=True)


def autocast_for(device: torch.device, mixed_precision: str) -> Callable[[], Any]:
    """A factory of the autocast context of ``mixed_precision`` (``"no"``: no autocast)."""
    if mixed_precision == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class StepRunner:
    """Optimizer steps on one model as :func:`petl.train` takes them, without the trainer's
    data loading, scheduler or bookkeeping (for timing loops).

    Args:
        model: A wrapped model (its adapter trains) or a plain one (trained in full),
            already on its device and in train mode.
        config: The trainer's options; ``learning_rate``, ``weight_decay``, ``optimizer``,
            ``mixed_precision`` and ``max_grad_norm`` apply.
        total_steps: The run's planned length, for strategies that schedule (AdaLoRA).
        device: Where the batches live, for autocast.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, *, total_steps: int,
                 device: torch.device | str = "cpu") -> None:
        self.model = model
        self.config = config
        self.strategy = state_of(model).strategy if is_wrapped(model) else None
        lr = config.learning_rate
        if lr is None:
            lr = default_learning_rate(self.strategy is not None)
        self.optimizer = build_optimizer(model, config, lr)
        self.autocast = autocast_for(torch.device(device), config.mixed_precision)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.step = 0
        if self.strategy is not None:
            self.strategy.on_train_begin(model, total_steps)

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        """Take one optimizer step on ``batch``; returns its loss."""
        with self.autocast():
            loss = training_loss(self.model, batch, self.strategy, self.model)
        loss.backward()
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.step += 1
        finish_step(self.optimizer, self.strategy, self.model, self.step)
        return float(loss.detach())
