"""Training checkpoints: everything a run needs to resume exactly where it stopped.

A checkpoint is a folder ``checkpoint-<step>`` inside the output folder:

* ``model.safetensors``: the trainable parameters, keyed by their names in the
  model (the adapter and trained heads of a wrapped model; every parameter under
  full fine-tuning);
* ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's state dict, its
  tensors in safetensors and the structure around them in JSON (the same for the
  gradient scaler of fp16 training, ``scaler.json``);
* ``scheduler.json``: the learning-rate scheduler's state;
* ``strategy.json`` (+ ``strategy.safetensors``): training state a strategy keeps
  outside its parameters, for strategies that expose it (see :func:`strategy_state`);
* ``rng.safetensors``: the torch (and CUDA) generator states; the Python and NumPy
  generator states are in ``trainer_state.json``;
* ``trainer_state.json``: the step, the position in the epoch, the best metric so
  far, the per-step losses, and the training options that fix the data order.

The folder is written under a temporary name and renamed into place, and older
checkpoints are removed only after that, so an interrupted save never replaces a
good checkpoint with a half-written one. Loading reads safetensors and JSON only:
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from petl.core.validators import check_state_dict
from petl.errors import CheckpointError
from petl.files import replace_dir

__all__ = [
    "TRAINER_STATE_NAME",
    "decode_structure",
    "encode_structure",
    "latest_checkpoint",
    "load_strategy_state",
    "read_checkpoint",
    "strategy_state",
    "write_checkpoint",
]

TRAINER_STATE_NAME = "trainer_state.json"
FORMAT_VERSION = 1
_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def encode_structure(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-ready copy of ``value`` whose tensors are moved into ``tensors``.

    Dicts keep their key types (optimizer states are keyed by integers) and tuples
    stay tuples, so :func:`decode_structure` gives back an equal structure.

    Raises:
        CheckpointError: ``value`` holds an object that is neither a tensor nor plain data.
    """
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {"__dict__": [[encode_structure(k, tensors), encode_structure(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_structure(v, tensors) for v in value]}
    if isinstance(value, list):
        return [encode_structure(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(
        f"Cannot store a {type(value).__name__} in a checkpoint: only tensors, arrays and plain data are written."
    )


def decode_structure(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Invert :func:`encode_structure`."""
    if isinstance(value, list):
        return [decode_structure(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__tuple__" in value:
            return tuple(decode_structure(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {decode_structure(k, tensors): decode_structure(v, tensors) for k, v in value["__dict__"]}
        raise CheckpointError(f"Unknown entry in a checkpoint structure: {sorted(value)}.")
    return value


def _write_structure(folder: Path, name: str, value: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = encode_structure(value, tensors)
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(structure) + "\n", encoding="utf-8")


def _read_structure(folder: Path, name: str) -> Any:
    tensors_path = folder / f"{name}.safetensors"
    tensors = load_file(tensors_path) if tensors_path.is_file() else {}
    return decode_structure(json.loads((folder / f"{name}.json").read_text(encoding="utf-8")), tensors)


def rng_state() -> dict[str, Any]:
    """The states of every random generator a training step may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def write_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    trainer_state: dict[str, Any],
    best_weights: Mapping[str, torch.Tensor] | None = None,
    strategy_state: Any = None,
    keep: int = 1,
) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep only the ``keep`` newest checkpoints.

    ``best_weights`` (the trainable tensors of the best evaluation, when it is not the
    current step) go to ``best.safetensors``, so a resumed run can still restore them.

    Returns:
        The checkpoint folder.
    """
    final = output_dir / f"checkpoint-{step}"

    def fill(tmp: Path) -> None:
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in trainable_state(model).items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        if best_weights is not None:
            best = {k: v.detach().to("cpu").contiguous().clone() for k, v in best_weights.items()}
            save_file(best, tmp / "best.safetensors", metadata={"format": "pt"})
        _write_structure(tmp, "optimizer", optimizer.state_dict())
        _write_structure(tmp, "scheduler", scheduler.state_dict())
        if scaler is not None:
            _write_structure(tmp, "scaler", scaler.state_dict())
        if strategy_state is not None:
            _write_structure(tmp, "strategy", strategy_state)
        rng_tensors: dict[str, torch.Tensor] = {}
        state = {**trainer_state, "format_version": FORMAT_VERSION, "rng": encode_structure(rng_state(), rng_tensors)}
        save_file(rng_tensors, tmp / "rng.safetensors")
        # Written last: a folder without it is never taken for a checkpoint.
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")

    replace_dir(final, fill)  # the same step saved again after a resume replaces the folder whole
    for older in _checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(older[1], ignore_errors=True)
    return final


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            match = _PATTERN.match(path.name)
            if match and (path / TRAINER_STATE_NAME).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or ``None``."""
    found = _checkpoints(Path(output_dir))
    return found[-1][1] if found else None


def read_checkpoint(
    folder: Path, *, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any
) -> dict[str, Any]:
    """Load a checkpoint into the training objects and restore the random generators.

    Returns:
        The trainer state saved with it (step, epoch position, best metric, ...), with
        ``"best_weights"``: the tensors of ``best.safetensors``, or ``None``, and
        ``"strategy_state"``: what :func:`strategy_state` saved, or ``None``.

    Raises:
        CheckpointError: The checkpoint is unreadable or does not fit the model.
    """
    try:
        state = json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        weights = load_file(folder / "model.safetensors")
        optimizer_state = _read_structure(folder, "optimizer")
        scheduler_state = _read_structure(folder, "scheduler")
        scaler_state = _read_structure(folder, "scaler") if (folder / "scaler.json").is_file() else None
        rng = decode_structure(state.pop("rng"), load_file(folder / "rng.safetensors"))
        best_path = folder / "best.safetensors"
        state["best_weights"] = load_file(best_path) if best_path.is_file() else None
        has_strategy = (folder / "strategy.json").is_file()
        state["strategy_state"] = _read_structure(folder, "strategy") if has_strategy else None
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"The checkpoint {folder} is unreadable ({exc}). Delete it to resume from an older one, "
            "or train without resume."
        ) from exc
    params = trainable_state(model)
    check_state_dict(params, weights, source=f"The checkpoint {folder}",
                     fix="Resume with the same model and strategy options, or choose a fresh output folder.")
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        if scaler is not None and scaler_state is not None:
            scaler.load_state_dict(scaler_state)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"The optimizer state in {folder} does not fit this run ({exc}). Resume with the same model, "
            "strategy and optimizer options, or choose a fresh output folder."
        ) from exc
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(weights[key])
    set_rng_state(rng)
    return state


def strategy_state(strategy: Any, model: nn.Module) -> Any:
    """The training state a strategy keeps outside its parameters, or ``None``.

    It comes from the protocol's ``training_state(model)`` (plain data and tensors)
    and goes back through ``load_training_state(model, state)`` on resume; AdaLoRA's
    importance scores and rank pattern are such state. A strategy class written
    without these methods simply has none.
    """
    getter = getattr(strategy, "training_state", None)
    return getter(model) if strategy is not None and callable(getter) else None


def load_strategy_state(strategy: Any, model: nn.Module, state: Any, folder: Path) -> None:
    """Give a strategy back the state :func:`strategy_state` saved in ``folder``."""
    if state is None:
        return
    loader = getattr(strategy, "load_training_state", None)
    if strategy is None or not callable(loader):
        raise CheckpointError(
            f"The checkpoint {folder} holds strategy training state, but this model's strategy cannot take it "
            "(it has no load_training_state). Resume with the strategy the run was started with."
        )
    loader(model, state)
