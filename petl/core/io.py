"""Saving and loading adapters: safetensors weights plus a JSON description.

A saved folder holds:

* ``adapter_model.safetensors``: the adapter's tensors (and any head trained in full);
* ``petl_config.json``: the strategy name, its options and the signature of the
  model it was trained on, so ``petl.load`` rebuilds the strategy by itself;
* whatever extra files the strategy asks for (LoRA writes peft's
  ``adapter_config.json`` so that ``peft.PeftModel.from_pretrained`` loads the folder).

Every file is written to a temporary name in the target folder and renamed into
place, so an interrupted save never leaves a half-written file under the real
name. Weights are read with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from petl.core import registry
from petl.core.validators import check_state_dict
from petl.core.wrapping import model_signature, state_of, unwrap, wrap
from petl.errors import CheckpointError, PetlError
from petl.files import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load", "save"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "petl_config.json"
FORMAT_VERSION = 1


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor ``petl.save`` writes: the adapter's and the trained heads'."""
    state = state_of(model)
    tensors = dict(state.strategy.adapter_state_dict(model))
    if state.heads is not None:
        tensors.update(state.heads.state_dict(model))
    return tensors


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save the adapter of a wrapped model (not the base weights) to a folder.

    Args:
        model: A model wrapped with ``petl.wrap``.
        path: The folder; created if needed. Files of an earlier save are replaced.

    Returns:
        The folder's path.

    Raises:
        NotWrappedError: The model is not wrapped.
        PetlError: The folder cannot be created or written.
    """
    state = state_of(model)
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PetlError(f"Cannot create the adapter folder {folder}: {exc}. Choose a writable path.") from exc
    tensors = {key: t.detach().to("cpu").contiguous().clone() for key, t in adapter_tensors(model).items()}
    description = {
        "format_version": FORMAT_VERSION,
        "strategy": state.strategy.config.strategy,
        "config": state.strategy.config.to_dict(),
        "model": state.signature,
    }
    try:
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        for name, text in state.strategy.extra_files(model).items():
            atomic_write_text(folder / name, text)
        atomic_write_json(folder / CONFIG_NAME, description)
    except OSError as exc:
        raise PetlError(f"Cannot write the adapter to {folder}: {exc}. Choose a writable path.") from exc
    return folder


def _read_description(folder: Path) -> dict[str, Any]:
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(f"No adapter folder at {folder}. Pass the folder that petl.save wrote.")
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_NAME}, so it was not written by petl.save "
            f"(files found: {sorted(p.name for p in folder.iterdir()) or 'none'})."
        )
    try:
        description = json.loads(config_path.read_text(encoding="utf-8"))
        description["strategy"], description["config"], description["model"]  # noqa: B018
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{config_path} is corrupted ({exc}). Save the adapter again with petl.save."
        ) from exc
    return description


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}. Save the adapter again with petl.save.")
    try:
        return load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path} is truncated or corrupted ({exc}). Save the adapter again with petl.save."
        ) from exc


def _check_signature(model: nn.Module, saved: dict[str, Any], folder: Path) -> None:
    current = model_signature(model)
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        if saved.get(key) is not None and current.get(key) is not None and saved[key] != current[key]:
            raise CheckpointError(
                f"The adapter in {folder} was trained on a {saved['class']} "
                f"({key}={saved[key]!r}); this model is a {current['class']} ({key}={current[key]!r}). "
                "Load it onto the same base model it was trained on."
            )


def load(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Wrap ``model`` with the adapter saved at ``path`` and return it.

    The strategy and its options come from the folder, so they need not be repeated.
    On any error the model is left exactly as it was.

    Raises:
        CheckpointError: The folder or a file in it is missing, truncated,
            corrupted, or belongs to another model.
        AlreadyWrappedError: The model already carries a petl strategy.
    """
    folder = Path(path)
    description = _read_description(folder)
    weights = _read_weights(folder)
    _check_signature(model, description["model"], folder)
    cls = registry.get(description["strategy"])
    config = cls.config_class.from_dict(description["config"])
    wrap(model, config)
    try:
        expected = adapter_tensors(model)
        check_state_dict(expected, weights, source=f"The adapter in {folder}",
                         fix="Load it onto the same base model it was trained on.")
        state = state_of(model)
        head_keys = set(state.heads.state_dict(model)) if state.heads is not None else set()
        with torch.no_grad():
            for key in head_keys:
                expected[key].copy_(weights[key])
        state.strategy.load_adapter_state_dict(model, {k: v for k, v in weights.items() if k not in head_keys})
    except BaseException:
        unwrap(model)
        raise
    return model
