"""How many processes a run has, and warnings where a launch silently ran differently than asked.

Accelerate narrows two launches without a word, and petl warns (once per process, with
``logging``) about both:

* ``accelerate launch --num_processes N`` with ``--cpu``, or on a machine without GPUs,
  uses Accelerate's simple launcher, which starts the script once: only ``--multi_gpu``
  (torchrun underneath) and ``--mpirun_hostfile`` start several processes. It still sets
  ``MASTER_ADDR`` / ``MASTER_PORT`` (which it does only for more than one process or
  machine) but no ``WORLD_SIZE``, and that is how the run below recognises it.
  ``torchrun --nproc_per_node N`` and ``accelerate launch --multi_gpu --num_processes N``
  (without ``--cpu``) do start N processes, on CPUs too (petl then uses gloo).
* An FSDP configuration (``distributed_type: FSDP`` or ``--use_fsdp``, seen as
  ``ACCELERATE_USE_FSDP=true``) on a machine without an accelerator: Accelerate shards
  only on accelerator devices, so the processes run plain data parallelism (DDP over
  gloo), each holding the whole model, gradients and optimizer state (or, with
  ``fsdp_sync_module_states``, Accelerate refuses to start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["cpu_processes", "fsdp_without_device", "has_device", "partial_state", "single_process_launch",
           "warn_about_launch"]

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()  # the warnings given in this process
_MPI_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LAUNCHED = ("ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU")
"""Variables every ``accelerate launch`` sets for the script it starts."""


def has_device() -> bool:
    """Whether torch sees an accelerator device (a CUDA GPU, XPU, MPS...)."""
    device_api = getattr(torch, "accelerator", None)
    return device_api.is_available() if device_api is not None else torch.cuda.is_available()


def cpu_processes() -> bool:
    """Whether this is one of several processes on a machine without an accelerator device.

    Accelerate sets up gloo for such a run only when asked for the CPU explicitly
    (``accelerate launch --cpu`` does it; plain ``torchrun`` does not).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return not has_device()


def partial_state() -> Any:
    """Accelerate's process state for this run (gloo on CPUs when there are several processes)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_processes())


def _count(env: Mapping[str, str], name: str) -> int | None:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        return None


def single_process_launch(num_processes: int, env: Mapping[str, str] | None = None) -> str | None:
    """The warning for a run of one process where the launcher asked for more, or ``None``."""
    env = os.environ if env is None else env
    if num_processes != 1:
        return None
    world = _count(env, "WORLD_SIZE")
    if world is not None and world > 1:
        evidence = f"WORLD_SIZE={world} says {world} processes were started, but Accelerate runs this one alone"
    elif (any(name in env for name in _LAUNCHED) and world is None and "MASTER_PORT" in env
          and not any(name in env for name in _MPI_SIZES)):
        evidence = ("`accelerate launch` was asked for more than one process (it set MASTER_ADDR/MASTER_PORT, "
                    "which it does only then) but started the script once: with --cpu, or on a machine without "
                    "GPUs, it uses its simple launcher, which starts one process (only --multi_gpu and "
                    "--mpirun_hostfile start several)")
    else:
        return None
    return (f"This run has 1 process: {evidence}. It trains in this process alone, with no data parallelism. To "
            "train in N processes on CPUs start it with `torchrun --nproc_per_node N script.py`, or with "
            "`accelerate launch --multi_gpu --num_processes N script.py` (without --cpu; petl then uses gloo).")


def fsdp_without_device(env: Mapping[str, str] | None = None, device: bool | None = None) -> str | None:
    """The warning for an FSDP configuration on a machine without an accelerator device, or ``None``."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or (has_device() if device is None else device):
        return None
    return ("An FSDP configuration is set (ACCELERATE_USE_FSDP=true: `distributed_type: FSDP` or --use_fsdp), but "
            "this machine has no GPU or other accelerator and Accelerate shards only on accelerators: the run does "
            "not shard anything. Its processes run plain data parallelism (DDP over gloo), each holding the whole "
            "model, its gradients and optimizer state. To shard, run on GPUs, or use FSDP2 "
            "(torch.distributed.fsdp.fully_shard) in your own training loop; on CPUs, launch without FSDP.")


def warn_about_launch(message: str | None, key: str) -> None:
    """Log ``message`` as a warning, once per process for each ``key`` (on the first process only)."""
    if _count(os.environ, "RANK") not in (None, 0):
        return  # every process would say the same
    if message is not None and key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)
