"""Memory and size measurements of one benchmark process.

On the CPU, a run's memory is the peak resident set size of the fresh process it
runs in (:func:`peak_rss_mib`: ``VmHWM`` on Linux, ``ru_maxrss`` elsewhere),
read once the data is tokenised and the model loaded and wrapped, and once after
training, so that

    training increment = peak RSS after training - peak RSS before training

is what training adds on top of holding the model (gradients, optimizer states,
activations). On a GPU the same two readings come from
``torch.cuda.max_memory_allocated`` (the peak counter is reset after loading).
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["MIB", "cuda_memory_mib", "peak_rss_mib", "saved_size", "tree_bytes"]

MIB = 1024 * 1024


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss``
    survives ``fork`` and ``exec``, so a worker started by a large process (a notebook
    kernel, a test runner) would report its parent's peak instead of its own.
    Elsewhere it is ``ru_maxrss`` (kibibytes on Linux-likes, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def cuda_memory_mib(*, peak: bool) -> float:
    """The CUDA memory allocated by torch now (or at its peak since the last reset), in MiB."""
    value = torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
    return value / MIB


def tree_bytes(folder: Path, suffix: str | None = None) -> int:
    """The total size of the files under ``folder`` (only those ending in ``suffix`` if given)."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in files if suffix is None or p.name.endswith(suffix))


def saved_size(model: nn.Module, *, full: bool) -> int:
    """Bytes on disk of what a user keeps after training.

    For a wrapped model: every file ``petl.save`` writes (adapter weights, petl_config.json
    and the strategy's extra files). For full fine-tuning: every weight of the model in one
    safetensors file (shared tensors once), which is what a fully fine-tuned model costs
    to keep; ``save_pretrained`` is not used because it refuses models loaded from GGUF.
    """
    from safetensors.torch import save_model

    from petl.core.io import save

    folder = Path(tempfile.mkdtemp(prefix="petl-bench-size-"))
    try:
        if full:
            save_model(model, str(folder / "model.safetensors"))
            return tree_bytes(folder, ".safetensors")
        save(model, folder)
        return tree_bytes(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
