"""The trainer behind :func:`petl.train`, on Accelerate.

A call walks down this package once:

* :mod:`~petl.training.trainer`: :func:`train`, the entry point;
* :mod:`~petl.training.config`: :class:`TrainConfig`, the options;
* :mod:`~petl.training.data`: the user's data as a ``TaskData``, the epoch order, label checks;
* :mod:`~petl.training.setup`: checks and the Accelerate objects of one :class:`~petl.training.setup.Run`;
* :mod:`~petl.training.launch`: the process setup, and warnings when a launch silently falls back;
* :mod:`~petl.training.loop`: the loop (logging, evaluation, early stopping, checkpoints);
* :mod:`~petl.training.step`: one optimizer step with the strategy's hooks, also used by the benchmark;
* :mod:`~petl.training.evaluation`, :mod:`~petl.training.checkpoint`, :mod:`~petl.training.log`:
  what the loop calls;
* :mod:`~petl.training.resume` (with :mod:`~petl.training.trainer_state`): checking a
  checkpoint against the run, whole, before loading it.

The names below are imported on first use, so ``petl.training.config`` (the options
and their choices, which the benchmark's config schema reads) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["TrainConfig", "TrainResult", "train"]

_HOMES = {"TrainConfig": "petl.training.config", "TrainResult": "petl.training.loop", "train": "petl.training.trainer"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'petl.training' has no attribute {name!r}")


if TYPE_CHECKING:
    from petl.training.config import TrainConfig
    from petl.training.loop import TrainResult
    from petl.training.trainer import train
