"""Where and with what a benchmark ran: versions, hardware, the petl commit and the date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["collect_environment", "environment_lines", "environment_section", "load_average"]

PACKAGES = ("torch", "transformers", "peft", "accelerate", "petl", "bitsandbytes", "datasets")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git(*args: str) -> str | None:
    checkout = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def load_average() -> list[float] | None:
    """The system load over the last 1, 5 and 15 minutes, or ``None`` where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def collect_environment() -> dict[str, Any]:
    """A JSON-ready description of this machine and software.

    Keys: ``date`` (UTC, ISO 8601), ``python``, ``versions`` (torch, transformers, peft,
    accelerate, petl, ...), ``platform``, ``cpu``, ``cpu_count`` (logical CPUs),
    ``cpus_available`` (those this process may use), ``torch_threads``, ``load_average``
    (1, 5 and 15 minutes, where the OS reports it: other work on the machine), ``gpu``
    (name or ``None``), ``cuda`` (torch's CUDA version or ``None``), ``git_commit``
    and ``git_dirty`` (``None`` outside a git checkout).
    """
    import torch

    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        available = os.cpu_count() or 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
    }


def environment_lines(env: dict[str, Any]) -> list[str]:
    """Markdown bullet lines describing a :func:`collect_environment` record (with
    ``load_average_end`` added when the work is over), for result files."""
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    load = env.get("load_average")
    lines = [
        f"* Python {env.get('python')}; {versions}",
        f"* CPU: {env.get('cpu')} ({env.get('cpus_available')} of {env.get('cpu_count')} logical CPUs available, "
        f"{env.get('torch_threads')} torch threads); GPU: {env.get('gpu') or 'none'}",
        f"* petl commit {env.get('git_commit') or 'unknown'}{' (with local changes)' if env.get('git_dirty') else ''}",
    ]
    if load:
        shared = load[0] > 0.5 * (env.get("cpus_available") or 1)
        lines.append(
            f"* system load average (1/5/15 min) {load} at the start, {env.get('load_average_end')} at the end: "
            "other processes shared the CPUs" if shared else f"* system load average (1/5/15 min) {load} at the start"
        )
    return lines


def environment_section(env: dict[str, Any]) -> list[str]:
    """The ``## Environment`` section of a Markdown result file: heading, :func:`environment_lines`
    and a closing blank line."""
    return ["## Environment", "", *environment_lines(env), ""]
