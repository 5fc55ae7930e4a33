"""Reading adapter folders written by peft's ``save_pretrained``.

Such a folder holds ``adapter_model.safetensors`` and peft's ``adapter_config.json``
but no ``petl_config.json``. For the strategies petl builds on peft (LoRA, AdaLoRA) the
tensors are in the very format ``petl.save`` writes, so ``petl.load`` only has to turn
``adapter_config.json`` into petl's description of the adapter:

* the strategy is the registered one that declares the folder's ``peft_type``
  (:func:`petl.core.registry.for_peft_type`); this module names no strategy;
* its options come from :meth:`~petl.core.strategy.StrategyBase.config_from_peft`,
  which refuses every peft option it cannot honour rather than load something that
  computes differently;
* the model signature is only the task of ``task_type``: peft records no architecture,
  so the tensor check of ``petl.load`` (names, shapes and dtypes) is what refuses a
  folder trained on another base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.core import registry
from petl.core.config import StrategyConfig
from petl.errors import CheckpointError, PetlError
from petl.tasks import PEFT_TASK_TYPES

__all__ = ["PEFT_CONFIG_NAME", "convert", "read_adapter_config", "signature"]

PEFT_CONFIG_NAME = "adapter_config.json"
_TASKS_OF_PEFT = {peft_task: task for task, peft_task in PEFT_TASK_TYPES.items()}


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of ``folder``, with a string ``peft_type``.

    Raises:
        CheckpointError: The file is unreadable, not a JSON object, or has no ``peft_type``.
    """
    path = folder / PEFT_CONFIG_NAME
    try:
        adapter_config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}). Save the adapter again.") from exc
    if not isinstance(adapter_config, dict) or not isinstance(adapter_config.get("peft_type"), str):
        raise CheckpointError(
            f"{path} is not a peft adapter config: it has no 'peft_type' string. Save the adapter again "
            "with peft's save_pretrained or with petl.save."
        )
    return adapter_config


def signature(adapter_config: dict[str, Any]) -> dict[str, Any]:
    """The part of petl's model signature a peft folder records: the task of its ``task_type``."""
    task_type = adapter_config.get("task_type")
    return {"class": None, "task": _TASKS_OF_PEFT.get(task_type) if isinstance(task_type, str) else None}


def convert(adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
            folder: Path) -> tuple[StrategyConfig, dict[str, torch.Tensor]]:
    """The strategy config and the tensors (in the strategy's own form) of a peft folder.

    Args:
        adapter_config: What :func:`read_adapter_config` returned.
        tensors: The folder's tensors, as peft saved them.
        model: The model they are for; only read.
        folder: The folder, for messages.

    Raises:
        CheckpointError: No registered strategy reads this ``peft_type``, or the folder uses
            peft options its strategy cannot reproduce; the message says which.
    """
    peft_type = adapter_config["peft_type"]
    cls = registry.for_peft_type(peft_type)
    if cls is None:
        known = sorted({vars(registry.get(name)).get("peft_type") for name in registry.available()} - {None})
        raise CheckpointError(
            f"The peft adapter in {folder} is of type {peft_type!r}, which no petl strategy reads (petl reads "
            f"{', '.join(known) or 'none'}). Load it with peft.PeftModel.from_pretrained, or install the petl "
            "plugin that provides this method."
        )
    try:
        config = cls.config_from_peft(adapter_config, model)
        return config, cls.tensors_from_peft(adapter_config, tensors)
    except PetlError as exc:
        raise CheckpointError(f"The peft adapter in {folder} cannot be loaded by petl: {exc}") from exc
