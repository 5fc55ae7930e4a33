"""What a training run writes besides weights: the JSON-lines log and ``metrics.json``.

Each line of ``log.jsonl`` is one JSON object: a training record every
``logging_steps`` optimizer steps::

    {"step": 20, "epoch": 0.23, "loss": 0.61, "learning_rate": 0.00094, "samples_per_second": 212.4}

and an evaluation record after each evaluation::

    {"step": 88, "eval_loss": 0.38, "eval_accuracy": 0.85, "eval_f1": 0.85}

A fresh run starts a fresh log; a resumed run keeps the records written before its
checkpoint and drops those the interrupted run wrote after it
(:meth:`JsonLinesLog.restart`), so an interrupted and resumed run leaves the log an
uninterrupted run writes (the throughput aside).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from petl.files import atomic_write_text

__all__ = ["LOG_NAME", "METRICS_NAME", "JsonLinesLog", "LossWindow"]

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"

logger = logging.getLogger(__name__)


class JsonLinesLog:
    """Appends one JSON object per line to ``path`` (nothing when ``path`` is ``None``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records = 0
        """The lines of the file that belong to this run (a checkpoint records it)."""

    def write(self, record: Mapping[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(dict(record)) + "\n")
            self.records += 1

    def restart(self, step: int, records: int | None = None) -> None:
        """Keep what a run starting at ``step`` has already written: the first ``records``
        lines when the checkpoint counted them, else every line but the records of steps
        after ``step``. A last line cut short by a crash goes too. The file is rewritten
        atomically, and only when something is dropped.

        Args:
            step: The step the run starts at (0 for a fresh run: the log starts empty).
            records: The number of lines written up to the checkpoint, if it says.
        """
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        if step == 0:
            kept: list[str] = []
        elif records is not None:
            kept = lines[:records]
        else:
            kept = [line for line in lines if not _after(line, step)]
        if kept and not kept[-1].endswith("\n") and _parse(kept[-1]) is None:
            kept.pop()
        self.records = len(kept)
        if len(kept) != len(lines):
            logger.info("%s: dropped %d line(s) written after step %d.", self.path, len(lines) - len(kept), step)
            atomic_write_text(self.path, "".join(kept))


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _after(line: str, step: int) -> bool:
    record = _parse(line)
    if not isinstance(record, dict):
        return False
    value = record.get("step")
    return isinstance(value, int) and not isinstance(value, bool) and value > step


class LossWindow:
    """The losses and examples since the last log record, for its mean loss and throughput."""

    def __init__(self) -> None:
        self.last = float("nan")
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        self.last = loss

    def mean(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def throughput(self) -> float:
        """Examples per second over every process."""
        return self.samples / max(time.perf_counter() - self.started, 1e-9)
