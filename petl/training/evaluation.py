"""Evaluation during training: the loss over the evaluation set, the task's metrics,
and the bookkeeping behind early stopping and the best adapter.

The evaluation loss is the mean cross-entropy over every labelled position of the
evaluation set (not the mean of per-batch means, which would weigh short batches
more), and language-modelling tasks also report its exponential:

    eval_loss = sum_i sum_{t in labelled(i)} -log p(y_it | x_i) / sum_i |labelled(i)|
    eval_perplexity = exp(eval_loss)

For causal LM the logits at position t predict the label at t + 1 (labels are the
input ids with unlabelled positions set to -100; the shift happens here, as inside
Hugging Face models). Sequence classification with a single output is regression
and uses the squared error instead. Question answering has one loss per window,
``(CE(start logits, start) + CE(end logits, end)) / 2`` over the window's own tokens
(padding is masked out, so the value does not depend on how windows are batched), and its
evaluator receives the start and end logits stacked as ``(batch, length, 2)``.

With ``merged=True`` (``TrainConfig.merged_eval``, on by default) the loop runs inside the
strategy's :meth:`~petl.core.strategy.Strategy.merged_for_inference`: a LoRA-family adapter
is folded into the base weights for the evaluation, so it costs what the base model costs,
and the weights are put back bit for bit afterwards, even when evaluation fails or is
interrupted. The metrics are the same up to float rounding.

Under data parallelism each process evaluates its shard and the per-example sums
and logits are gathered with Accelerate's ``gather_for_metrics``, which drops the
examples repeated to give every process the same number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petl.core.wrapping import is_wrapped, state_of
from petl.errors import ConfigError, suggest
from petl.metrics import TaskEvaluator, perplexity
from petl.tasks import DEFAULT_METRIC, IGNORE_INDEX, LM_TASKS

__all__ = [
    "BestTracker",
    "EvaluatorFactory",
    "check_metric_name",
    "evaluate",
    "example_losses",
    "inference_weights",
    "lower_is_better",
    "metric_key",
    "resolve_metric",
]


def example_losses(task: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's summed loss and its number of labelled positions.

    Args:
        task: One of :data:`petl.tasks.TASKS`.
        logits: The model's logits, ``(batch, classes)`` or ``(batch, length, vocab)``.
        labels: The batch's labels, ``-100`` where nothing is to be predicted.

    Returns:
        Two float tensors of shape ``(batch,)``.
    """
    logits = logits.float()
    if task == "question-answering":  # logits (batch, length, 2), labels (batch, 2): start and end positions
        loss = sum(F.cross_entropy(logits[..., i], labels[:, i], reduction="none") for i in (0, 1)) / 2
        return loss, torch.ones_like(loss)
    if task == "sequence-classification":
        if logits.shape[-1] == 1:  # a regression head
            loss = (logits.squeeze(-1) - labels.float()) ** 2
            return loss, torch.ones_like(loss)
        loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)
        return loss, (labels != IGNORE_INDEX).float()
    if task == "causal-lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX
    ).view(labels.shape)
    return per_token.sum(-1), (labels != IGNORE_INDEX).sum(-1).float()


def inference_weights(model: nn.Module, *, merged: bool) -> AbstractContextManager[bool]:
    """The block evaluation runs in: the strategy's ``merged_for_inference`` when ``merged``
    and ``model`` (or the module a DDP or compile wrapper holds) is wrapped, else a no-op.

    Yields whether the adapter is folded into the weights.
    """
    inner = _wrapped_module(model) if merged else None
    if inner is None:
        return nullcontext(False)
    return state_of(inner).strategy.merged_for_inference(inner)


def _wrapped_module(model: nn.Module) -> nn.Module | None:
    """``model``, or the wrapped model inside a DDP or ``torch.compile`` wrapper, if petl wrapped it."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if isinstance(candidate, nn.Module) and is_wrapped(candidate):
            return candidate
    return None


def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    task: str,
    accelerator: Any,
    evaluator: TaskEvaluator | None,
    merged: bool = False,
    generation: Any = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` (prepared by ``accelerator``); keys start with ``eval_``.

    Every process returns the same metrics, so decisions taken on them (early
    stopping, the best adapter) agree across processes.

    Args:
        model: The model as the accelerator prepared it.
        loader: The evaluation batches, each with ``labels``.
        task: One of :data:`petl.tasks.TASKS`.
        accelerator: The run's ``accelerate.Accelerator``.
        evaluator: Collects logits and labels for the task's metrics, or ``None`` for the loss only.
        merged: Run inside the strategy's ``merged_for_inference`` (``TrainConfig.merged_eval``):
            a LoRA-family adapter then costs nothing, and the weights are restored bit for bit.
        generation: A :class:`~petl.training.generation.GenerationSettings`: also decode the
            evaluation prompts and report ROUGE / exact match; ``None`` for none.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    try:
        with torch.no_grad(), inference_weights(model, merged=merged):
            for batch in loader:
                logits, labels = _logits_and_labels(task, model(**batch), batch)
                sums, counts = example_losses(task, logits, labels)
                sums, counts = accelerator.gather_for_metrics((sums, counts))
                loss_sum += sums.double().sum().cpu()
                count += counts.double().sum().cpu()
                if evaluator is not None:
                    if logits.dim() > 2:  # sequences of different lengths on different processes
                        logits = accelerator.pad_across_processes(logits, dim=1, pad_index=0)
                        labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORE_INDEX)
                    logits, labels = accelerator.gather_for_metrics((logits.contiguous(), labels.contiguous()))
                    evaluator.add_batch(logits=logits.detach().float().cpu(), labels=labels.detach().cpu())
            if generation is not None:  # inside the merged block: decoding is the costly part
                from petl.training.generation import generation_metrics

                generated = generation_metrics(model, loader.dataset, generation, task=task, accelerator=accelerator)
    finally:
        model.train(was_training)
    loss = float(loss_sum / count) if count > 0 else float("nan")
    metrics = {"eval_loss": loss}
    if task in LM_TASKS:
        metrics["eval_perplexity"] = perplexity(loss)
    if evaluator is not None:
        metrics.update({f"eval_{k}": float(v) for k, v in evaluator.compute().items()})
    if generation is not None:
        metrics.update(generated)
    return metrics


def _logits_and_labels(task: str, outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and labels of a batch; question answering stacks start and end: (batch, length, 2) and (batch, 2)."""
    if task == "question-answering":  # padding is no candidate position: the loss does not depend on batching
        logits = torch.stack((outputs.start_logits, outputs.end_logits), dim=-1).float()
        if "attention_mask" in batch:
            logits = logits.masked_fill(batch["attention_mask"][..., None] == 0, torch.finfo(logits.dtype).min)
        return logits, torch.stack((batch["start_positions"], batch["end_positions"]), dim=-1)
    return outputs.logits, batch["labels"]


def metric_key(name: str) -> str:
    """``"accuracy"`` and ``"eval_accuracy"`` both name the ``eval_accuracy`` metric."""
    return name if name.startswith("eval_") else f"eval_{name}"


def resolve_metric(name: str | None, task: str) -> str:
    """The metric that picks the best checkpoint: ``name`` (``eval_``-prefixed), or the task's
    own metric (:data:`petl.tasks.DEFAULT_METRIC`) when ``name`` is ``None``."""
    return metric_key(name) if name is not None else DEFAULT_METRIC[task]


def check_metric_name(name: str | None, known: Sequence[str], task: str) -> None:
    """Refuse a ``metric_for_best`` that the evaluation of ``task`` does not report.

    Args:
        name: The metric, with or without the ``eval_`` prefix.
        known: The metrics the evaluation reports (``petl.tasks.REPORTED_METRICS[task]``).
        task: The task, for the message.

    Raises:
        ConfigError: ``name`` is not among ``known``; the message suggests the nearest one.
    """
    key = resolve_metric(name, task)
    if key not in known:
        raise ConfigError(
            f"metric_for_best={name!r} (--metric-for-best) is not reported for the {task!r} task."
            f"{suggest(key, known)} Reported metrics: {', '.join(sorted(known))}."
        )


def lower_is_better(name: str) -> bool:
    """Losses and perplexities improve downwards; every other metric upwards."""
    return "loss" in name or "perplexity" in name


@dataclass
class BestTracker:
    """The best evaluation so far, and how many evaluations in a row failed to beat it."""

    metric: str
    greater_is_better: bool
    patience: int | None
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    evaluations_without_improvement: int = 0

    def update(self, metrics: Mapping[str, float], step: int) -> bool:
        """Record an evaluation; return whether it is the best so far."""
        value = float(metrics[self.metric])
        better = math.isfinite(value) and (
            self.best_value is None
            or (value > self.best_value if self.greater_is_better else value < self.best_value)
        )
        if better:
            self.best_value, self.best_step, self.best_metrics = value, step, dict(metrics)
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evaluations_without_improvement >= self.patience

    _STATE = ("best_value", "best_step", "best_metrics", "evaluations_without_improvement")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume the tracking (plain JSON data)."""
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""
        for name in self._STATE:
            setattr(self, name, state[name])
        self.best_metrics = dict(self.best_metrics)
        self.evaluations_without_improvement = int(self.evaluations_without_improvement)


EvaluatorFactory = Callable[[], TaskEvaluator]
