"""``--threads`` and the wait policy through the ``petl`` command: each subcommand sets them
up before torch loads, in a fresh interpreter as a user's shell would start it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from petl.cli import build_parser, main
from petl.modeling.demo import minilm_path

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ONE_LESS = 1 if (os.cpu_count() or 1) > 1 else 2
"""A thread count that differs from torch's default on most machines."""

PROBE = """
import json, os, sys
from petl.cli import main
assert "torch" not in sys.modules, "building the command imported torch"
code = main(sys.argv[1:])
import torch
print(json.dumps({"code": code, "threads": torch.get_num_threads(),
                  "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}}))
"""
"""Runs ``petl ARGS`` in this interpreter, then reports the thread count the run left in torch."""


def _petl(*argv: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], env={**clean, "OMP_DISPLAY_ENV": "TRUE", **env},
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _openmp_saw(stderr: str, policy: str) -> bool:
    """Whether OpenMP's own report (OMP_DISPLAY_ENV) shows ``policy``; True where it prints none."""
    return "OPENMP DISPLAY ENVIRONMENT" not in stderr or bool(
        re.search(rf"OMP_WAIT_POLICY\s*=\s*'{policy}'", stderr))


ESTIMATE = ("estimate", "minilm", "--strategy", "lora", "--precision", "fp32", "--json")


def test_estimate_sets_the_passive_policy_before_torch_loads_and_threads_set_torch() -> None:
    out, stderr = _petl(*ESTIMATE, "--threads", str(ONE_LESS))
    assert out["code"] == 0
    assert out["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(ONE_LESS)}
    assert out["threads"] == ONE_LESS
    assert _openmp_saw(stderr, "PASSIVE")


def test_an_explicit_wait_policy_of_the_user_is_kept() -> None:
    out, stderr = _petl(*ESTIMATE, OMP_WAIT_POLICY="ACTIVE")
    assert out["code"] == 0 and out["env"] == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": None}
    assert _openmp_saw(stderr, "ACTIVE")


def test_train_runs_with_the_threads_asked_for(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{int('fine' in s)}\n" for s in ["a fine film", "dull"] * 4))
    out, stderr = _petl("train", "--model", str(tiny_model_dir), "--tokenizer", str(minilm_path()),
                        "--task", "sequence-classification", "--train", str(data), "--max-length", "8",
                        "--batch-size", "4", "--max-steps", "1", "--output", str(tmp_path / "run"), "--no-progress",
                        "--threads", str(ONE_LESS))
    assert out["code"] == 0 and out["threads"] == ONE_LESS and out["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert _openmp_saw(stderr, "PASSIVE")


REQUIRED = {
    "train": ["--model", "m", "--task", "sequence-classification", "--train", "t.tsv", "--output", "out"],
    "bench": [],
    "estimate": ["minilm"],
}


@pytest.mark.parametrize("command", sorted(REQUIRED))
@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_thread_count_below_one_is_one_line_and_exit_code_2(command: str, value: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, *REQUIRED[command], "--threads", value]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"petl {command}: error: --threads must be a positive integer or 'auto', got "
                                         f"{value}. Pass --threads 1 or more, 'auto' for the CPUs other processes "
                                         "leave free, or leave it out for one thread per CPU."]
    assert captured.out == ""


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_a_thread_count_that_is_no_number_is_refused_by_the_parser(command: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, *REQUIRED[command], "--threads", "many"])
    assert exit_.value.code == 2
    assert "argument --threads: expected a positive integer or 'auto', got 'many'" in capsys.readouterr().err


def test_threads_auto_starts_the_threads_the_load_leaves_free() -> None:
    """``--threads auto`` on this machine: as many threads as ``fitting_threads`` finds free,
    which the run reports in the environment it sets (the load may change between the two
    readings, so the child's own count is compared with the environment it was given)."""
    out, _ = _petl(*ESTIMATE, "--threads", "auto")
    assert out["code"] == 0 and out["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    given = out["env"]["OMP_NUM_THREADS"]
    assert given is not None and 1 <= int(given) <= (os.cpu_count() or 1)
    assert out["threads"] == int(given)


def test_every_subcommand_has_the_option() -> None:
    parser = build_parser()
    for command, required in REQUIRED.items():
        assert parser.parse_args([command, *required, "--threads", "3"]).threads == 3
        assert parser.parse_args([command, *required, "--threads", "AUTO"]).threads == "auto"
        assert parser.parse_args([command, *required]).threads is None
