"""What a training run writes besides weights: the JSON-lines log and ``metrics.json``.

Each line of ``log.jsonl`` is one JSON object: a training record every
``logging_steps`` optimizer steps::

    {"step": 20, "epoch": 0.23, "loss": 0.61, "learning_rate": 0.00094, "samples_per_second": 212.4}

and an evaluation record after each evaluation::

    {"step": 88, "eval_loss": 0.38, "eval_accuracy": 0.85, "eval_f1": 0.85}
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LOG_NAME", "METRICS_NAME", "JsonLinesLog", "LossWindow"]

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"


class JsonLinesLog:
    """Appends one JSON object per line to ``path`` (nothing when ``path`` is ``None``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: Mapping[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(dict(record)) + "\n")


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
