"""petl.threads: the wait policy and thread count set before torch loads, and the
oversubscription check on a faked load reading."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from petl import threads
from petl.errors import ConfigError

VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ONE_LESS = 1 if (os.cpu_count() or 1) > 1 else 2
"""A thread count that differs from torch's default on most machines."""


def _fresh(code: str, **env: str) -> tuple[dict, str]:
    """Run ``code`` in a fresh interpreter (torch not loaded) with none of petl's variables set
    but ``env``; returns the JSON of its last line and its stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, "OMP_DISPLAY_ENV": "TRUE", **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _openmp_saw(stderr: str, policy: str) -> bool:
    """Whether OpenMP's own report (OMP_DISPLAY_ENV) shows ``policy``; True where it prints none."""
    return "OPENMP DISPLAY ENVIRONMENT" not in stderr or bool(
        re.search(rf"OMP_WAIT_POLICY\s*=\s*'{policy}'", stderr))


PROBE = (
    "import dataclasses, json, os, sys; import petl.threads as t; s = t.configure({arg}); "
    "assert 'torch' not in sys.modules; import torch; "
    "print(json.dumps({{'settings': dataclasses.asdict(s), 'torch': torch.get_num_threads(), "
    "'env': {{k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')}}}}))"
)


def test_configure_before_torch_sets_the_passive_policy_and_keeps_the_thread_default() -> None:
    out, stderr = _fresh(PROBE.format(arg=""))
    assert out["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}
    settings = out["settings"]
    assert settings["wait_policy_by"] == "petl" and settings["torch_loaded"] is False
    assert settings["threads_by"] in ("default", "cpu quota") and settings["threads"] == settings["cpus"]
    assert _openmp_saw(stderr, "PASSIVE")


def test_configure_keeps_the_users_variables_and_threads_replace_the_count() -> None:
    out, stderr = _fresh(PROBE.format(arg=""), OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS=str(ONE_LESS))
    assert out["env"]["OMP_WAIT_POLICY"] == "ACTIVE" and out["settings"]["wait_policy_by"] == "user"
    assert out["settings"]["threads_by"] == "environment" and out["torch"] == ONE_LESS
    assert _openmp_saw(stderr, "ACTIVE")
    out, _ = _fresh(PROBE.format(arg=ONE_LESS), OMP_NUM_THREADS="7", MKL_NUM_THREADS="7")
    assert out["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(ONE_LESS),
                          "MKL_NUM_THREADS": str(ONE_LESS)}
    assert out["settings"]["threads_by"] == "argument" and out["torch"] == ONE_LESS


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_configure_refuses_a_thread_count_that_is_not_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        threads.configure(bad)  # type: ignore[arg-type]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """os.environ without petl's variables, the module state and torch's thread count restored after."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_state", {"set_policy": False, "late_policy": False, "warned": False})
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_configure_after_torch_sets_the_threads_and_says_the_policy_is_late(
    environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="petl.threads"):
        settings = threads.configure(threads=1)
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert settings.torch_loaded and settings.threads == 1 and settings.threads_by == "argument"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # for the processes this one starts
    assert "torch was imported before petl.threads.configure()" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="petl.threads"):
        assert threads.configure().wait_policy_by == "petl"  # a second call: nothing new to say
    assert caplog.text == ""


def _cgroup(root: Path, lines: str, files: dict[str, str]) -> None:
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(lines)
    for name, text in files.items():
        (root / "sys" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys" / name).write_text(text)


@pytest.mark.parametrize(("lines", "files", "quota"), [
    ("0::/job\n", {"job/cpu.max": "150000 100000\n", "cpu.max": "400000 100000\n"}, 1.5),
    ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),
    ("3:cpu,cpuacct:/\n1:memory:/x\n", {"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us":
                                        "100000"}, 1.0),
    ("3:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, None),
])
def test_cgroup_quotas_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str,
                                files: dict[str, str], quota: float | None) -> None:
    _cgroup(tmp_path, lines, files)
    monkeypatch.setattr(threads, "_PROC", tmp_path / "proc")
    monkeypatch.setattr(threads, "_CGROUP", tmp_path / "sys")
    assert threads._cgroup_quota() == quota


def test_a_cpu_quota_below_the_affinity_sets_the_default(environment: pytest.MonkeyPatch) -> None:
    environment.setattr(threads, "_affinity_cpus", lambda: 8)
    environment.setattr(threads, "_cgroup_quota", lambda: 1.5)
    assert threads.available_cpus() == 2
    settings = threads.configure()
    assert (settings.threads_by, settings.cpus) == ("cpu quota", 2) and os.environ["OMP_NUM_THREADS"] == "2"
    assert torch.get_num_threads() == 2


def test_set_wait_policy_fills_in_an_environment_once() -> None:
    env: dict[str, str] = {}
    assert threads.set_wait_policy(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env["OMP_WAIT_POLICY"] = "active"
    assert not threads.set_wait_policy(env) and env == {"OMP_WAIT_POLICY": "active"}


def _machine(monkeypatch: pytest.MonkeyPatch, reading: threads.LoadReading, *, cpus: int = 2,
             torch_threads: int = 2, machine_cpus: int | None = None) -> None:
    monkeypatch.setattr(threads, "_load_reading", lambda: reading)
    monkeypatch.setattr(threads, "available_cpus", lambda: cpus)
    monkeypatch.setattr(threads, "_torch_threads", lambda cpus: torch_threads)
    monkeypatch.setattr(threads, "_machine_cpus", lambda: machine_cpus or cpus)


def test_one_busy_process_beside_two_torch_threads_on_two_cpus_is_reported(environment: pytest.MonkeyPatch) -> None:
    _machine(environment, threads.LoadReading(1.02, 1))
    message = threads.check_oversubscription()
    assert message is not None and "\n" not in message
    assert message.startswith("CPU oversubscribed: 1 runnable thread of other processes (load average 1.02) "
                              "and 2 torch threads on 2 CPUs")
    assert "OMP_WAIT_POLICY=PASSIVE" in message and "--threads 1" in message
    environment.setenv("OMP_WAIT_POLICY", "passive")  # already passive: only the thread count is advice
    assert "OMP_WAIT_POLICY" not in threads.check_oversubscription()


@pytest.mark.parametrize(("reading", "settings", "warns"), [
    (threads.LoadReading(0.1, 0), {}, False),  # idle
    (threads.LoadReading(0.9, 1), {"torch_threads": 1}, False),  # one busy process, one torch thread: it fits
    (threads.LoadReading(3.0, 3), {"torch_threads": 1}, True),
    (threads.LoadReading(2.6, None), {}, True),  # no /proc: the load average stands in
    (threads.LoadReading(0.4, None), {}, False),
    (threads.LoadReading(None, None), {}, False),  # nothing to read (Windows)
    (threads.LoadReading(8.0, 8), {"cpus": 2, "machine_cpus": 64}, False),  # 8 busy on a 64-CPU machine
])
def test_oversubscription_is_load_plus_threads_against_cpus(
    environment: pytest.MonkeyPatch, reading: threads.LoadReading, settings: dict, warns: bool
) -> None:
    _machine(environment, reading, **settings)
    assert (threads.check_oversubscription() is not None) == warns


def test_a_failing_reading_is_no_warning(environment: pytest.MonkeyPatch) -> None:
    def broken() -> threads.LoadReading:
        raise OSError("no /proc")

    environment.setattr(threads, "_load_reading", broken)
    assert threads.check_oversubscription() is None


def test_the_warning_is_logged_once_per_process(environment: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    _machine(environment, threads.LoadReading(0.0, 0))
    assert threads.warn_once_if_oversubscribed() is None  # nothing yet: a later run may still warn
    _machine(environment, threads.LoadReading(1.5, 2))
    run_logger = logging.getLogger("petl.training.test")
    with caplog.at_level(logging.WARNING):
        first = threads.warn_once_if_oversubscribed(run_logger)
        second = threads.warn_once_if_oversubscribed(run_logger)
    assert first and second is None
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("petl.training.test", first)]


@pytest.mark.skipif(not Path("/proc/loadavg").is_file(), reason="needs Linux's /proc/loadavg")
def test_the_real_reading_on_linux() -> None:
    reading = threads._load_reading(samples=2, interval_s=0.0)
    assert reading.others_running is not None and reading.others_running >= 0
    assert reading.load_average is not None and reading.load_average >= 0
    assert threads._own_running_threads() >= 1


@pytest.mark.parametrize(("reading", "settings", "fitted"), [
    (threads.LoadReading(0.1, 0), {}, 2),  # idle: every CPU
    (threads.LoadReading(1.0, 1), {}, 1),  # one busy process on two CPUs: the other one
    (threads.LoadReading(3.0, 3), {}, 1),  # more busy than CPUs: still one thread
    (threads.LoadReading(1.4, None), {"cpus": 4}, 3),  # no /proc: the load average stands in
    (threads.LoadReading(16.0, 16), {"cpus": 4, "machine_cpus": 64}, 3),  # its share of 16 busy on 64 CPUs
    (threads.LoadReading(None, None), {}, None),  # nothing to read
])
def test_fitting_threads_are_the_cpus_the_others_leave_free(
    environment: pytest.MonkeyPatch, reading: threads.LoadReading, settings: dict, fitted: int | None
) -> None:
    _machine(environment, reading, **settings)
    assert threads.fitting_threads() == fitted


def test_configure_auto_sets_the_fitting_count_and_falls_back_without_a_reading(
    environment: pytest.MonkeyPatch) -> None:
    _machine(environment, threads.LoadReading(1.0, 1))
    settings = threads.configure(threads="auto")  # torch is loaded here: the count is applied at once
    assert (settings.threads, settings.threads_by) == (1, "load") and torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1" == os.environ["MKL_NUM_THREADS"]  # for child processes
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environment.delenv(name)
    _machine(environment, threads.LoadReading(None, None))
    assert threads.configure(threads="auto").threads_by in ("default", "cpu quota")
    with pytest.raises(ConfigError, match="'auto'"):
        threads.configure(threads="some")
