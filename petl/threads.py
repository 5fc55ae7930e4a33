"""CPU threads that behave on a machine shared with other processes.

torch runs its CPU kernels on an OpenMP thread pool. With OpenMP's default wait
policy a pool thread that runs out of work spins on its core for a while, waiting
for the next parallel region, and every parallel region waits for its slowest
thread. Once another process holds one of the cores, the threads that spin take CPU
time from the one thread that still has work, so each region takes far longer than
its share of the machine. With ``OMP_WAIT_POLICY=PASSIVE`` a waiting thread sleeps
instead. Measured on a 2-core machine beside one busy process: a MiniLM LoRA step
took 4.9 s with the default and 1.3-1.8 s with the passive policy, and ``petl train``
on SST-2 (batch 32 x 64) ran at 12.8 samples/s against 39.1 when the machine was
idle. ``benchmarks/shared_cpu.py`` measures it again.

OpenMP reads its environment once, when torch loads it, so :func:`configure` has to
run before the first ``import torch`` (also before ``transformers`` or any petl
function that loads a model)::

    import petl.threads

    petl.threads.configure()            # the passive wait policy, torch's thread count
    petl.threads.configure(threads=1)   # and one intra-op thread
    import torch

Called after torch was imported, :func:`configure` still sets the number of threads
(``torch.set_num_threads``) and logs that the wait policy only reaches processes
started from then on. A value the user set in the environment is never replaced,
except that an explicit ``threads`` replaces ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.
Child processes (benchmark workers, data loader workers) inherit what it sets.

:func:`check_oversubscription` compares the threads other processes keep runnable
with the CPUs this process may use, so a run can say why its steps are slow. Both are
written for Linux and degrade to doing less elsewhere: without CPU affinity the CPU
count is ``os.cpu_count()``, without ``/proc`` the other processes' load comes from
``os.getloadavg()``, and where neither exists there is no warning.

This module imports only the standard library, so the ``petl`` command can call it
before anything heavy loads.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from petl.errors import ConfigError

__all__ = [
    "WAIT_POLICY",
    "LoadReading",
    "ThreadSettings",
    "available_cpus",
    "check_oversubscription",
    "configure",
    "fitting_threads",
    "set_wait_policy",
    "warn_once_if_oversubscribed",
]

logger = logging.getLogger(__name__)

WAIT_POLICY = "PASSIVE"
"""The ``OMP_WAIT_POLICY`` petl sets: waiting OpenMP threads sleep instead of spinning."""

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_CGROUP = Path("/sys/fs/cgroup")
_PROC = Path("/proc")
_state = {"set_policy": False, "late_policy": False, "warned": False}
"""``set_policy``: configure() set the wait policy (it was not the user's); ``late_policy``: it
did so after torch had loaded OpenMP, so this process still spins; ``warned``:
warn_once_if_oversubscribed() has logged its warning."""


@dataclass(frozen=True)
class ThreadSettings:
    """What :func:`configure` found and set.

    Attributes:
        wait_policy: ``OMP_WAIT_POLICY`` as it now is in the environment.
        wait_policy_by: ``"user"`` (it was already set, and kept) or ``"petl"``.
        threads: The intra-op threads torch uses, or (before torch is imported) the
            number it will be asked for; torch caps a number from the environment at
            the machine's logical CPUs.
        threads_by: Where that number comes from: ``"argument"`` (``threads``),
            ``"load"`` (``threads="auto"``: the CPUs others left free), ``"environment"``
            (the user's ``OMP_NUM_THREADS``), ``"cpu quota"`` (a
            cgroup limit below the CPUs in the affinity mask) or ``"default"`` (torch's
            own choice: one per CPU this process may use).
        cpus: The CPUs this process may use (:func:`available_cpus`).
        torch_loaded: torch was already imported: the wait policy and the thread
            variables reach only processes started from now on; the thread count was
            applied with ``torch.set_num_threads``.
    """

    wait_policy: str
    wait_policy_by: str
    threads: int
    threads_by: str
    cpus: int
    torch_loaded: bool


class LoadReading(NamedTuple):
    """What other processes do with the CPUs right now.

    Attributes:
        load_average: The 1-minute load average (``os.getloadavg()[0]``), or ``None``.
        others_running: Runnable threads of other processes (from ``/proc/loadavg``, less
            this process's own running threads; the median of a few samples), or ``None``
            without ``/proc``.
    """

    load_average: float | None
    others_running: int | None


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_quota() -> float | None:
    """The CPUs a cgroup quota allows (``docker --cpus``, Kubernetes limits), or ``None``."""
    limits: list[float] = []
    for line in (_read(_PROC / "self" / "cgroup") or "").splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max of the process's cgroup and of its ancestors
            folder = _CGROUP / path.lstrip("/")
            for candidate in (folder, *(p for p in folder.parents if p.is_relative_to(_CGROUP))):
                fields = (_read(candidate / "cpu.max") or "").split()
                if len(fields) == 2 and fields[0] != "max" and float(fields[1]) > 0:
                    limits.append(float(fields[0]) / float(fields[1]))
        elif "cpu" in controllers.split(","):  # cgroup v1: the process's cgroup, or the mount's root in a container
            mount = _CGROUP / controllers
            for folder in (mount / path.lstrip("/"), mount):
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota and period and quota.isdigit() and period.isdigit() and int(quota) > 0 < int(period):
                    limits.append(int(quota) / int(period))
                    break
    return min(limits) if limits else None


def _machine_cpus() -> int:
    return os.cpu_count() or 1


def available_cpus() -> int:
    """The CPUs this process may use: those in its affinity mask (``os.sched_getaffinity``,
    which torch's default thread count follows too), fewer where a cgroup CPU quota allows
    less (rounded up), ``os.cpu_count()`` where the system has no affinity masks."""
    cpus = _affinity_cpus()
    try:
        quota = _cgroup_quota()
    except (OSError, ValueError):
        quota = None
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _env_threads(env: MutableMapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a number (its first level, for a nested list such as ``4,2``)."""
    first = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def set_wait_policy(env: MutableMapping[str, str]) -> bool:
    """Set ``OMP_WAIT_POLICY`` to :data:`WAIT_POLICY` in ``env`` unless it is set already.

    Args:
        env: ``os.environ``, or the environment of a process about to be started.

    Returns:
        Whether it was set (``False``: the value already there is kept).
    """
    if env.get("OMP_WAIT_POLICY"):
        return False
    env["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True


def fitting_threads() -> int | None:
    """The intra-op threads that fit beside the other processes' load right now: the CPUs this
    process may use less the threads other processes keep runnable (their share of them, as
    :func:`check_oversubscription` counts it), at least 1; ``None`` when the load cannot be read."""
    load = _competing_load()
    if load is None:
        return None
    _, cpus, _, competing = load
    return max(1, cpus - competing)


def _competing_load() -> tuple[LoadReading, int, int, int] | None:
    """``(reading, cpus, others, competing)``: the load reading, the CPUs this process may use,
    the threads other processes keep runnable, and those of them on these CPUs (where this
    process may use only some of the machine's CPUs, its share of the others' load); ``None``
    when the load cannot be read."""
    try:
        reading = _load_reading()
        cpus = available_cpus()
    except Exception:  # noqa: BLE001 - a diagnostic must never stop a run
        logger.debug("Could not read the CPU load", exc_info=True)
        return None
    if reading.others_running is not None:
        others = reading.others_running
    elif reading.load_average is not None:
        others = round(reading.load_average)
    else:
        return None
    return reading, cpus, others, round(others * cpus / max(cpus, _machine_cpus()))


def configure(threads: int | str | None = None) -> ThreadSettings:
    """Make torch's CPU threads behave on a shared machine; call it before ``import torch``.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already has a wait policy.
    With ``threads``, sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to it (replacing
    values in the environment: the argument is the more specific wish). ``threads="auto"``
    is :func:`fitting_threads`: the CPUs other processes leave free when it is called (all of
    them on an idle machine); where the load cannot be read it acts as ``None``. Without it, a
    thread count already in the environment is kept, and otherwise torch keeps its
    default of one thread per CPU this process may use; only where a cgroup quota allows
    fewer CPUs than that (a container with a CPU limit, where torch would start a thread
    for every CPU of the host) are the variables set to the quota.

    Args:
        threads: The intra-op threads for torch; ``None`` for the default above.

    Returns:
        The :class:`ThreadSettings` in effect.

    Raises:
        ConfigError: ``threads`` is not a positive integer.
    """
    if threads is not None and threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int)
                                                      or threads < 1):
        raise ConfigError(f"threads must be a positive integer (the CPU threads torch may use) or 'auto', got "
                          f"{threads!r}. Pass a number such as 1 or 2, 'auto' for the CPUs other processes leave "
                          "free, or None to keep torch's default.")
    env = os.environ
    torch = sys.modules.get("torch")
    policy_set = set_wait_policy(env)
    cpus = available_cpus()
    asked = fitting_threads() if threads == "auto" else threads  # None: "auto" could not read the load
    if asked is not None:
        count, by = asked, "load" if threads == "auto" else "argument"
    else:
        count, by = _env_threads(env), "environment"
    if count is None:
        count, by = cpus, "cpu quota" if cpus < _affinity_cpus() else "default"
    if by in ("argument", "load"):
        env.update({name: str(count) for name in _THREAD_VARIABLES})
    elif by == "cpu quota":
        for name in _THREAD_VARIABLES:
            env.setdefault(name, str(count))
    if count > cpus:
        logger.warning("%d torch threads on the %d CPUs this process may use: the threads will wait for each "
                       "other. Pass a thread count of %d or less.", count, cpus, cpus)
    _state["set_policy"] = _state["set_policy"] or policy_set
    if torch is not None:
        if policy_set:
            _state["late_policy"] = True
            logger.warning("torch was imported before petl.threads.configure(), so OMP_WAIT_POLICY=%s reaches only "
                           "processes started from now on; this one keeps spinning threads. Set OMP_WAIT_POLICY=%s "
                           "in the environment, or call petl.threads.configure() before importing torch.",
                           WAIT_POLICY, WAIT_POLICY)
        if by in ("argument", "load", "cpu quota"):
            torch.set_num_threads(count)
        count = torch.get_num_threads()
    by_petl = "petl" if _state["set_policy"] and env["OMP_WAIT_POLICY"] == WAIT_POLICY else "user"
    settings = ThreadSettings(wait_policy=env["OMP_WAIT_POLICY"], wait_policy_by=by_petl,
                              threads=count, threads_by=by, cpus=cpus, torch_loaded=torch is not None)
    logger.debug("CPU threads: %s", settings)
    return settings


def _own_running_threads() -> int:
    """This process's threads in the running state (at least the one reading)."""
    running = 0
    try:
        for task in (_PROC / "self" / "task").iterdir():
            stat = _read(task / "stat") or ""
            running += stat.rpartition(")")[2].split()[:1] == ["R"]
    except OSError:
        return 1
    return max(1, running)


def _load_reading(samples: int = 5, interval_s: float = 0.02) -> LoadReading:
    """Sample the machine's load; see :class:`LoadReading`."""
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        load = None
    others: list[int] = []
    for index in range(samples):
        fields = (_read(_PROC / "loadavg") or "").split()
        if len(fields) < 4 or not fields[3].partition("/")[0].isdigit():
            break
        others.append(max(0, int(fields[3].partition("/")[0]) - _own_running_threads()))
        if index + 1 < samples:
            time.sleep(interval_s)
    return LoadReading(load, round(statistics.median(others)) if others else None)


def _torch_threads(cpus: int) -> int:
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return _env_threads(os.environ) or cpus


def _passive() -> bool:
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == WAIT_POLICY and not _state["late_policy"]


def check_oversubscription() -> str | None:
    """A one-line warning when other processes and torch's threads want more CPUs than there are.

    The threads other processes keep runnable come from ``/proc/loadavg`` (its count of
    running threads, less this process's own; the median of five samples over 0.1 s),
    or from the 1-minute load average where there is no ``/proc``. When this process may
    use only some of the machine's CPUs, the others are assumed spread evenly over all of
    them. It is oversubscribed when that load and torch's intra-op threads together
    exceed :func:`available_cpus`. (Inside a container ``/proc/loadavg`` may count the
    host's processes.)

    Returns:
        The warning, with what to change, or ``None`` when the CPUs suffice or the load
        cannot be read.
    """
    load = _competing_load()
    if load is None:
        return None
    reading, cpus, others, competing = load
    try:
        threads = _torch_threads(cpus)
    except Exception:  # noqa: BLE001 - a diagnostic must never stop a run
        logger.debug("Could not read torch's thread count", exc_info=True)
        return None
    if competing + threads <= cpus:
        return None
    load = f" (load average {reading.load_average:.2f})" if reading.load_average is not None else ""
    advice = []
    if not _passive():
        advice.append(f"set OMP_WAIT_POLICY={WAIT_POLICY} before torch is imported (petl.threads.configure())")
    fitting = max(1, cpus - competing)
    if threads > fitting:
        advice.append(f"use {fitting} thread{'s' if fitting > 1 else ''} (--threads {fitting}, "
                      f"or petl.threads.configure(threads={fitting}))")
    fix = " and ".join(advice) if advice else "run when the machine is quieter"
    return (f"CPU oversubscribed: {others} runnable thread{'s' if others != 1 else ''} of other processes{load} "
            f"and {threads} torch thread{'s' if threads != 1 else ''} on {cpus} CPU{'s' if cpus != 1 else ''}; "
            f"steps may be several times slower. To fix: {fix}.")


def warn_once_if_oversubscribed(log: logging.Logger | None = None) -> str | None:
    """Log :func:`check_oversubscription`'s warning, once per process, at the start of a run.

    Args:
        log: The logger to warn on (this module's by default).

    Returns:
        The warning when one was logged now, else ``None`` (no oversubscription, or
        already warned in this process).
    """
    if _state["warned"]:
        return None
    message = check_oversubscription()
    if message:
        _state["warned"] = True
        (log or logger).warning(message)
    return message
