"""The training loop behind :func:`petl.train`: micro-batches, optimizer steps,
strategy hooks, logging, evaluation, early stopping and checkpoints.

The loop keeps its position as (epoch, micro-batches consumed in the epoch) and
the data order of an epoch depends only on the seed and the epoch, so a checkpoint
plus the saved random generator states are enough to continue a run exactly as if
it had never stopped.

A stream (no length) is read in passes until ``max_steps`` steps are taken; when it
ends, pass ``p + 1`` starts it again with ``set_epoch(p + 1)`` (a shuffled ``datasets``
stream reshuffles deterministically). Its position is (pass, micro-batches consumed):
a resumed run starts the saved pass again and skips (reads and drops) the batches
consumed, repeating the uninterrupted run exactly when the stream gives the same rows
pass by pass. Evaluation and checkpoints follow ``eval_steps`` / ``save_steps`` only
(there is no epoch end); without them the run evaluates once, at the end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from petl.errors import ConfigError, DataError, PetlError, suggest
from petl.files import atomic_write_json
from petl.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    strategy_state,
    trainable_state,
    write_checkpoint,
)
from petl.training.config import TrainConfig
from petl.training.evaluation import BestTracker, check_metric_name, evaluate, lower_is_better, resolve_metric
from petl.training.log import LOG_NAME, METRICS_NAME, JsonLinesLog, LossWindow
from petl.training.resume import (
    apply_checkpoint,
    check_fits,
    check_same_run,
    config_fingerprint,
    model_record,
    strategy_record,
)
from petl.training.setup import Run
from petl.training.step import finish_step, training_loss

__all__ = ["BEST_NAME", "TrainLoop", "TrainResult"]

logger = logging.getLogger(__name__)

BEST_NAME = "best"


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    metrics: dict[str, float]
    """Final evaluation metrics (``eval_loss``, ``eval_accuracy``, ...): those of the best
    evaluation when its weights were restored, else of the last; ``{}`` without eval data."""
    global_step: int
    """Optimizer steps taken, counting those before a resume."""
    epoch: float
    """Epochs completed (fractional when training stopped inside an epoch); over a stream, the
    passes completed."""
    train_loss: float
    """Mean of the per-step training losses."""
    step_losses: list[float] = field(default_factory=list)
    """Each optimizer step's loss (task loss plus regulariser, averaged over its
    micro-batches and processes)."""
    eval_history: list[dict[str, float]] = field(default_factory=list)
    """Every evaluation's metrics with its ``step``."""
    best_metric: float | None = None
    """The best value of ``metric_for_best`` seen, or ``None`` without evaluations."""
    best_step: int | None = None
    """The step at which it was seen."""
    metric_for_best: str | None = None
    """The metric that selected the best checkpoint (``config.metric_for_best`` resolved: the
    task's own metric by default)."""
    stopped_early: bool = False
    """Whether early stopping ended the run."""
    output_dir: Path | None = None
    """The output folder, when one was given."""
    runtime_s: float = 0.0
    """Wall time of this call in seconds."""


class TrainLoop:
    """One training run over a prepared :class:`~petl.training.setup.Run`."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.config: TrainConfig = run.config
        self.acc = run.accelerator
        metric = resolve_metric(self.config.metric_for_best, run.task)
        greater = self.config.greater_is_better
        self.best = BestTracker(
            metric, (not lower_is_better(metric)) if greater is None else greater, self.config.early_stopping_patience
        )
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.step_losses: list[float] = []
        self.eval_history: list[dict[str, float]] = []
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.last_checkpoint: Path | None = None
        self.learning_rate = float("nan")
        self.stopped_early = False
        self.log_records: int | None = None  # the log lines of the checkpoint resumed from, when it says
        self.log = JsonLinesLog(run.output_dir / LOG_NAME if run.output_dir and self.acc.is_main_process else None)

    # -- state -------------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        """The options a checkpoint resumes exactly under only: data order, schedule, optimizer, precision."""
        run = self.run
        return {
            **config_fingerprint(self.config),
            "num_processes": self.acc.num_processes,
            "total_steps": run.total_steps,
            "train_examples": run.sampler.size if run.sampler is not None else None,  # None: a stream
            "data_order": getattr(run.sampler, "grouping", None),  # None: random (also older checkpoints)
            "packing": self.config.packing or None,
            "learning_rate": run.learning_rate,
        }

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "step_losses": self.step_losses,
            "eval_history": self.eval_history,
            "best": self.best.state_dict(),
            "stopped_early": self.stopped_early,
            "log_records": self.log.records,
            "fingerprint": self._fingerprint(),
            "strategy": strategy_record(self.run.strategy),
            "model": model_record(self.run.unwrapped),
            "config": self.config.to_dict(),
        }

    def _resume(self) -> None:
        """Continue from the newest checkpoint, checked whole before anything is loaded."""
        run = self.run
        folder = latest_checkpoint(run.output_dir)
        if folder is None:
            logger.warning("resume=True but %s holds no checkpoint: training from the start.", run.output_dir)
            return
        checkpoint = load_checkpoint(folder)
        check_same_run(checkpoint, fingerprint=self._fingerprint(), strategy=strategy_record(run.strategy),
                       model=model_record(run.unwrapped))
        objects = {"model": run.unwrapped, "optimizer": run.optimizer, "scheduler": run.scheduler,
                   "scaler": self.acc.scaler, "strategy": run.strategy}
        check_fits(checkpoint, **objects)
        apply_checkpoint(checkpoint, **objects)
        state = checkpoint.state
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self.batches_in_epoch = state["batches_in_epoch"]
        self.step_losses = [float(v) for v in state["step_losses"]]
        self.eval_history = [dict(record) for record in state["eval_history"]]
        self.best.load_state_dict(state["best"])
        self.stopped_early = state["stopped_early"]
        self.log_records = state.get("log_records")
        self.last_checkpoint = folder
        if self.best.best_step == self.global_step:
            self.best_weights = _cpu_copy(trainable_state(run.unwrapped))
        else:
            self.best_weights = checkpoint.best_weights
        logger.info("Resumed from %s at step %d.", folder, self.global_step)

    # -- the loop ----------------------------------------------------------------------------

    def execute(self) -> TrainResult:
        run, acc, config = self.run, self.acc, self.config
        self._check_metric_name_known()
        run.begin_strategy()  # before a resume, which gives the strategy back its saved state
        if config.resume:
            self._resume()
        self.log.restart(self.global_step, self.log_records)  # drop what an interrupted run wrote after its checkpoint
        run.open_outputs()
        if self._epoch_done():
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        progress = run.progress_bar(self.global_step)
        window = LossWindow()
        try:
            while self.global_step < run.total_steps and not self.stopped_early:
                run.start_pass(self.epoch)
                loader = run.train_loader
                if self.batches_in_epoch:
                    loader = acc.skip_first_batches(run.train_loader, self.batches_in_epoch)
                micro_losses: list[torch.Tensor] = []
                started_at, exhausted = self.batches_in_epoch, False
                try:
                    for batch in loader:
                        with acc.accumulate(run.model):
                            loss = self._micro_step(batch)
                            micro_losses.append(loss)
                            window.samples += _batch_size(batch) * acc.num_processes
                            self.batches_in_epoch += 1
                            if not acc.sync_gradients:
                                continue
                            step_loss = self._optimizer_step(micro_losses)
                            micro_losses = []
                        window.add(step_loss)
                        progress.update(1)
                        self._maybe_log(window, progress)
                        epoch_done = self._epoch_done()
                        paused = time.perf_counter()
                        if self._at_evaluation_point(epoch_done):
                            self.stopped_early = self._evaluate_and_track()
                        if self._at_checkpoint_point(epoch_done) or self.stopped_early:
                            self._checkpoint()
                        window.started += time.perf_counter() - paused  # throughput counts training time only
                        if self.stopped_early or self.global_step >= run.total_steps:
                            break
                    else:
                        exhausted = True
                finally:
                    _end(loader)
                if run.batches_per_epoch is None and exhausted:  # a stream ended: read it again
                    if self.batches_in_epoch == started_at == 0:
                        raise DataError(
                            f"The training stream yielded no batch in pass {self.epoch + 1}, after {self.global_step} "
                            f"of {run.total_steps} steps. Check the data set: a stream needs at least one example."
                        )
                    self.epoch, self.batches_in_epoch = self.epoch + 1, 0
                elif self._epoch_done():
                    self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        finally:
            progress.close()
        if run.eval_loader is not None and (not self.eval_history or self.eval_history[-1]["step"] != self.global_step):
            self._evaluate_and_track()
        return self._finish()

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        run = self.run
        loss = training_loss(run.model, batch, run.strategy, run.unwrapped, run.token_scale, run.task)
        self.acc.backward(loss)
        return loss.detach().float()

    def _optimizer_step(self, micro_losses: list[torch.Tensor]) -> float:
        run, acc = self.run, self.acc
        step_loss = torch.stack(micro_losses).mean()
        if acc.num_processes > 1:
            step_loss = acc.gather(step_loss[None]).mean()  # every process sees the same value and stops together
        value = float(step_loss)
        if not math.isfinite(value):
            run.optimizer.zero_grad(set_to_none=True)
            kept = (f"the last checkpoint, {self.last_checkpoint}, is intact (resume from it with resume=True)"
                    if self.last_checkpoint is not None else "no checkpoint had been written yet")
            raise PetlError(
                f"The training loss became {value} at step {self.global_step + 1} (epoch {self.epoch + 1}); "
                f"the model keeps the weights of step {self.global_step} and {kept}. Lower the learning rate, "
                "keep max_grad_norm set, or use bf16 rather than fp16 mixed precision."
            )
        if self.config.max_grad_norm is not None:
            acc.clip_grad_norm_(run.trainable, self.config.max_grad_norm)
        self.learning_rate = float(run.optimizer.param_groups[0]["lr"])  # the rate this step uses
        self.global_step += 1
        finish_step(run.optimizer, run.strategy, run.unwrapped, self.global_step)
        if not acc.optimizer_step_was_skipped:  # an fp16 step skipped for overflow keeps the schedule
            run.scheduler.step()
        self.step_losses.append(value)
        return value

    def _maybe_log(self, window: LossWindow, progress: Any) -> None:
        lr = self.learning_rate
        progress.set_postfix(loss=f"{window.last:.4f}", lr=f"{lr:.2e}", refresh=False)
        if self.global_step % self.config.logging_steps and self.global_step != self.run.total_steps:
            return
        record = {
            "step": self.global_step,
            "epoch": self._epochs(log=True),
            "loss": window.mean(),
            "learning_rate": lr,
            "samples_per_second": window.throughput(),
        }
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                             samples_s=f"{record['samples_per_second']:.1f}")
        self.log.write(record)
        self.run.track(record, self.global_step)
        window.reset()

    def _epoch_done(self) -> bool:
        """Whether the current epoch's batches are all consumed (never known ahead for a stream)."""
        size = self.run.batches_per_epoch
        return size is not None and self.batches_in_epoch >= size

    def _epochs(self, log: bool = False) -> float:
        """Epochs completed, fractional within one (as the log and the result have always written it);
        for a stream, completed passes."""
        size = self.run.batches_per_epoch
        if size is None:
            return float(self.epoch)
        if log:
            return round(self.epoch + self.batches_in_epoch / size, 4)
        return round((self.epoch * size + self.batches_in_epoch) / size, 4)

    def _at_evaluation_point(self, epoch_done: bool) -> bool:
        if self.config.eval_steps is not None:
            return self.global_step % self.config.eval_steps == 0
        return epoch_done

    def _at_checkpoint_point(self, epoch_done: bool) -> bool:
        if self.run.output_dir is None:
            return False
        if self.config.save_steps is not None:
            return self.global_step % self.config.save_steps == 0
        return self._at_evaluation_point(epoch_done)

    def _check_metric_name_known(self) -> None:
        known = self.run.known_metrics
        if self.run.eval_loader is not None and known is not None:
            check_metric_name(self.config.metric_for_best, known, self.run.task)

    def _evaluate_and_track(self) -> bool:
        """Evaluate, keep the best weights; return whether early stopping ends the run."""
        run = self.run
        if run.eval_loader is None:
            return False
        factory = run.evaluator_factory
        metrics = evaluate(run.model, run.eval_loader, task=run.task, accelerator=self.acc,
                           evaluator=factory() if factory is not None else None, merged=self.config.merged_eval,
                           generation=run.generation)
        if self.best.metric not in metrics and self.config.metric_for_best is None and self.best.best_step is None:
            # the default (the task's metric) is missing from a custom evaluator's report: fall back to the loss
            logger.warning("The evaluation reports no %s; the loss picks the best checkpoint.", self.best.metric)
            self.best.metric, self.best.greater_is_better = "eval_loss", False
        if self.best.metric not in metrics:
            raise ConfigError(
                f"metric_for_best={self.config.metric_for_best!r} is not among the evaluation metrics."
                f"{suggest(self.best.metric, list(metrics))} Reported metrics: {', '.join(sorted(metrics))}."
            )
        record = {"step": self.global_step, **metrics}
        self.eval_history.append(record)
        self.log.write({**record, "metric_for_best": self.best.metric})
        run.track(metrics, self.global_step)
        logger.info("step %d: %s", self.global_step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if self.best.update(metrics, self.global_step):
            self.best_weights = _cpu_copy(trainable_state(run.unwrapped))
            if run.output_dir is not None:
                run.save_model(run.output_dir / BEST_NAME)
        return self.best.should_stop

    def _checkpoint(self) -> None:
        run = self.run
        if run.output_dir is None:
            return
        if self.acc.is_main_process or run.sharded:  # gathering a sharded adapter is a collective
            self.last_checkpoint = write_checkpoint(
                run.output_dir, self.global_step, model=run.unwrapped, optimizer=run.optimizer,
                scheduler=run.scheduler, scaler=self.acc.scaler, trainer_state=self._trainer_state(),
                best_weights=self.best_weights if self.best.best_step != self.global_step else None,
                strategy_state=strategy_state(run.strategy, run.unwrapped),
            )
        else:
            self.last_checkpoint = run.output_dir / f"checkpoint-{self.global_step}"
        self.acc.wait_for_everyone()

    def _finish(self) -> TrainResult:
        run, config = self.run, self.config
        metrics = dict(self.eval_history[-1]) if self.eval_history else {}
        if config.load_best_at_end and self.best_weights is not None and self.best.best_step != self.global_step:
            params = trainable_state(run.unwrapped)
            with torch.no_grad():
                for key, value in self.best_weights.items():
                    params[key].copy_(value)
            metrics = {"step": self.best.best_step, **self.best.best_metrics}
        metrics.pop("step", None)
        if run.output_dir is not None and run.eval_loader is None:
            run.save_model(run.output_dir / BEST_NAME)  # with nothing to compare, the last weights are the best
        if run.output_dir is not None and self.acc.is_main_process:
            atomic_write_json(run.output_dir / METRICS_NAME, metrics)
        self.acc.wait_for_everyone()
        return TrainResult(
            metrics=metrics,
            global_step=self.global_step,
            epoch=self._epochs(),
            train_loss=sum(self.step_losses) / len(self.step_losses) if self.step_losses else float("nan"),
            step_losses=list(self.step_losses),
            eval_history=list(self.eval_history),
            best_metric=self.best.best_value,
            best_step=self.best.best_step,
            metric_for_best=self.best.metric,
            stopped_early=self.stopped_early,
            output_dir=run.output_dir,
        )


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    if "position_ids" in batch:  # a packed batch (petl.data.packing): one position 0 per example
        return int((batch["position_ids"] == 0).sum())
    return int(next(iter(batch.values())).shape[0])


def _end(loader: Any) -> None:
    """Tell Accelerate a data loader left early is done (it tracks the active one)."""
    end = getattr(loader, "end", None)
    if callable(end):
        end()


def _cpu_copy(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
