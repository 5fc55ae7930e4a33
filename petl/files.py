"""Atomic writes: a file or folder appears under its real name complete, or not at all.

Everything petl writes (adapters, checkpoints, logs' summaries, benchmark results,
converted demo models) is written to a temporary name beside its destination, flushed
to disk and renamed into place. A crash, a Ctrl-C, a ``kill -9`` or a full disk
therefore leaves either the old content or the new, never a half-written file under
the real name, and a folder is replaced whole (on Linux in one atomic exchange, so a
reader never finds the folder missing either).

Temporary names are ``.NAME.petl-PID-XXXXXXXX.tmp`` beside ``NAME`` (``PID`` is the
writing process); a folder being replaced without the atomic exchange is moved aside to
``.NAME.old``. What a killed process leaves under these names is cleaned up by the
next write to the same ``NAME``; the temporaries of a process that is still running are
left alone. Temporary files and folders get the permissions an ordinary
``open(path, "w")`` or ``mkdir`` would give them (``mkstemp`` and ``mkdtemp`` alone
would make them private to their owner).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "make_temp_dir", "replace_dir"]

_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.petl-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _clean_leftovers(path: Path) -> None:
    """Remove the temporaries that killed writers of ``path`` left beside it.

    A ``.NAME.old`` folder with no ``NAME`` beside it is the previous folder of a
    replacement killed half way: it is put back rather than deleted.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:petl-(\d+)-{_RANDOM}|{_RANDOM})\.tmp")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name == f".{path.name}.old":
            if not os.path.lexists(path):
                os.rename(entry, path)
            else:
                _remove(entry)
            continue
        match = pattern.fullmatch(entry.name)
        if match and not (match.group(1) and _alive(int(match.group(1)))):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path | str, *, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk, so a power cut after the rename keeps it."""
    if directory and os.name == "nt":
        return  # Windows cannot open a folder for fsync
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # a file system without fsync
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write ``path`` through ``write(tmp_path)`` to a temporary name, then rename it into place."""
    path = Path(path)
    _clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, value: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write ``value`` as JSON (with a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def make_temp_dir(final: Path) -> Path:
    """A fresh hidden folder next to ``final`` to fill before :func:`replace_dir` moves it into place."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
    except BaseException:
        tmp.rmdir()
        raise
    return tmp


def _finish_tree(folder: Path) -> None:
    """Give the files ordinary permissions and flush them and the folders to disk."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_file():
            os.chmod(path, mode)
            _fsync(path)
        elif path.is_dir():
            _fsync(path, directory=True)
    _fsync(folder, directory=True)


@cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, some musl builds)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        ``False`` where the system or the file system cannot do it; nothing was changed.
    """
    function = _renameat2()
    if function is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    # EPERM: a seccomp filter (some container runtimes) that blocks the call; a real permission
    # problem makes the plain renames fail with their own error.
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_dir(final: Path, fill: Callable[[Path], Any]) -> Path:
    """Build a folder with ``fill(tmp_folder)`` and put it at ``final`` whole.

    The new folder replaces an existing ``final`` in one atomic exchange where the
    system allows it (Linux); elsewhere the old folder is moved aside to ``.NAME.old``
    first and deleted once the new one is in place (a killed process then leaves it for
    the next write to put back or remove). Either way ``final`` is the old folder or the
    new one, never a mix, and if ``fill`` raises (or anything else fails), ``final`` is
    left exactly as it was. Temporaries a killed writer of ``final`` left are removed first.
    A symbolic link at ``final`` stays; the folder it points to is replaced.

    Returns:
        ``final``.

    Raises:
        NotADirectoryError: ``final`` exists and is not a folder.
        OSError: The folder cannot be written.
    """
    final = Path(final)
    if final.is_symlink():
        final = Path(os.path.realpath(final))  # replace the folder the link points to, and keep the link
    if os.path.lexists(final) and not final.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a folder, so it cannot be replaced by one", str(final))
    _clean_leftovers(final)
    tmp = make_temp_dir(final)
    stale = final.with_name(f".{final.name}.old")
    try:
        fill(tmp)
        _finish_tree(tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
            os.rename(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        _fsync(final.parent, directory=True)
    except BaseException:
        if stale.exists():
            if os.path.lexists(final):
                shutil.rmtree(stale, ignore_errors=True)  # the new folder is in place: the old one goes
            else:
                os.rename(stale, final)  # moved aside, but the new folder did not make it: the old one is back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
