"""Atomic writes: a failure leaves the old file or folder exactly as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from petl.files import atomic_write, atomic_write_json, atomic_write_text, replace_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_text_and_json(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "b.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_text("old")

    def crash(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_replace_dir_puts_a_new_folder_in_place_whole(tmp_path: Path) -> None:
    target = tmp_path / "best"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    replace_dir(target, lambda folder: (folder / "new.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()
    assert stat.S_IMODE((target / "new.txt").stat().st_mode) == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_a_failed_replace_dir_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "best"
    target.mkdir()
    (target / "kept.txt").write_text("old")

    def crash(folder: Path) -> None:
        (folder / "partial.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_dir(target, crash)
    assert [p.name for p in target.iterdir()] == ["kept.txt"] and (target / "kept.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
