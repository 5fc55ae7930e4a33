"""The output folder of a training run, checked before any training time is spent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from petl.errors import PetlError
from petl.training.checkpoint import latest_checkpoint
from petl.training.launch import partial_state

__all__ = ["check_output_dir"]


def check_output_dir(output_dir: str | None, *, resume: bool = False) -> Path | None:
    """Create ``output_dir`` and prove it writable, before any training time is spent.

    The main process creates and probes the folder; the others only check that they
    can write there, so under data parallelism no other process writes a file. A fresh
    run (``resume=False``) refuses a folder that holds an earlier run's checkpoints:
    checkpoint rotation keeps the highest step numbers, so the new run would delete its
    own checkpoints and a later resume would pick up the old run.

    Raises:
        PetlError: The folder cannot be created or written (on every process), or it
            holds checkpoints and ``resume`` is false.
    """
    if output_dir is None:
        return None
    state = partial_state()
    folder = Path(output_dir)
    problem: str | None = None
    if state.is_main_process:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".petl-write-test.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = str(exc.strerror or exc)
    state.wait_for_everyone()  # every process reaches this, failing or not, so none waits forever
    if problem is None and not state.is_main_process and not (folder.is_dir() and os.access(folder, os.W_OK)):
        problem = "the main process could not create it, or this process cannot write there"
    if problem is not None:
        raise PetlError(
            f"The output folder {folder} is not writable ({problem}). "
            "Choose another output_dir (--output), or fix its permissions."
        )
    earlier = None if resume else latest_checkpoint(folder)
    if earlier is not None:
        raise PetlError(
            f"The output folder {folder} holds {earlier.name} of an earlier run. Pass resume=True (--resume) to "
            "continue that run, or choose a new output folder: a fresh run would delete its own checkpoints and "
            "leave the earlier run's."
        )
    return folder
