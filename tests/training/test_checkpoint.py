"""Checkpoints: the storage format, atomic writes, and resuming bit for bit."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tiny_models as tm
import torch
from tiny_data import Interrupt, interrupt_after, task_data

import petl
from petl.errors import CheckpointError
from petl.strategies.lora import LoraConfig, LoraStrategy
from petl.training import TrainConfig, checkpoint, train
from petl.training.checkpoint import decode_structure, encode_structure, latest_checkpoint, trainable_state


def test_structures_round_trip_exactly() -> None:
    value = {
        "state": {
            0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)},
            7: {"q": torch.arange(4, dtype=torch.uint8)},
        },
        "param_groups": [{"betas": (0.9, 0.999), "params": [0, 7], "foreach": None, "lr": 1e-3, "name": "x"}],
        "numpy": ("MT19937", np.arange(5, dtype=np.uint32), 2, 0, 0.0),
    }
    tensors: dict[str, torch.Tensor] = {}
    decoded = decode_structure(encode_structure(value, tensors), tensors)
    assert decoded["param_groups"] == value["param_groups"] and isinstance(decoded["param_groups"][0]["betas"], tuple)
    assert set(decoded["state"]) == {0, 7}
    assert all(torch.equal(decoded["state"][k][n], v) for k, d in value["state"].items() for n, v in d.items())
    assert decoded["numpy"][0] == "MT19937" and np.array_equal(decoded["numpy"][1], value["numpy"][1])
    assert decoded["numpy"][1].dtype == np.uint32
    with pytest.raises(CheckpointError, match="object"):
        encode_structure({"x": object()}, {})


def _model(full: bool = False) -> torch.nn.Module:
    model = tm.build("bert", "seq-cls")  # dropout 0.1: the resumed run must replay the same masks
    torch.manual_seed(0)
    return model if full else petl.wrap(model, "lora", r=4, dropout=0.1)




@pytest.mark.parametrize("full, optimizer", [(False, "adamw"), (True, "adamw8bit")])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path: Path, full: bool, optimizer: str) -> None:
    # 24 examples, batches of 4, 2 micro-batches per step: 3 steps per epoch; a checkpoint every 4 steps
    # lands in the middle of an epoch, and the interruption in the middle of step 7's accumulation.
    data = task_data("sequence-classification", n_train=24, n_eval=8)
    config = TrainConfig(max_steps=8, batch_size=4, gradient_accumulation_steps=2, eval_steps=3, save_steps=4,
                         learning_rate=1e-2 if not full else 1e-3, optimizer=optimizer, progress_bar=False)
    straight = _model(full)
    expected = train(straight, data, config=config.replace(output_dir=str(tmp_path / "straight")))

    broken = _model(full)
    interrupt_after(broken, forwards=13)
    with pytest.raises(Interrupt):
        train(broken, data, config=config.replace(output_dir=str(tmp_path / "resumed")))
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-4"

    resumed_model = _model(full)
    resumed = train(resumed_model, data, config=config.replace(output_dir=str(tmp_path / "resumed"), resume=True))
    assert resumed.step_losses == expected.step_losses  # exact float equality, every step
    assert resumed.eval_history == expected.eval_history and resumed.metrics == expected.metrics
    a, b = trainable_state(straight), trainable_state(resumed_model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    if optimizer == "adamw8bit":  # the embedding (128 x 32) is large enough for 8-bit optimizer states
        assert "state1" in str(list((tmp_path / "resumed").glob("checkpoint-*/optimizer.json"))[0].read_text())


def test_adalora_resumes_with_its_importance_scores_and_rank_pattern(tmp_path: Path) -> None:
    data = task_data("sequence-classification")
    config = TrainConfig(max_steps=10, batch_size=4, save_steps=8, learning_rate=1e-2, progress_bar=False)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return petl.wrap(tm.build("bert", "seq-cls"), "adalora", init_r=6, target_r=2, tinit=2, tfinal=3, deltaT=1)

    straight = model()
    expected = train(straight, data, config=config.replace(output_dir=str(tmp_path / "a")))
    broken = model()
    interrupt_after(broken, forwards=9)  # inside the final phase, where the rank pattern masks the triplets
    with pytest.raises(Interrupt):
        train(broken, data, config=config.replace(output_dir=str(tmp_path / "b")))
    resumed_model = model()
    resumed = train(resumed_model, data, config=config.replace(output_dir=str(tmp_path / "b"), resume=True))
    assert resumed.step_losses == expected.step_losses
    ranks = [petl.core.wrapping.state_of(m).strategy.effective_ranks(m) for m in (straight, resumed_model)]
    assert ranks[0] == ranks[1] and min(ranks[0].values()) < 6
    a, b = trainable_state(straight), trainable_state(resumed_model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_resume_refuses_a_changed_run(tmp_path: Path) -> None:
    data = task_data("sequence-classification")
    config = TrainConfig(max_steps=2, batch_size=4, save_steps=2, progress_bar=False, output_dir=str(tmp_path))
    train(_model(), data, config=config)
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 4, now 8"):
        train(_model(), data, config=config.replace(batch_size=8, resume=True))


def test_resume_without_checkpoint_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = TrainConfig(max_steps=2, batch_size=4, progress_bar=False, output_dir=str(tmp_path), resume=True)
    assert train(_model(), task_data("sequence-classification"), config=config).global_step == 2
    assert "holds no checkpoint" in caplog.text


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = task_data("sequence-classification")
    config = TrainConfig(max_steps=4, batch_size=4, save_steps=2, progress_bar=False, output_dir=str(tmp_path))
    real = checkpoint._write_structure

    def fail_at_step_4(folder: Path, name: str, value: Any) -> None:
        if name == "scheduler" and ".checkpoint-4." in folder.name:
            raise OSError("disk full")
        real(folder, name, value)

    monkeypatch.setattr(checkpoint, "_write_structure", fail_at_step_4)
    with pytest.raises(OSError, match="disk full"):
        train(_model(), data, config=config)
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    # A folder left by a crash (no trainer_state.json) is never taken for a checkpoint.
    (tmp_path / "checkpoint-9").mkdir()
    (tmp_path / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_checkpoints_hold_no_pickles_and_load_without_unpickling(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = task_data("sequence-classification")
    config = TrainConfig(max_steps=4, batch_size=4, save_steps=2, progress_bar=False, output_dir=str(tmp_path))
    interrupted = _model()
    interrupt_after(interrupted, forwards=2)
    with pytest.raises(Interrupt):
        train(interrupted, data, config=config)
    suffixes = {p.suffix for p in (tmp_path / "checkpoint-2").iterdir()}
    assert suffixes == {".json", ".safetensors"}

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpoint must not be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    assert train(_model(), data, config=config.replace(resume=True)).global_step == 4


@dataclass(frozen=True, kw_only=True)
class StatefulConfig(LoraConfig):
    """LoRA options under a test-only strategy name."""


class StatefulLora(LoraStrategy):
    """LoRA that keeps a running statistic outside its parameters, as AdaLoRA does."""

    config_class: ClassVar[type] = StatefulConfig

    def __init__(self, config: StatefulConfig) -> None:
        super().__init__(config)
        self.steps: list[int] = []
        self.score = torch.zeros(())

    def on_step_end(self, model: torch.nn.Module, step: int) -> None:
        self.steps.append(step)
        self.score = 0.5 * self.score + sum(p.grad.abs().sum() for p in trainable_state(model).values())

    def training_state(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"steps": list(self.steps), "score": self.score.clone()}

    def load_training_state(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        self.steps, self.score = list(state["steps"]), state["score"].clone()


def test_strategy_training_state_is_checkpointed(tmp_path: Path) -> None:
    petl.register("stateful-lora-test")(StatefulLora)
    try:
        data = task_data("sequence-classification")
        config = TrainConfig(max_steps=6, batch_size=4, save_steps=3, progress_bar=False, learning_rate=1e-2)

        def model() -> torch.nn.Module:
            torch.manual_seed(0)
            return petl.wrap(tm.build("bert", "seq-cls"), "stateful-lora-test", r=4)

        straight = model()
        train(straight, data, config=config.replace(output_dir=str(tmp_path / "a")))
        broken = model()
        interrupt_after(broken, forwards=4)
        with pytest.raises(Interrupt):
            train(broken, data, config=config.replace(output_dir=str(tmp_path / "b")))
        resumed = model()
        train(resumed, data, config=config.replace(output_dir=str(tmp_path / "b"), resume=True))
        a, b = (petl.core.wrapping.state_of(m).strategy for m in (straight, resumed))
        assert b.steps == a.steps == [1, 2, 3, 4, 5, 6]
        assert torch.equal(a.score, b.score)
    finally:
        petl.core.registry.unregister("stateful-lora-test")
