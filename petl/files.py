"""Atomic writes: a file or folder appears under its real name complete, or not at all.

Everything petl writes (adapters, checkpoints, logs' summaries, benchmark results,
converted demo models) is written to a temporary name beside its destination and
renamed into place. A crash, a Ctrl-C or a full disk therefore leaves either the
old content or the new, never a half-written file under the real name, and a
folder is replaced whole. Temporary files and folders get the permissions an
ordinary ``open(path, "w")`` or ``mkdir`` would give them (``mkstemp`` and
``mkdtemp`` alone would make them private to their owner).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "make_temp_dir", "replace_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write ``path`` through ``write(tmp_path)`` to a temporary name, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, value: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write ``value`` as JSON (with a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def make_temp_dir(final: Path) -> Path:
    """A fresh hidden folder next to ``final`` to fill before :func:`replace_dir` moves it into place."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _relax_permissions(folder: Path) -> None:
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, mode)


def replace_dir(final: Path, fill: Callable[[Path], Any]) -> Path:
    """Build a folder with ``fill(tmp_folder)`` and put it at ``final`` whole.

    An existing ``final`` is moved aside first and deleted only once the new folder is
    in place, so at every moment ``final`` is either the old folder or the new one.
    If ``fill`` raises, ``final`` is left exactly as it was.

    Returns:
        ``final``.
    """
    final = Path(final)
    tmp = make_temp_dir(final)
    try:
        fill(tmp)
        _relax_permissions(tmp)
        if final.exists():
            stale = final.with_name(f".{final.name}.old")
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
            os.rename(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
