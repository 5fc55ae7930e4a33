"""A wrapped model inside ``transformers.Trainer``: what it saves, what it loads back, and the
strategy hooks that ``petl.attach`` runs, compared with petl's own training step."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import tiny_data
import tiny_models
import torch
import transformers as tf
from safetensors.torch import load_file
from torch.utils.data import Dataset, SequentialSampler

import petl
from petl.core.io import adapter_tensors
from petl.training import TrainConfig
from petl.training.step import StepRunner, build_optimizer

STRATEGIES = sorted(petl.available())
CASES = [("bert", "seq-cls"), ("llama", "causal-lm")]


class Rows(Dataset):
    """``n`` fixed examples of one tiny architecture and head, as a Trainer reads them."""

    def __init__(self, arch: str, head: str, n: int = 8, seed: int = 1) -> None:
        self.batch = tiny_models.inputs(arch, head, batch=n, length=6, seed=seed)

    def __len__(self) -> int:
        return len(self.batch["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.batch.items()}


class InOrder(tf.Trainer):
    """A Trainer that reads its training set in order, to compare with a hand-made loop."""

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
        return SequentialSampler(self.train_dataset)


def _no_dropout(arch: str, head: str, seed: int = 0) -> torch.nn.Module:
    config = tiny_models.config(arch)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    torch.manual_seed(seed)
    auto = getattr(tf, tiny_models.HEADS[head])
    return auto.from_config(config, attn_implementation="eager").eval()


def _args(out: Path, **options: Any) -> tf.TrainingArguments:
    defaults: dict[str, Any] = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2, report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
    )
    defaults.update(options)
    return tf.TrainingArguments(**defaults)


def _options(strategy: str) -> dict[str, Any]:
    extra = {"adalora": {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "deltaT": 1}}.get(strategy, {})
    return tiny_models.strategy_options(strategy, **extra)


def _wrapped(arch: str, head: str, strategy: str) -> torch.nn.Module:
    return petl.wrap(tiny_models.build(arch, head), strategy, **_options(strategy))


def _adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in adapter_tensors(model).items()}


# -- save_pretrained ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "head"), CASES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_pretrained_writes_the_adapter_folder(tmp_path: Path, arch: str, head: str, strategy: str) -> None:
    model = _wrapped(arch, head, strategy)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    model.save_pretrained(tmp_path / "sp")
    petl.save(model, tmp_path / "ps")

    written = sorted(p.name for p in (tmp_path / "sp").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "ps").iterdir())
    assert "model.safetensors" not in written and "config.json" not in written
    assert load_file(tmp_path / "sp" / "adapter_model.safetensors").keys() == adapter_tensors(model).keys()

    batch = tiny_models.inputs(arch, head)
    reloaded = petl.load(tiny_models.build(arch, head), tmp_path / "sp")
    assert torch.equal(tiny_models.logits(reloaded, batch), tiny_models.logits(model, batch))


def test_save_pretrained_keeps_the_hosts_files_and_drops_its_own_stale_ones(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{}")
    lora = _wrapped("bert", "seq-cls", "lora")
    lora.save_pretrained(folder)
    assert (folder / "adapter_config.json").is_file()

    bottleneck = _wrapped("bert", "seq-cls", "bottleneck")
    bottleneck.save_pretrained(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["adapter_model.safetensors", "checkpoint-2", "petl_config.json", "tokenizer.json"]
    assert json.loads((folder / "petl_config.json").read_text())["strategy"] == "bottleneck"


def test_unwrap_gives_back_the_models_own_save_pretrained(tmp_path: Path) -> None:
    model = tiny_models.build("bert", "seq-cls")
    before = set(vars(model))
    petl.wrap(model, "lora")
    assert "save_pretrained" in vars(model)
    petl.unwrap(model)
    assert set(vars(model)) == before
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()  # the whole plain model, as transformers saves it


def test_save_pretrained_refuses_push_to_hub(tmp_path: Path) -> None:
    model = _wrapped("bert", "seq-cls", "lora")
    with pytest.raises(petl.PetlError, match="upload_folder"):
        model.save_pretrained(tmp_path, push_to_hub=True)
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_off_the_main_process_writes_nothing(tmp_path: Path) -> None:
    model = _wrapped("bert", "seq-cls", "lora")
    model.save_pretrained(tmp_path / "x", is_main_process=False)
    assert not (tmp_path / "x").exists()


# -- the Trainer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "head"), CASES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainer_trains_only_the_adapter_and_save_model_reloads_exactly(
    tmp_path: Path, arch: str, head: str, strategy: str
) -> None:
    model = _wrapped(arch, head, strategy)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    start = _adapter(model)
    trainer = petl.attach(tf.Trainer(model=model, args=_args(tmp_path / "run", save_strategy="steps", save_steps=2),
                                     train_dataset=Rows(arch, head)))
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))

    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert any(not torch.equal(value, start[key]) for key, value in _adapter(model).items())
    for folder in (tmp_path / "final", tmp_path / "run" / "checkpoint-4"):
        assert (folder / "petl_config.json").is_file() and not (folder / "model.safetensors").exists()
    model.eval()
    batch = tiny_models.inputs(arch, head)
    reloaded = petl.load(tiny_models.build(arch, head), tmp_path / "final")
    assert torch.equal(tiny_models.logits(reloaded, batch), tiny_models.logits(model, batch))


@pytest.mark.parametrize("strategy", ["lora", "adalora", "bottleneck"])
def test_trainer_resume_from_a_petl_checkpoint_continues_exactly(tmp_path: Path, strategy: str) -> None:
    base = _wrapped("bert", "seq-cls", strategy)
    whole = copy.deepcopy(base)
    args = dict(max_steps=6, save_strategy="steps", save_steps=3)
    petl.attach(tf.Trainer(model=whole, args=_args(tmp_path / "whole", **args), train_dataset=Rows("bert", "seq-cls")))\
        .train()

    first = copy.deepcopy(base)
    petl.attach(tf.Trainer(model=first, args=_args(tmp_path / "cut", **args), train_dataset=Rows("bert", "seq-cls")))\
        .train()
    # A new process would start from the base model again: rebuild it, and resume from step 3.
    resumed = copy.deepcopy(base)
    trainer = petl.attach(tf.Trainer(model=resumed, args=_args(tmp_path / "cut", **args),
                                     train_dataset=Rows("bert", "seq-cls")))
    trainer.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))

    expected, got = _adapter(whole), _adapter(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    if strategy == "adalora":
        ranks = petl.core.wrapping.state_of
        assert ranks(resumed).strategy.effective_ranks(resumed) == ranks(whole).strategy.effective_ranks(whole)
        assert (tmp_path / "cut" / "checkpoint-3" / "petl_training_state.json").is_file()


def test_load_best_model_at_end_loads_the_best_petl_checkpoint(tmp_path: Path) -> None:
    model = _wrapped("bert", "seq-cls", "lora")
    args = _args(tmp_path / "run", max_steps=6, save_strategy="steps", save_steps=2, eval_strategy="steps",
                 eval_steps=2, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False,
                 learning_rate=5e-2)
    trainer = petl.attach(tf.Trainer(model=model, args=args, train_dataset=Rows("bert", "seq-cls"),
                                     eval_dataset=Rows("bert", "seq-cls", seed=7)))
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    saved = load_file(best / "adapter_model.safetensors")
    current = adapter_tensors(model)
    assert all(torch.equal(current[key].cpu(), saved[key]) for key in saved)


def test_resume_from_a_checkpoint_of_another_strategy_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    lora = _wrapped("bert", "seq-cls", "lora")
    args = dict(max_steps=2, save_strategy="steps", save_steps=2)
    petl.attach(tf.Trainer(model=lora, args=_args(tmp_path / "run", **args), train_dataset=Rows("bert", "seq-cls")))\
        .train()
    other = _wrapped("bert", "seq-cls", "bottleneck")
    before = _adapter(other)
    trainer = petl.attach(tf.Trainer(model=other, args=_args(tmp_path / "run", **args),
                                     train_dataset=Rows("bert", "seq-cls")))
    with pytest.raises(petl.PetlError, match="lora"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert all(torch.equal(value, before[key]) for key, value in _adapter(other).items())


def test_attach_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(petl.PetlError, match="Trainer"):
        petl.attach(object())
    plain = tf.Trainer(model=tiny_models.build("bert", "seq-cls"), args=_args(tmp_path))
    with pytest.raises(petl.PetlError, match="not wrapped"):
        petl.attach(plain)
    trainer = tf.Trainer(model=_wrapped("bert", "seq-cls", "lora"), args=_args(tmp_path))
    petl.attach(petl.attach(trainer))
    assert sum(isinstance(c, petl.integrations.PetlCallback) for c in trainer.callback_handler.callbacks) == 1


# -- the strategy's hooks --------------------------------------------------------------------------------------


def test_adalora_under_trainer_allocates_its_budget_exactly_as_petls_step(tmp_path: Path) -> None:
    options = {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "deltaT": 1, "orth_reg_weight": 0.5}
    base = petl.wrap(_no_dropout("bert", "seq-cls"), "adalora", **options)
    rows, steps, lr = Rows("bert", "seq-cls", n=16), 6, 1e-2

    hand = copy.deepcopy(base).train()
    runner = StepRunner(hand, TrainConfig(learning_rate=lr, max_grad_norm=1.0), total_steps=steps)
    for step in range(steps):
        runner({key: value[4 * (step % 4): 4 * (step % 4) + 4] for key, value in rows.batch.items()})

    hosted = copy.deepcopy(base)
    optimizer = build_optimizer(hosted, TrainConfig(), lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = petl.attach(InOrder(model=hosted, args=_args(tmp_path, max_steps=steps, max_grad_norm=1.0),
                                  train_dataset=rows, optimizers=(optimizer, schedule)))
    trainer.train()

    strategy = petl.core.wrapping.state_of
    ranks = strategy(hosted).strategy.effective_ranks(hosted)
    assert ranks == strategy(hand).strategy.effective_ranks(hand)
    assert sum(ranks.values()) < options["init_r"] * len(ranks)  # the budget was reallocated, not left at init_r
    expected, got = _adapter(hand), _adapter(hosted)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)


def test_the_regulariser_is_added_to_the_loss_only_while_training(tmp_path: Path) -> None:
    model = petl.wrap(_no_dropout("bert", "seq-cls"), "adalora", init_r=4, target_r=2, orth_reg_weight=0.5)
    batch = tiny_models.inputs("bert", "seq-cls")
    trainer = petl.attach(tf.Trainer(model=model, args=_args(tmp_path), train_dataset=Rows("bert", "seq-cls")))
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, petl.integrations.PetlCallback))
    state = tf.TrainerState(max_steps=4)
    callback.on_train_begin(trainer.args, state, trainer.control, model=model)
    plain = model(**batch).loss  # eval mode: no regulariser
    model.train()
    reg = petl.core.wrapping.state_of(model).strategy.regularization_loss(model)
    assert reg is not None and float(reg.detach()) > 0
    torch.testing.assert_close(model(**batch).loss, plain + reg)
    callback.on_train_end(trainer.args, state, trainer.control)
    torch.testing.assert_close(model(**batch).loss, plain)


def test_adalora_in_a_loop_without_petls_hooks_warns_once_and_not_with_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unhooked = _wrapped("bert", "seq-cls", "adalora")
    with caplog.at_level(logging.WARNING, logger="petl"):
        tf.Trainer(model=unhooked, args=_args(tmp_path / "a"), train_dataset=Rows("bert", "seq-cls")).train()
    assert caplog.text.count("fixed-rank LoRA") == 1
    assert "petl.attach(trainer)" in caplog.text

    caplog.clear()
    hooked = _wrapped("bert", "seq-cls", "adalora")
    with caplog.at_level(logging.WARNING, logger="petl"):
        petl.attach(tf.Trainer(model=hooked, args=_args(tmp_path / "b"), train_dataset=Rows("bert", "seq-cls")))\
            .train()
        petl.train(_wrapped("bert", "seq-cls", "adalora"), tiny_data.task_data("sequence-classification"),
                   config=TrainConfig(max_steps=3, batch_size=4, progress_bar=False))
    assert "fixed-rank LoRA" not in caplog.text


def test_unwrap_removes_adaloras_guard() -> None:
    model = tiny_models.build("bert", "seq-cls")
    petl.wrap(model, "adalora", init_r=4, target_r=2)
    petl.unwrap(model)
    assert not model._forward_pre_hooks
