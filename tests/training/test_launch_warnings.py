"""Warnings where Accelerate silently runs a launch differently than asked: one process where
``accelerate launch --num_processes N`` asked for more, and FSDP without an accelerator."""

from __future__ import annotations

import logging

import pytest
import tiny_models as tm
from tiny_data import task_data

import petl
from petl.errors import ConfigError
from petl.training import TrainConfig, launch, train

# What `accelerate launch --cpu --num_processes 2 script.py` (accelerate 1.15) hands its one process.
SIMPLE_LAUNCH_OF_TWO = {"ACCELERATE_DYNAMO_BACKEND": "NO", "ACCELERATE_MIXED_PRECISION": "no",
                        "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
LAUNCH_VARIABLES = (*SIMPLE_LAUNCH_OF_TWO, "WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_FSDP",
                    "FSDP_SYNC_MODULE_STATES", "FSDP_CPU_RAM_EFFICIENT_LOADING")


@pytest.fixture(autouse=True)
def clean_launch(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No launcher variables from the outside, and no warning given yet in this process."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "_WARNED", set())
    return monkeypatch


def _train() -> None:
    model = petl.wrap(tm.build("bert", "seq-cls"), "lora", r=4)
    train(model, task_data("sequence-classification", n_train=8, n_eval=0),
          config=TrainConfig(max_steps=1, batch_size=4, progress_bar=False))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == launch.__name__ and r.levelno == logging.WARNING]


def test_the_single_process_check_reads_the_launchers_environment() -> None:
    assert "`accelerate launch` was asked for more than one process" in launch.single_process_launch(
        1, SIMPLE_LAUNCH_OF_TWO)
    assert launch.single_process_launch(1, {"WORLD_SIZE": "2"}).startswith("This run has 1 process: WORLD_SIZE=2")
    one = {k: v for k, v in SIMPLE_LAUNCH_OF_TWO.items() if not k.startswith("MASTER")}  # --num_processes 1
    torchrun = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0"}
    mpirun = {**SIMPLE_LAUNCH_OF_TWO, "OMPI_COMM_WORLD_SIZE": "1"}
    for env, processes in ((one, 1), ({}, 1), (torchrun, 2), (mpirun, 1), (SIMPLE_LAUNCH_OF_TWO, 2)):
        assert launch.single_process_launch(processes, env) is None, env


def test_the_fsdp_check_needs_fsdp_and_no_device() -> None:
    message = launch.fsdp_without_device({"ACCELERATE_USE_FSDP": "true"}, device=False)
    assert "plain data parallelism (DDP over gloo)" in message and "fully_shard" in message
    assert launch.fsdp_without_device({"ACCELERATE_USE_FSDP": "true"}, device=True) is None
    assert launch.fsdp_without_device({"ACCELERATE_USE_FSDP": "false"}, device=False) is None
    assert launch.fsdp_without_device({}, device=False) is None


def test_a_normal_single_process_run_warns_about_nothing(caplog: pytest.LogCaptureFixture) -> None:
    _train()
    assert _warnings(caplog) == []


def test_a_simple_launch_of_several_processes_warns_once(
    clean_launch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in SIMPLE_LAUNCH_OF_TWO.items():
        clean_launch.setenv(name, value)
    _train()
    _train()
    (message,) = _warnings(caplog)
    assert message.startswith("This run has 1 process") and "torchrun --nproc_per_node N" in message


def test_fsdp_without_an_accelerator_warns(clean_launch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clean_launch.setenv("ACCELERATE_USE_FSDP", "true")
    clean_launch.setattr(launch, "has_device", lambda: False)
    _train()
    (message,) = _warnings(caplog)
    assert "An FSDP configuration is set" in message and "does not shard" in message


@pytest.mark.skipif(launch.has_device(), reason="Accelerate starts FSDP on an accelerator device")
def test_fsdp_that_cannot_start_on_cpus_says_why(clean_launch: pytest.MonkeyPatch) -> None:
    clean_launch.setenv("ACCELERATE_USE_FSDP", "true")
    clean_launch.setenv("FSDP_SYNC_MODULE_STATES", "true")  # what `accelerate launch --use_fsdp` sets by default
    with pytest.raises(ConfigError, match="An FSDP configuration needs a GPU or other accelerator"):
        _train()
