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
  far, the per-step losses, the training options that fix the run (its
  fingerprint), the strategy's name and options, the model's signature, and the
  names of the other files (so a missing one is noticed).

The folder is written under a temporary name and renamed into place, and older
checkpoints are removed only after that, so an interrupted save never replaces a
good checkpoint with a half-written one. :func:`load_checkpoint` reads a checkpoint
whole (every listed file present, every JSON file parsed, every safetensors file
opened, every field of ``trainer_state.json`` of the type written) and changes nothing;
:mod:`petl.training.resume` checks it against a run and loads it. Only safetensors and
JSON are read: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from petl.core.distributed import full_tensor, gather_full, is_sharded, run_on_main_process
from petl.errors import CheckpointError
from petl.files import replace_dir
from petl.training.trainer_state import is_count, trainer_state_problems

__all__ = [
    "DELETE_HINT",
    "FORMAT_VERSION",
    "TRAINER_STATE_NAME",
    "Checkpoint",
    "decode_structure",
    "encode_structure",
    "latest_checkpoint",
    "load_checkpoint",
    "read_trainer_state",
    "rng_state",
    "set_rng_state",
    "strategy_state",
    "trainable_state",
    "write_checkpoint",
]

TRAINER_STATE_NAME = "trainer_state.json"
FORMAT_VERSION = 2
"""2 added the strategy, the model signature, the file list and more options to the
fingerprint; checkpoints of version 1 still resume, with the checks they allow."""
DELETE_HINT = ("Delete that checkpoint folder to resume from an older one, "
               "or train without resume in a fresh output folder.")
"""The last sentence of an error about one damaged checkpoint."""
_V1_FILES = ("model.safetensors", "optimizer.json", "scheduler.json", "rng.safetensors")
_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def encode_structure(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-ready copy of ``value`` whose tensors are moved into ``tensors``.

    Dicts keep their key types (optimizer states are keyed by integers) and tuples
    stay tuples, so :func:`decode_structure` gives back an equal structure. A sharded
    tensor (DTensor, under FSDP) is stored whole: every rank must encode the same structure.

    Raises:
        CheckpointError: ``value`` holds an object that is neither a tensor nor plain data.
    """
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = _cpu_copy(full_tensor(value))
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
    """Invert :func:`encode_structure`.

    Raises:
        CheckpointError: ``value`` is not what :func:`encode_structure` writes (an unknown
            entry, a tensor missing from ``tensors``, a malformed array or mapping).
    """
    if isinstance(value, list):
        return [decode_structure(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    try:
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__tuple__" in value:
            return tuple(decode_structure(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {decode_structure(k, tensors): decode_structure(v, tensors) for k, v in value["__dict__"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"A malformed entry in a checkpoint structure ({type(exc).__name__}: {exc}).") from exc
    raise CheckpointError(f"Unknown entry in a checkpoint structure: {sorted(value)}.")


def _encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    return encode_structure(value, tensors), tensors


def _write_structure(folder: Path, name: str, encoded: tuple[Any, dict[str, torch.Tensor]]) -> None:
    structure, tensors = encoded
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(structure) + "\n", encoding="utf-8")


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
    """The parameters that training changes, by name.

    These are the live parameters (a resume copies into them), so under FSDP they are
    DTensor shards; :func:`write_checkpoint` stores them whole through
    :func:`petl.core.distributed.gather_full`.
    """
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

    Under FSDP (DTensor parameters) every rank must call this: the parameters, the best
    weights and the optimizer state are gathered whole (collectives), rank 0 writes, and
    the other ranks wait for its outcome, as in ``petl.save``. Without sharded tensors
    nothing is communicated and only rank 0 writes.

    Returns:
        The checkpoint folder.
    """
    final = output_dir / f"checkpoint-{step}"
    params = trainable_state(model)
    sharded = any(is_sharded(t) for t in [*params.values(), *(best_weights or {}).values()])
    # Gathered on every rank, before only rank 0 writes: each gather is a collective under FSDP.
    weights = {k: _cpu_copy(v) for k, v in gather_full(params).items()}
    best = {k: _cpu_copy(v) for k, v in gather_full(best_weights).items()} if best_weights is not None else None
    structures = {"optimizer": _encode(optimizer.state_dict()), "scheduler": _encode(scheduler.state_dict())}
    if scaler is not None:
        structures["scaler"] = _encode(scaler.state_dict())
    if strategy_state is not None:
        structures["strategy"] = _encode(strategy_state)

    def fill(tmp: Path) -> None:
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        if best is not None:
            save_file(best, tmp / "best.safetensors", metadata={"format": "pt"})
        for name, encoded in structures.items():
            _write_structure(tmp, name, encoded)
        rng_tensors: dict[str, torch.Tensor] = {}
        state = {**trainer_state, "format_version": FORMAT_VERSION, "rng": encode_structure(rng_state(), rng_tensors)}
        save_file(rng_tensors, tmp / "rng.safetensors")
        state["files"] = sorted(path.name for path in tmp.iterdir())
        # Written last: a folder without it is never taken for a checkpoint.
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")

    def write() -> None:
        replace_dir(final, fill)  # the same step saved again after a resume replaces the folder whole
        for older in _checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(older[1], ignore_errors=True)

    run_on_main_process(write, collective=sharded, what=f"write the checkpoint {final}")
    return final


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


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


def strategy_state(strategy: Any, model: nn.Module) -> Any:
    """The training state a strategy keeps outside its parameters, or ``None``.

    It comes from the protocol's ``training_state(model)`` (plain data and tensors)
    and goes back through ``load_training_state(model, state)`` on resume; AdaLoRA's
    importance scores and rank pattern are such state. A strategy class written
    without these methods simply has none.
    """
    getter = getattr(strategy, "training_state", None)
    return getter(model) if strategy is not None and callable(getter) else None


# -- reading ------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Everything one checkpoint folder holds, read and checked, loaded into nothing yet."""

    folder: Path
    state: dict[str, Any]
    """``trainer_state.json`` without the generator states: step, epoch position, losses, best, fingerprint, ..."""
    weights: dict[str, torch.Tensor]
    optimizer: Any
    scheduler: Any
    scaler: Any
    """The fp16 gradient scaler's state, or ``None``."""
    rng: dict[str, Any]
    best_weights: dict[str, torch.Tensor] | None
    """The trainable tensors of the best evaluation when it is not the checkpoint's step."""
    strategy_state: Any
    """What the strategy's ``training_state`` returned, or ``None``."""

    @property
    def version(self) -> int:
        return int(self.state["format_version"])


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"The checkpoint file {path} is unreadable ({type(exc).__name__}: {exc}). {DELETE_HINT}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _unreadable(path, exc) from exc


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (OSError, ValueError, SafetensorError) as exc:
        raise _unreadable(path, exc) from exc


def _decode(path: Path, value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    try:
        return decode_structure(value, tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"The checkpoint file {path} is corrupted: {exc} {DELETE_HINT}") from exc


def _read_structure(folder: Path, name: str) -> Any:
    tensors_path = folder / f"{name}.safetensors"
    tensors = _read_tensors(tensors_path) if tensors_path.is_file() else {}
    path = folder / f"{name}.json"
    return _decode(path, _read_json(path), tensors)


def _check_rng(rng: Any, path: Path) -> None:
    """Try the saved generator states on fresh generators, leaving the global ones alone."""
    try:
        if not isinstance(rng, dict):
            raise TypeError(f"a {type(rng).__name__}, not the states by generator")
        random.Random().setstate(rng["python"])
        np.random.RandomState().set_state(rng["numpy"])
        torch.Generator().set_state(rng["torch"])
        cuda = rng.get("cuda", [])
        if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
            raise ValueError("the CUDA generator states are not byte tensors")
        if cuda and torch.cuda.is_available() and len(cuda) > torch.cuda.device_count():
            raise ValueError(f"{len(cuda)} CUDA generator states for {torch.cuda.device_count()} devices")
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{path} holds invalid random generator states ({exc}). {DELETE_HINT}") from exc


def read_trainer_state(folder: str | Path) -> dict[str, Any]:
    """Read and check ``trainer_state.json`` of the checkpoint ``folder``, and that every file it lists is there.

    Raises:
        CheckpointError: The file is unreadable, a field is absent, null or of the wrong
            type, or a listed file is missing.
    """
    folder = Path(folder)
    state_path = folder / TRAINER_STATE_NAME
    state = _read_json(state_path)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{state_path} is corrupted: it holds a {type(state).__name__}, not an object. {DELETE_HINT}")
    version = state.get("format_version")
    if not (is_count(version) and 1 <= version <= FORMAT_VERSION):
        raise CheckpointError(
            f"{state_path} has format_version {version!r}; this petl reads versions 1 to {FORMAT_VERSION}. "
            f"Resume with the petl version that wrote it. {DELETE_HINT}"
        )
    problems = trainer_state_problems(state)
    files = state.get("files") if version >= 2 else list(_V1_FILES)
    if not (isinstance(files, list) and all(isinstance(f, str) and f == Path(f).name and f for f in files)):
        problems.append(f"files is {files!r}, not a list of file names")
        files = []
    if problems:
        raise CheckpointError(f"{state_path} is corrupted: {'; '.join(problems)}. {DELETE_HINT}")
    missing = sorted(f for f in files if not (folder / f).is_file())
    if missing:
        raise CheckpointError(f"The checkpoint {folder} is incomplete: {', '.join(missing)} missing. {DELETE_HINT}")
    return state


def load_checkpoint(folder: str | Path) -> Checkpoint:
    """Read every file of the checkpoint ``folder``, changing nothing.

    Raises:
        CheckpointError: A file is missing, unreadable or malformed, or a field of
            ``trainer_state.json`` is absent, null or of the wrong type.
    """
    folder = Path(folder)
    state_path = folder / TRAINER_STATE_NAME
    state = read_trainer_state(folder)
    rng = _decode(state_path, state.pop("rng"), _read_tensors(folder / "rng.safetensors"))
    _check_rng(rng, state_path)
    best_path = folder / "best.safetensors"
    return Checkpoint(
        folder=folder,
        state=state,
        weights=_read_tensors(folder / "model.safetensors"),
        optimizer=_read_structure(folder, "optimizer"),
        scheduler=_read_structure(folder, "scheduler"),
        scaler=_read_structure(folder, "scaler") if (folder / "scaler.json").is_file() else None,
        rng=rng,
        best_weights=_read_tensors(best_path) if best_path.is_file() else None,
        strategy_state=_read_structure(folder, "strategy") if (folder / "strategy.json").is_file() else None,
    )
