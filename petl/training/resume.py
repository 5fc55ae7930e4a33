"""Resuming from a checkpoint: every check first, then every change.

A resume goes through three stages, and only the last one changes anything:

1. :func:`~petl.training.checkpoint.load_checkpoint` reads every file of the
   checkpoint (each JSON file parses, each safetensors file opens, every file
   ``trainer_state.json`` lists is there, its fields have the types the trainer wrote,
   the saved generator states are valid);
2. :func:`check_same_run` compares what the checkpoint records about its run (the
   options that fix the data order, schedule and optimizer; the strategy and its
   options; the model's signature) with the run about to start, and
   :func:`check_fits` checks the tensors against the model and the optimizer state
   against the optimizer;
3. :func:`apply_checkpoint` loads the strategy state, optimizer, scheduler and
   gradient scaler (putting them back if one of them refuses), then the weights and
   the random generators.

A checkpoint that fails stage 1 or 2 raises :class:`~petl.errors.CheckpointError`
with the model's weights, the optimizer, scheduler and strategy, and the output folder
exactly as they were (the random generators hold what the run's seed set, not the
checkpoint's states).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.core.params import copy_checked
from petl.core.validators import check_state_dict
from petl.core.wrapping import is_wrapped, model_signature, state_of
from petl.errors import CheckpointError
from petl.training.checkpoint import (
    DELETE_HINT,
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    set_rng_state,
    trainable_state,
)
from petl.training.config import TrainConfig
from petl.training.trainer_state import is_number

__all__ = [
    "V1_FINGERPRINT",
    "apply_checkpoint",
    "check_fits",
    "check_resume_options",
    "check_same_run",
    "config_fingerprint",
    "model_record",
    "read_checkpoint",
    "strategy_record",
]

V1_FINGERPRINT = ("batch_size", "gradient_accumulation_steps", "seed", "num_processes", "total_steps")
"""The options a version-1 checkpoint records; later versions record every key of the trainer's fingerprint."""
# The optimizer-state tensors that have their parameter's shape (torch's Adam/AdamW/SGD, bitsandbytes' 8-bit ones).
_PARAM_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "state1", "state2")


def config_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """The part of a run's fingerprint that its options alone decide (the trainer adds the
    resolved learning rate, the number of processes, examples and steps)."""
    names = ("batch_size", "gradient_accumulation_steps", "seed", "weight_decay", "lr_scheduler", "warmup_ratio",
             "max_grad_norm", "optimizer", "mixed_precision")
    return {name: getattr(config, name) for name in names}


def strategy_record(strategy: Any) -> dict[str, Any]:
    """The strategy's name and options as a checkpoint records them (name ``None``: full fine-tuning)."""
    if strategy is None:
        return {"name": None, "config": None}
    return {"name": strategy.config.strategy, "config": strategy.config.to_dict()}


def model_record(model: nn.Module) -> dict[str, Any]:
    """The signature of the model a checkpoint was trained on (the one ``petl.save`` records)."""
    return dict(state_of(model).signature) if is_wrapped(model) else model_signature(model)


# -- checking -----------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a saved one."""
    return json.loads(json.dumps(value))


def _changes(label: str, saved: Mapping[str, Any], now: Mapping[str, Any], keys: Any = None) -> list[str]:
    # By default the keys the checkpoint recorded: what a later petl adds to a record does not refuse older ones.
    keys = sorted(saved) if keys is None else keys
    return [f"{label}{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def check_same_run(checkpoint: Checkpoint, *, fingerprint: Mapping[str, Any], strategy: Mapping[str, Any],
                   model: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another run: other options, another strategy or strategy options, another model.

    Args:
        checkpoint: What :func:`load_checkpoint` read.
        fingerprint: The options of the run about to start that a resume must keep.
        strategy: :func:`strategy_record` of the run's strategy.
        model: :func:`model_record` of the run's model.

    Raises:
        CheckpointError: Something differs; the message lists every difference.
    """
    state = checkpoint.state
    keys = list(fingerprint) if checkpoint.version >= 2 else list(V1_FINGERPRINT)
    changed = _changes("", state["fingerprint"], _plain(dict(fingerprint)), keys)
    if checkpoint.version >= 2:
        changed += _strategy_changes(state["strategy"], _plain(dict(strategy)))
        changed += _changes("model ", state["model"], _plain(dict(model)))
    _refuse_changes(checkpoint.folder, changed)


def check_resume_options(output_dir: str | Path, config: TrainConfig, strategy: str | None) -> None:
    """The checks of a resume that need neither the model nor the data, for callers that load
    those next (``petl train --resume``): the newest checkpoint's trainer state reads, every
    file it lists is there, and it was written under the same options and strategy.

    Args:
        output_dir: The folder to resume from; nothing is checked when it holds no checkpoint.
        config: The options of the run about to start.
        strategy: Its strategy's name, ``None`` for full fine-tuning.

    Raises:
        CheckpointError: As :func:`check_same_run`, or for an unreadable trainer state.
    """
    folder = latest_checkpoint(output_dir)
    if folder is None:
        return
    state = read_trainer_state(folder)
    now = config_fingerprint(config)
    if config.learning_rate is not None:
        now["learning_rate"] = config.learning_rate
    version = state["format_version"]
    changed = _changes("", state["fingerprint"], _plain(now), [k for k in now if version >= 2 or k in V1_FINGERPRINT])
    if version >= 2:
        changed += _strategy_changes(state["strategy"], {"name": strategy, "config": state["strategy"]["config"]})
    _refuse_changes(folder, changed)


def _strategy_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    if saved["name"] == now["name"]:
        return _changes("strategy option ", saved["config"] or {}, now["config"] or {})

    def name(value: str | None) -> str:
        return repr(value) if value is not None else "full fine-tuning"

    return [f"strategy: checkpoint {name(saved['name'])}, now {name(now['name'])}"]


def _refuse_changes(folder: Path, changed: list[str]) -> None:
    if changed:
        raise CheckpointError(
            f"Cannot resume from {folder}: the run changed ({'; '.join(changed)}). Resume with the "
            "options, strategy and model of the interrupted run (total_steps follows from epochs/max_steps and "
            "the data size), or start afresh in a new output folder."
        )


def _check_optimizer(saved: Any, optimizer: Any, folder: Path) -> None:
    """What ``optimizer.load_state_dict`` checks, and the shapes it does not, without loading anything."""
    groups = optimizer.param_groups
    problem = None
    if not (isinstance(saved, dict) and isinstance(saved.get("param_groups"), list)
            and isinstance(saved.get("state"), dict)):
        problem = "it is not an optimizer state dict"
    elif len(saved["param_groups"]) != len(groups) or any(
            not isinstance(s, dict) or not isinstance(s.get("params"), list) or len(s["params"]) != len(g["params"])
            for s, g in zip(saved["param_groups"], groups, strict=True)):
        sizes = [len(s["params"]) if isinstance(s, dict) and isinstance(s.get("params"), list) else "?"
                 for s in saved["param_groups"]]
        problem = f"parameter groups of sizes {sizes}, this run's optimizer {[len(g['params']) for g in groups]}"
    elif not all(is_number(s.get("lr")) for s in saved["param_groups"]):
        problem = "a parameter group without a numeric learning rate"
    else:
        params = dict(zip((i for s in saved["param_groups"] for i in s["params"]),
                          (p for g in groups for p in g["params"]), strict=True))
        for index, entry in saved["state"].items():
            if index not in params or not isinstance(entry, dict):
                problem = f"state for parameter {index!r}, which no parameter group holds"
                break
            shapes = [f"{name} {tuple(entry[name].shape)}" for name in _PARAM_SHAPED
                      if isinstance(entry.get(name), torch.Tensor) and entry[name].shape != params[index].shape]
            if shapes:
                problem = f"{', '.join(shapes)} for a parameter of shape {tuple(params[index].shape)}"
                break
    if problem is not None:
        raise CheckpointError(
            f"The optimizer state in {folder} does not fit this run ({problem}). Resume with the same model, "
            "strategy and optimizer options, or choose a fresh output folder."
        )


def check_fits(checkpoint: Checkpoint, *, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
               strategy: Any = None) -> None:
    """Check that the checkpoint's tensors and states fit the run's objects, changing nothing.

    Raises:
        CheckpointError: A tensor is missing, extra or of another shape; the optimizer or
            scheduler state has another structure; the strategy cannot take the saved state.
    """
    folder, state = checkpoint.folder, checkpoint.state
    fix = "Resume with the same model and strategy options, or choose a fresh output folder."
    params = trainable_state(model)
    check_state_dict(params, checkpoint.weights, source=f"The checkpoint {folder}", fix=fix)
    best_step = state["best"]["best_step"]
    if best_step is not None and best_step != state["global_step"]:
        if checkpoint.best_weights is None:
            raise CheckpointError(
                f"The checkpoint {folder} has no best.safetensors, though its best evaluation was at step {best_step}. "
                f"{DELETE_HINT}"
            )
        check_state_dict(params, checkpoint.best_weights, source=f"The best weights in {folder}", fix=fix)
    _check_optimizer(checkpoint.optimizer, optimizer, folder)
    saved = checkpoint.scheduler
    if not (isinstance(saved, dict) and isinstance(saved.get("base_lrs"), list)
            and len(saved["base_lrs"]) == len(optimizer.param_groups) and all(map(is_number, saved["base_lrs"]))
            and isinstance(saved.get("last_epoch"), int)):
        raise CheckpointError(
            f"The scheduler state in {folder} does not fit this run's {len(optimizer.param_groups)} parameter groups. "
            "Resume with the same strategy and optimizer options, or choose a fresh output folder."
        )
    if scaler is not None and checkpoint.scaler is not None and not isinstance(checkpoint.scaler, dict):
        raise CheckpointError(f"The gradient scaler state in {folder} is not a state dict. {DELETE_HINT}")
    if checkpoint.strategy_state is not None and not callable(getattr(strategy, "load_training_state", None)):
        raise CheckpointError(
            f"The checkpoint {folder} holds strategy training state, but this model's strategy cannot take it "
            "(it has no load_training_state). Resume with the strategy the run was started with."
        )


# -- loading ------------------------------------------------------------------------------------------


def apply_checkpoint(checkpoint: Checkpoint, *, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                     strategy: Any = None) -> None:
    """Load a checked checkpoint into the run's objects and restore the random generators.

    The strategy state, optimizer, scheduler and scaler are loaded first; if one of them
    refuses its state, those already loaded get their previous state back and the weights
    and generators are not touched.

    Raises:
        CheckpointError: A training object refused its saved state.
    """
    undo: list[Callable[[], Any]] = []
    try:
        if checkpoint.strategy_state is not None:
            getter = getattr(strategy, "training_state", None)
            if callable(getter):
                before = getter(model)
                undo.append(lambda: strategy.load_training_state(model, before))
            strategy.load_training_state(model, checkpoint.strategy_state)
        loads = [(optimizer, checkpoint.optimizer), (scheduler, dict(checkpoint.scheduler))]
        if scaler is not None and checkpoint.scaler is not None:
            loads.append((scaler, checkpoint.scaler))
        for target, saved in loads:
            previous = target.state_dict()
            undo.append(lambda target=target, previous=previous: target.load_state_dict(previous))
            target.load_state_dict(saved)
    except BaseException as exc:  # Ctrl-C too: the objects already loaded get their state back
        for step in reversed(undo):
            with contextlib.suppress(Exception):  # the object that failed may refuse its old state too
                step()
        if not isinstance(exc, Exception):
            raise
        raise CheckpointError(
            f"The checkpoint {checkpoint.folder} does not fit this run ({type(exc).__name__}: {exc}). Resume with "
            "the same model, strategy and optimizer options, or choose a fresh output folder."
        ) from exc
    copy_checked(trainable_state(model), checkpoint.weights, source=f"The checkpoint {checkpoint.folder}",
                 fix="Resume with the same model and strategy options, or choose a fresh output folder.")
    set_rng_state(checkpoint.rng)


def read_checkpoint(folder: Path, *, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                    strategy: Any = None) -> dict[str, Any]:
    """Check a checkpoint against the training objects, then load it into them and restore the generators.

    Returns:
        The trainer state saved with it (step, epoch position, best metric, ...), with
        ``"best_weights"``: the tensors of ``best.safetensors``, or ``None``, and
        ``"strategy_state"``: what the strategy's ``training_state`` saved, or ``None``.

    Raises:
        CheckpointError: The checkpoint is incomplete, unreadable or does not fit; nothing was changed.
    """
    checkpoint = load_checkpoint(folder)
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "strategy": strategy}
    check_fits(checkpoint, **objects)
    apply_checkpoint(checkpoint, **objects)
    return {**checkpoint.state, "best_weights": checkpoint.best_weights, "strategy_state": checkpoint.strategy_state}
