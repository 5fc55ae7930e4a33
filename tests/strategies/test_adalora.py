"""AdaLoRA on its own: option checks, the schedule hooks, the cubic rank budget, the
orthogonality penalty against a hand computation, and the saved adapter.

tests/strategies/test_lora.py already covers parity with peft step for step, the
regulariser at orthonormal factors, and a PEFT reload; tests/training/ covers
resuming from a checkpoint and reallocation under ``petl.train``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import tiny_models as T
import torch
from safetensors.torch import load_file
from tiny_data import task_data
from torch import nn

import petl
from petl.core.io import WEIGHTS_NAME
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import ConfigError
from petl.strategies.adalora import AdaLoraConfig, AdaLoraStrategy, check_schedule
from petl.training import TrainConfig, train
from petl.training.step import StepRunner

ARCH, HEAD = "bert", "seq-cls"
ADAPTED = 4  # peft's BERT default: query and value in each of the 2 layers


def _wrap(**options: Any) -> nn.Module:
    model = T.build(ARCH, HEAD)
    torch.manual_seed(0)
    return petl.wrap(model, "adalora", **options)


def _strategy(model: nn.Module) -> AdaLoraStrategy:
    strategy = state_of(model).strategy
    assert isinstance(strategy, AdaLoraStrategy)
    return strategy


def _adapted(model: nn.Module) -> dict[str, nn.Module]:
    """The peft AdaLoRA layers of ``model``, found by their ``lora_E`` (not through the strategy)."""
    return {n: m for n, m in model.named_modules() if isinstance(getattr(m, "lora_E", None), nn.ParameterDict)}


def _train(model: nn.Module, steps: int, each_step: Any = None) -> None:
    """Optimizer steps as petl.train takes them (the three strategy hooks included); ``each_step(step)``
    runs after every step."""
    batch = T.inputs(ARCH, HEAD, batch=4)
    model.train()
    runner = StepRunner(model, TrainConfig(learning_rate=1e-2, max_grad_norm=None), total_steps=steps)
    for step in range(1, steps + 1):
        runner(batch)
        if each_step is not None:
            each_step(step)
    model.eval()


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,message",
    [
        ({"init_r": 0}, "init_r must be a positive integer, got 0."),
        ({"init_r": 2.0}, "init_r must be a positive integer, got 2.0."),
        ({"init_r": True}, "init_r must be a positive integer, got True."),
        ({"init_r": 4, "target_r": 0}, "target_r must be a positive integer, got 0."),
        ({"init_r": 4, "target_r": 5},
         "target_r must be below init_r, got target_r=5 and init_r=4: AdaLoRA prunes each layer from init_r "
         "triplets down to target_r on average, so it needs at least one to prune. Lower target_r or raise init_r; "
         "for a fixed rank use the 'lora' strategy with r=4."),
        ({"init_r": 4, "target_r": 4}, "target_r must be below init_r, got target_r=4 and init_r=4: AdaLoRA prunes "
         "each layer from init_r triplets down to target_r on average, so it needs at least one to prune. Lower "
         "target_r or raise init_r; for a fixed rank use the 'lora' strategy with r=4."),
        ({"init_r": 4, "target_r": 2.0}, "target_r must be a positive integer, got 2.0."),
        ({"init_r": 4, "target_r": True}, "target_r must be a positive integer, got True."),
        ({"tinit": -1}, "tinit must be a non-negative integer, got -1."),
        ({"tfinal": -1}, "tfinal must be a non-negative integer, got -1."),
        ({"deltaT": 0}, "deltaT must be a positive integer, got 0."),
        ({"deltaT": 1.5}, "deltaT must be a positive integer, got 1.5."),
        ({"orth_reg_weight": -0.1}, "orth_reg_weight must be a number >= 0, got -0.1."),
        ({"orth_reg_weight": "0.5"}, "orth_reg_weight must be a number >= 0, got '0.5'."),
        ({"total_step": 0}, "total_step must be a positive integer, got 0."),
        ({"total_step": 10, "tinit": 5, "tfinal": 5},
         "AdaLoRA needs steps to allocate its budget: tinit (5) must be below total_step - tfinal (10 - 5). "
         "Lower tinit/tfinal or train for more steps."),
    ],
)
def test_bad_options_are_config_errors_and_leave_the_model_untouched(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        AdaLoraConfig(**options)
    model = T.build(ARCH, HEAD)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        petl.wrap(model, "adalora", **options)
    assert not is_wrapped(model) and not hasattr(model, "peft_config")
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_check_schedule_needs_one_step_between_tinit_and_tfinal() -> None:
    check_schedule(10, 4, 5)  # step 5 is left for allocation
    check_schedule(1, 0, 0)
    with pytest.raises(ConfigError, match=re.escape("tinit (5) must be below total_step - tfinal (10 - 5)")):
        check_schedule(10, 5, 5)
    with pytest.raises(ConfigError, match=re.escape("tinit (0) must be below total_step - tfinal (3 - 3)")):
        check_schedule(3, 0, 3)
    with pytest.raises(ConfigError, match=re.escape("total_step must be a positive integer, got 0.")):
        check_schedule(0, 0, 0)
    AdaLoraConfig(total_step=10, tinit=4, tfinal=5)  # the config applies the same bound


# -- the schedule hooks -------------------------------------------------------------------------


def test_on_train_begin_gives_peft_the_planned_number_of_steps() -> None:
    model = _wrap(init_r=4, target_r=2, tinit=2, tfinal=3)
    strategy = _strategy(model)
    allocator = strategy.tuner.rankallocator
    assert allocator.peft_config.total_step == 2 + 3 + 1  # provisional until the trainer says
    strategy.on_train_begin(model, 20)
    assert strategy.tuner.peft_config["default"].total_step == 20
    assert allocator.peft_config.total_step == 20  # what budget_schedule reads
    assert allocator.budget_schedule(20 - 3) == (2 * ADAPTED, True)  # the end of the cubic decay
    assert allocator.budget_schedule(2) == (4 * ADAPTED, False)  # still warming up


def test_on_train_begin_refuses_a_conflicting_total_step() -> None:
    model = _wrap(init_r=4, target_r=2, total_step=10)
    strategy = _strategy(model)
    with pytest.raises(ConfigError) as info:
        strategy.on_train_begin(model, 12)
    assert "total_step=10" in str(info.value) and "plans 12 optimizer steps" in str(info.value)
    assert strategy.tuner.rankallocator.peft_config.total_step == 10
    strategy.on_train_begin(model, 10)  # the same plan is fine
    assert strategy.tuner.rankallocator.peft_config.total_step == 10


def test_on_train_begin_refuses_a_run_too_short_for_the_schedule() -> None:
    model = _wrap(init_r=4, target_r=2, tinit=5, tfinal=5)  # fine until the length is known
    strategy = _strategy(model)
    with pytest.raises(ConfigError, match=re.escape("tinit (5) must be below total_step - tfinal (10 - 5)")):
        strategy.on_train_begin(model, 10)
    assert strategy.tuner.rankallocator.peft_config.total_step == 11  # unchanged
    with pytest.raises(ConfigError, match="cannot schedule its rank budget"):  # still unknown
        strategy.on_step_end(model, 1)
    strategy.on_train_begin(model, 11)
    assert strategy.tuner.rankallocator.peft_config.total_step == 11


def test_on_step_end_before_the_schedule_is_known_changes_nothing() -> None:
    model = _wrap(init_r=4, target_r=2)
    strategy = _strategy(model)
    with pytest.raises(ConfigError) as info:
        strategy.on_step_end(model, 1)
    assert "petl.train" in str(info.value) and "total_step=..." in str(info.value)
    assert strategy.tuner.rankallocator.ipt == {}  # no importance score was updated
    assert strategy.tuner.peft_config["default"].rank_pattern is None


def test_a_configured_total_step_needs_no_on_train_begin() -> None:
    model = _wrap(init_r=4, target_r=2, total_step=3)
    strategy = _strategy(model)
    batch = T.inputs(ARCH, HEAD)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in (1, 2, 3):  # lambda starts at zero: without optimizer steps every score would tie at zero
        model(**batch).loss.backward()
        optimizer.step()
        strategy.on_step_end(model, step)
        optimizer.zero_grad()
    assert strategy.tuner.rankallocator.peft_config.total_step == 3
    assert sum(strategy.effective_ranks(model).values()) == 2 * ADAPTED


def test_petl_train_plans_the_schedule_and_refuses_a_conflict_before_any_step() -> None:
    data = task_data("sequence-classification")
    config = TrainConfig(batch_size=4, max_steps=7, learning_rate=1e-2, progress_bar=False)
    model = _wrap(init_r=4, target_r=2, tinit=1, tfinal=1)
    train(model, data, config=config)
    strategy = _strategy(model)
    assert strategy.tuner.rankallocator.peft_config.total_step == 7
    assert sum(strategy.effective_ranks(model).values()) == 2 * ADAPTED

    conflicting = _wrap(init_r=4, target_r=2, tinit=1, tfinal=1, total_step=5)
    before = {n: p.detach().clone() for n, p in conflicting.named_parameters()}
    with pytest.raises(ConfigError, match="total_step=5"):
        train(conflicting, data, config=config)
    assert all(torch.equal(before[n], p) for n, p in conflicting.named_parameters())


# -- the rank budget ----------------------------------------------------------------------------


def _budget(step: int, previous: int, *, init_r: int, target_r: int, tinit: int, tfinal: int, deltaT: int,
            total: int) -> int:
    """Triplets kept after ``step``, by the paper's cubic schedule (eq. 10), written out by hand."""
    start, end = init_r * ADAPTED, target_r * ADAPTED
    if step <= tinit:
        return previous  # warm-up: nothing pruned yet
    if step >= total - tfinal:
        return end  # final phase: the target budget, frozen
    if step % deltaT:
        return previous  # no allocation at this step
    left = 1 - (step - tinit) / (total - tfinal - tinit)
    return int((start - end) * left**3 + end)


@pytest.mark.parametrize(
    "init_r,target_r,tinit,tfinal,deltaT,total",
    [(6, 2, 2, 2, 1, 12), (4, 3, 1, 1, 2, 10), (4, 1, 0, 0, 1, 5)],
)
def test_the_rank_budget_follows_the_cubic_schedule(init_r: int, target_r: int, tinit: int, tfinal: int,
                                                    deltaT: int, total: int) -> None:
    model = _wrap(init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=deltaT)
    strategy = _strategy(model)
    layers = _adapted(model)
    assert len(layers) == ADAPTED and set(strategy.effective_ranks(model)) == set(layers)
    assert set(strategy.effective_ranks(model).values()) == {init_r}
    seen: list[int] = []
    expected: list[int] = []

    def record(step: int) -> None:
        ranks = strategy.effective_ranks(model)
        assert set(ranks) == set(layers)
        assert all(0 <= r <= init_r for r in ranks.values()), ranks
        seen.append(sum(ranks.values()))
        schedule = {"init_r": init_r, "target_r": target_r, "tinit": tinit, "tfinal": tfinal, "deltaT": deltaT}
        expected.append(_budget(step, expected[-1] if expected else init_r * ADAPTED, total=total, **schedule))

    _train(model, total, record)
    # peft masks every triplet scoring at or below the k-th lowest, so a tie could prune more than
    # the budget; with continuous scores there are none and the budget is met exactly.
    assert seen == expected
    assert seen[-1] == target_r * ADAPTED
    ranks = strategy.effective_ranks(model)
    for name, module in layers.items():
        lam = module.lora_E["default"]
        assert lam.shape == (init_r, 1), "pruned triplets are masked, never removed"
        assert int((lam != 0).sum()) == ranks[name], name  # the rank pattern is what the weights hold


# -- the orthogonality penalty ------------------------------------------------------------------


def test_no_penalty_when_its_weight_is_zero() -> None:
    model = _wrap(init_r=4, target_r=2, orth_reg_weight=0)
    assert _strategy(model).regularization_loss(model) is None
    _train(model, 4)  # the loop copes with the missing term
    assert sum(_strategy(model).effective_ranks(model).values()) == 2 * ADAPTED


def test_penalty_equals_the_hand_computed_frobenius_norms() -> None:
    weight = 0.3
    model = _wrap(init_r=4, target_r=2, total_step=10, orth_reg_weight=weight)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move away from peft's initialisation (B starts at zero)
        for module in _adapted(model).values():
            for factor in (module.lora_A["default"], module.lora_B["default"]):
                factor.copy_(torch.randn(factor.shape, generator=g) * 0.3)
    norms = []
    for module in _adapted(model).values():
        a = module.lora_A["default"].detach().double()  # Q: r x d_in
        b = module.lora_B["default"].detach().double()  # P: d_out x r
        eye = torch.eye(a.shape[0], dtype=torch.float64)
        norms.append(float(((a @ a.T - eye) ** 2).sum().sqrt()))
        norms.append(float(((b.T @ b - eye) ** 2).sum().sqrt()))
    assert len(norms) == 2 * ADAPTED
    expected = weight * sum(norms) / len(norms)

    penalty = _strategy(model).regularization_loss(model)
    assert penalty.dim() == 0 and penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    for name, param in model.named_parameters():
        factor = ".lora_A." in name or ".lora_B." in name
        has_grad = param.grad is not None and bool(param.grad.abs().sum() > 0)
        assert has_grad == factor, f"{name}: the penalty reaches exactly the P and Q factors"


# -- the saved adapter --------------------------------------------------------------------------


def test_the_saved_adapter_keeps_pruned_triplets_at_zero_and_reloads_exactly(tmp_path: Path) -> None:
    init_r = 6
    model = _wrap(init_r=init_r, target_r=2, tinit=2, tfinal=2)
    _train(model, 12)
    strategy = _strategy(model)
    pattern = strategy.tuner.peft_config["default"].rank_pattern
    assert pattern is not None
    zeros = {name: module.lora_E["default"].detach().view(-1) == 0 for name, module in _adapted(model).items()}
    assert sum(int(z.sum()) for z in zeros.values()) == (init_r - 2) * ADAPTED

    petl.save(model, tmp_path)
    assert strategy.tuner.peft_config["default"].rank_pattern is pattern, "saving must not drop the live pattern"
    assert json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"] is None
    saved = load_file(tmp_path / WEIGHTS_NAME)
    for name, pruned in zeros.items():
        lam = saved[f"base_model.model.{name}.lora_E"]
        assert lam.shape == (init_r, 1)
        assert torch.equal(lam.view(-1) == 0, pruned), name

    fresh = petl.load(T.build(ARCH, HEAD), tmp_path)
    for name, module in _adapted(fresh).items():
        assert torch.equal(module.lora_E["default"].detach().view(-1) == 0, zeros[name]), name
    batch = T.inputs(ARCH, HEAD)
    torch.testing.assert_close(T.logits(fresh, batch), T.logits(model, batch), atol=0, rtol=0)
