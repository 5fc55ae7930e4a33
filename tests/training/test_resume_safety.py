"""Nothing lost, nothing changed: a refused resume leaves the model and the output folder
as they were, a resumed run's log equals the uninterrupted run's, and a run leaves no
attribute on the model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiny_models as tm
import torch
import transformers as tf
from safetensors.torch import load_file, save_file
from tiny_data import Interrupt, interrupt_after, task_data

import petl
from petl.errors import CheckpointError, PetlError
from petl.training import TrainConfig, train
from petl.training.checkpoint import latest_checkpoint

CONFIG = TrainConfig(max_steps=6, batch_size=4, save_steps=2, eval_steps=2, logging_steps=1, learning_rate=1e-2,
                     progress_bar=False)


def _model(strategy: str = "lora", layers: int = 2, **options: Any) -> torch.nn.Module:
    """The tiny BERT classifier (with dropout, which a resume must replay), wrapped."""
    config = tm.config("bert")
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    torch.manual_seed(0)
    return petl.wrap(model, strategy, **({"r": 4, "dropout": 0.1} if strategy == "lora" else {}) | options)




def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_second"} for line in lines]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder of a run stopped in step 6, after its checkpoint at step 4 and step 5's log record."""
    folder = tmp_path_factory.mktemp("interrupted") / "run"
    model = _model()
    interrupt_after(model, forwards=5)  # the 6th step's forward raises
    with pytest.raises(Interrupt):
        train(model, task_data("sequence-classification"), config=CONFIG.replace(output_dir=str(folder)))
    assert latest_checkpoint(folder).name == "checkpoint-4"
    assert max(r["step"] for r in _records(folder)) == 5
    return folder


def _corrupt_json(name: str, change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        state = json.loads((checkpoint / name).read_text())
        result = change(state)
        (checkpoint / name).write_text(json.dumps(state if result is None else result))

    return apply


def _reshape_optimizer_state(checkpoint: Path) -> None:
    tensors = load_file(checkpoint / "optimizer.safetensors")
    key = next(k for k, t in tensors.items() if t.dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, checkpoint / "optimizer.safetensors")


def _text_learning_rates(scheduler: dict[str, Any]) -> None:
    for pair in scheduler["__dict__"]:  # the encoded state dict: [key, value] pairs
        if pair[0] == "base_lrs":
            pair[1] = ["x" for _ in pair[1]]


def _truncate(name: str) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        data = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(data[: len(data) // 2])

    return apply


RUN_CHANGES = {  # what differs on resume -> a part of the message
    "batch size": ({"batch_size": 8}, {}, "batch_size: checkpoint 4, now 8"),
    "seed": ({"seed": 1}, {}, "seed: checkpoint 0, now 1"),
    "learning rate": ({"learning_rate": 1e-3}, {}, "learning_rate: checkpoint 0.01, now 0.001"),
    "strategy option": ({}, {"strategy": "lora", "dropout": 0.2}, "strategy option dropout: checkpoint 0.1, now 0.2"),
    "strategy": ({}, {"strategy": "bottleneck"}, "strategy: checkpoint 'lora', now 'bottleneck'"),
    "model": ({}, {"layers": 3}, "model num_hidden_layers: checkpoint 2, now 3"),
}

BROKEN_FILES = {  # how the checkpoint is damaged -> a part of the message
    "truncated weights": (_truncate("model.safetensors"), "model.safetensors is unreadable"),
    "truncated rng": (_truncate("rng.safetensors"), "rng.safetensors is unreadable"),
    "missing optimizer": (lambda c: (c / "optimizer.json").unlink(), "incomplete: optimizer.json missing"),
    "missing optimizer tensors": (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors missing"),
    "missing scheduler": (lambda c: (c / "scheduler.json").unlink(), "scheduler.json missing"),
    "optimizer state of another shape": (_reshape_optimizer_state, "optimizer state in .* does not fit"),
    "scheduler garbage": (_corrupt_json("scheduler.json", lambda s: {"__dict__": 5}), "scheduler.json is corrupted"),
    "scheduler rates": (_corrupt_json("scheduler.json", _text_learning_rates), "scheduler state in .* does not fit"),
    "trainer state not JSON": (lambda c: (c / "trainer_state.json").write_text("{oops"), "is unreadable"),
    "trainer state a list": (_corrupt_json("trainer_state.json", lambda s: [1, 2]), "not an object"),
    "null step": (_corrupt_json("trainer_state.json", lambda s: s.update(global_step=None)), "global_step is None"),
    "string losses": (_corrupt_json("trainer_state.json", lambda s: s.update(step_losses="x")), "step_losses"),
    "null best": (_corrupt_json("trainer_state.json", lambda s: s.update(best=None)), "best is None"),
    "bad history": (_corrupt_json("trainer_state.json", lambda s: s.update(eval_history=[{"step": "a"}])),
                    "eval_history"),
    "null fingerprint": (_corrupt_json("trainer_state.json", lambda s: s.update(fingerprint=None)), "fingerprint"),
    "null strategy": (_corrupt_json("trainer_state.json", lambda s: s.update(strategy=None)), "strategy is None"),
    "garbage rng": (_corrupt_json("trainer_state.json", lambda s: s.update(rng={"__dict__": [["python", 5]]})),
                    "invalid random generator states"),
    "malformed rng": (_corrupt_json("trainer_state.json", lambda s: s.update(rng={"x": 1})), "Unknown entry"),
    "future format": (_corrupt_json("trainer_state.json", lambda s: s.update(format_version=99)), "format_version 99"),
    "file list": (_corrupt_json("trainer_state.json", lambda s: s.update(files=["../x"])), "not a list of file names"),
}


def _refused_resume_changes_nothing(folder: Path, model: torch.nn.Module, config: TrainConfig, match: str) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = set(vars(model))
    files = _files(folder)
    with pytest.raises(CheckpointError, match=match):
        train(model, task_data("sequence-classification"), config=config.replace(output_dir=str(folder), resume=True))
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert _files(folder) == files  # train_config.json and log.jsonl included, byte for byte
    assert set(vars(model)) == attributes


@pytest.mark.parametrize("change", list(RUN_CHANGES))
def test_resuming_another_run_is_refused_and_changes_nothing(interrupted: Path, tmp_path: Path, change: str) -> None:
    options, model_options, message = RUN_CHANGES[change]
    folder = tmp_path / "run"
    shutil.copytree(interrupted, folder)
    _refused_resume_changes_nothing(folder, _model(**model_options), CONFIG.replace(**options), message)


@pytest.mark.parametrize("damage", list(BROKEN_FILES))
def test_a_damaged_checkpoint_is_refused_and_changes_nothing(interrupted: Path, tmp_path: Path, damage: str) -> None:
    apply, message = BROKEN_FILES[damage]
    folder = tmp_path / "run"
    shutil.copytree(interrupted, folder)
    apply(folder / "checkpoint-4")
    _refused_resume_changes_nothing(folder, _model(), CONFIG, message)


def test_the_resumed_log_equals_the_uninterrupted_one(interrupted: Path, tmp_path: Path) -> None:
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight = train(_model(), task_data("sequence-classification"),
                     config=CONFIG.replace(output_dir=str(straight_dir)))
    shutil.copytree(interrupted, resumed_dir)
    before = _records(resumed_dir)
    assert [r["step"] for r in before].count(5) == 1  # step 5's training record, written after checkpoint-4
    resumed = train(_model(), task_data("sequence-classification"),
                    config=CONFIG.replace(output_dir=str(resumed_dir), resume=True))
    assert resumed.step_losses == straight.step_losses
    expected = _records(straight_dir)
    assert [r["step"] for r in _records(resumed_dir)] == [r["step"] for r in expected] == [1, 2, 2, 3, 4, 4, 5, 6, 6]
    assert _records(resumed_dir) == expected  # every field but the throughput, exactly


def test_resuming_a_finished_run_writes_the_same_log(tmp_path: Path) -> None:
    # The last checkpoint (step 5) comes before the final evaluation, which is logged at the same step.
    config = CONFIG.replace(max_steps=5, save_steps=5, output_dir=str(tmp_path))
    train(_model(), task_data("sequence-classification"), config=config)
    before = _records(tmp_path)
    assert [r["step"] for r in before] == [1, 2, 2, 3, 4, 4, 5, 5]
    train(_model(), task_data("sequence-classification"), config=config.replace(resume=True))
    assert _records(tmp_path) == before


def test_a_fresh_run_starts_a_fresh_log(interrupted: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(interrupted, folder)
    for checkpoint in folder.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # an earlier run that left only its log
    with (folder / "log.jsonl").open("a") as handle:
        handle.write('{"step": 7, "loss": 0.')  # a line cut short by a crash
    train(_model(), task_data("sequence-classification"), config=CONFIG.replace(output_dir=str(folder), max_steps=2))
    assert [r["step"] for r in _records(folder)] == [1, 2, 2]


def test_a_fresh_run_refuses_a_folder_with_an_earlier_runs_checkpoints(interrupted: Path, tmp_path: Path) -> None:
    # Rotation keeps the highest step numbers: a fresh run there would delete its own checkpoints, and a
    # later resume would continue the earlier run.
    folder = tmp_path / "run"
    shutil.copytree(interrupted, folder)
    before, model = _files(folder), _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PetlError, match=r"holds checkpoint-\d+ of an earlier run\. Pass resume=True"):
        train(model, task_data("sequence-classification"), config=CONFIG.replace(output_dir=str(folder), max_steps=2))
    assert _files(folder) == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("strategy", ["lora", "bottleneck"])
def test_train_then_unwrap_leaves_exactly_the_attributes_the_model_had(strategy: str) -> None:
    model = tm.build("bert", "seq-cls")
    original = set(vars(model))
    petl.wrap(model, strategy, **({"r": 4} if strategy == "lora" else {}))
    wrapped = {name: set(vars(module)) for name, module in model.named_modules()}
    train(model, task_data("sequence-classification"), config=TrainConfig(max_steps=2, batch_size=4,
                                                                          progress_bar=False))
    assert {name: set(vars(module)) for name, module in model.named_modules()} == wrapped
    petl.unwrap(model)
    assert set(vars(model)) == original


def test_mixed_precision_and_checkpointing_leave_no_attribute_and_keep_each_modules_mode() -> None:
    model = petl.wrap(tm.build("bert", "seq-cls"), "lora", r=4)
    model.train()
    model.bert.embeddings.eval()  # a mixed mode is given back as it was
    modes = {name: module.training for name, module in model.named_modules()}
    attributes = {name: set(vars(module)) for name, module in model.named_modules()}
    train(model, task_data("sequence-classification"),
          config=TrainConfig(max_steps=2, batch_size=4, progress_bar=False, mixed_precision="bf16",
                             gradient_checkpointing=True))
    assert {name: set(vars(module)) for name, module in model.named_modules()} == attributes
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_a_setup_that_fails_after_preparing_the_model_undoes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no scheduler today")

    model = petl.wrap(tm.build("bert", "seq-cls"), "lora", r=4)
    attributes = {name: set(vars(module)) for name, module in model.named_modules()}
    monkeypatch.setattr(transformers, "get_scheduler", refuse)
    with pytest.raises(RuntimeError, match="no scheduler"):
        train(model, task_data("sequence-classification"),
              config=TrainConfig(max_steps=2, batch_size=4, progress_bar=False, mixed_precision="bf16"))
    assert {name: set(vars(module)) for name, module in model.named_modules()} == attributes


def test_ctrl_c_while_loading_a_checkpoint_rolls_back_what_was_loaded(interrupted: Path) -> None:
    from petl.training.checkpoint import load_checkpoint
    from petl.training.resume import apply_checkpoint
    from petl.training.step import build_optimizer

    model = _model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, CONFIG, 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = optimizer.state_dict()

    own_load, calls = scheduler.load_state_dict, []

    def interrupted_load(state: Any) -> None:
        calls.append(state)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the checkpoint's scheduler state loads
        own_load(state)  # the rollback puts its own state back

    scheduler.load_state_dict = interrupted_load  # the optimizer has been loaded by then
    with pytest.raises(KeyboardInterrupt):
        apply_checkpoint(load_checkpoint(interrupted / "checkpoint-4"), model=model, optimizer=optimizer,
                         scheduler=scheduler, scaler=None, strategy=petl.core.wrapping.state_of(model).strategy)
    assert optimizer.state_dict()["state"] == before["state"] == {}
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
