"""Saving a model whose parameters are sharded across processes (FSDP2's ``fully_shard``).

After ``torch.distributed.fsdp.fully_shard`` every parameter is a DTensor: each process
holds one shard of it (``Shard(0)``: a slice of its rows). ``petl.save`` and the trainer's
checkpoints turn such tensors back into whole ones with :func:`gather_full` and write
them from the main process alone, through :func:`run_on_main_process`::

    petl.wrap(model, "lora", r=8)          # wrap first: fully_shard then shards the adapter too
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    ...                                    # train
    petl.save(model, "out/")               # on EVERY rank: the gather is a collective

Under FSDP every rank must call ``petl.save`` (and the trainer's checkpoint writer):
``DTensor.full_tensor()`` is a collective that each process of the mesh enters, in the
same order, so a save called on rank 0 alone waits for the others until the process
group's timeout. Only rank 0 writes the folder; the other ranks wait until it is written
and return its path, or raise if rank 0 failed.

A model without DTensors (one process, DDP, or the unsharded state of a module) goes
through unchanged and without any collective, so calling ``petl.save`` on rank 0 alone
stays valid there; under ``torch.distributed`` only rank 0 writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import TypeVar

import torch
import torch.distributed as dist

from petl.errors import PetlError

__all__ = ["full_tensor", "gather_full", "is_distributed", "is_main_process", "is_sharded", "run_on_main_process"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_MESSAGE = 4000
"""The bytes of rank 0's error message passed to the other ranks."""


@cache
def _dtensor_class() -> type | None:
    # torch.distributed.tensor is public from torch 2.5; a build without distributed support has none.
    if not dist.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a tensor split or replicated over processes)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0 of the default process group, or ``True`` when there is none."""
    return not is_distributed() or dist.get_rank() == 0


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of ``tensor``: a DTensor is gathered (a collective: every rank must call it)."""
    if not is_sharded(tensor):
        return tensor
    with torch.no_grad():
        return tensor.full_tensor()


def gather_full(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every DTensor replaced by its whole value, gathered from all processes.

    Plain tensors are returned as they are (the same objects), and the dict keeps the
    order of ``tensors``. The DTensors are gathered one by one in the order of their
    sorted keys, so every rank enters the same collectives in the same order.

    Under FSDP every rank must call this with the same keys: each gather is a
    collective, and a rank that does not take part leaves the others waiting.

    Args:
        tensors: Tensors by name, for example a model's adapter state dict.

    Returns:
        A new dict with the same keys, holding no DTensor.
    """
    full = dict(tensors)
    for key in sorted(key for key, tensor in tensors.items() if is_sharded(tensor)):
        full[key] = full_tensor(tensors[key])
    return full


def run_on_main_process(action: Callable[[], T], *, collective: bool, what: str) -> T | None:
    """Run ``action`` (a write) on the main process only; with ``collective``, make every rank wait for it.

    Without ``collective`` (nothing was gathered, so the other ranks may not be here at
    all, as when a DDP trainer saves from rank 0 alone) there is no communication: the
    main process runs ``action`` and the others return ``None`` at once.

    With ``collective`` every rank must call this. Rank 0 runs ``action`` and then
    broadcasts its outcome (an empty message, or its error) to the others, which wait for
    that broadcast. Rank 0 broadcasts whether ``action`` succeeded or raised, so a failed
    write cannot leave the others waiting on a barrier that rank 0 never reaches, and the
    others learn that it failed instead of returning the path of a folder never written.
    Only a rank 0 that dies outright (``kill -9``) leaves them to the process group's
    timeout, or to the launcher (``torchrun`` stops the other workers when one exits).

    Args:
        action: The write, run on rank 0.
        collective: Whether every rank calls this (the tensors were gathered).
        what: What ``action`` does, for the other ranks' error ("write the adapter to out/").

    Returns:
        What ``action`` returned on rank 0; ``None`` on the other ranks.

    Raises:
        PetlError: On a rank other than 0, when rank 0 failed (rank 0 raises its own error).
    """
    if not is_distributed() or not collective:
        return action() if is_main_process() else None
    if is_main_process():
        try:
            result = action()
        except BaseException as exc:
            try:
                _share_outcome(_describe(exc))
            except Exception as sync_error:  # the original error matters more than a failed broadcast
                logger.warning("Could not tell the other ranks that rank 0 failed to %s: %s", what, sync_error)
            raise
        _share_outcome("")
        return result
    failure = _share_outcome(None)
    if failure:
        raise PetlError(
            f"Rank 0 failed to {what}, so nothing was written: {failure}. Fix the cause reported by rank 0 "
            "and save again (on every rank)."
        )
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _share_outcome(message: str | None) -> str:
    """Broadcast rank 0's ``message`` ("" for success) to every rank, as bytes (nothing is pickled)."""
    device = _collective_device()
    data = (message or "").encode("utf-8")[:_MAX_MESSAGE]
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if int(size.item()) == 0:
        return ""
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if message is not None
              else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode("utf-8", errors="replace")


def _collective_device() -> torch.device:
    """Where the default process group's collectives take their tensors: CPU for gloo, the accelerator for NCCL."""
    if "gloo" in str(dist.get_backend()):
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator.type, torch.accelerator.current_device_index())
