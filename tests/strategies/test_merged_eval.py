"""Evaluation on temporarily merged weights: ``Strategy.merged_for_inference`` and
``TrainConfig.merged_eval``.

Inside the block a LoRA or AdaLoRA adapter is folded into the base weights (outputs equal
the unmerged ones up to float rounding, and the adapter path is skipped); after it, however
it is left, every tensor of the model is bit-identical to before and the outputs are
bit-identical too. Strategies that are no weight change yield ``False`` and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import tiny_models as T
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny_data import task_data
from torch import nn

import petl
from petl.core.wrapping import state_of
from petl.errors import ConfigError, PetlError
from petl.metrics import evaluator_for
from petl.strategies.lora import LoraStrategy
from petl.training import TrainConfig, train
from petl.training.evaluation import evaluate

STRATEGIES = {"lora": {"r": 4, "dropout": 0.1}, "adalora": {"init_r": 6, "target_r": 4}}
MODELS = [("bert", "seq-cls"), ("llama", "causal-lm"), ("gpt2", "causal-lm")]  # gpt2: Conv1D, fan_in_fan_out
CASES = [(s, a, h) for s in STRATEGIES for a, h in MODELS]
EVAL_CASES = [("lora", "bert", "seq-cls"), ("lora", "llama", "causal-lm"), ("adalora", "bert", "seq-cls"),
              ("adalora", "gpt2", "causal-lm")]
TASKS = {"seq-cls": "sequence-classification", "causal-lm": "causal-lm"}


def adapted(strategy: str, arch: str, head: str, **options: Any) -> nn.Module:
    """A wrapped tiny model whose adapter is far from its (identity) initialisation."""
    model = petl.wrap(T.build(arch, head), strategy, **{**STRATEGIES[strategy], **options})
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in (".lora_A.", ".lora_B.", ".lora_E.")):
                param.normal_(0, 0.3)
    return model


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = dict([*model.named_parameters(), *model.named_buffers()])
    assert set(now) == set(before)
    changed = [n for n, t in now.items() if not torch.equal(t, before[n])]
    assert not changed, changed
    assert all(not layer.merged for layer in tuner_layers(model))


def tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def strategy_of(model: nn.Module) -> Any:
    return state_of(model).strategy


@pytest.mark.parametrize("strategy,arch,head", CASES, ids=[f"{s}-{a}-{h}" for s, a, h in CASES])
def test_merged_outputs_match_and_the_model_comes_back_bit_for_bit(strategy: str, arch: str, head: str) -> None:
    model = adapted(strategy, arch, head)
    batch = T.inputs(arch, head)
    before, reference = tensors(model), T.logits(model, batch)
    addresses = {n: p.data_ptr() for n, p in model.named_parameters()}
    with torch.no_grad(), strategy_of(model).merged_for_inference(model) as merged:
        assert merged is True
        assert all(layer.merged for layer in tuner_layers(model))
        moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert moved and all("base_layer" in n for n in moved)  # only the adapted base weights changed
        inside = T.logits(model, batch)
        # The adapter path is skipped: zeroing the adapter's tensors changes nothing in the block.
        adapter = {n: p for n, p in model.named_parameters() if ".lora_" in n}
        saved = {n: p.clone() for n, p in adapter.items()}
        for p in adapter.values():
            p.zero_()
        assert torch.equal(T.logits(model, batch), inside)
        for n, p in adapter.items():
            p.copy_(saved[n])
    torch.testing.assert_close(inside, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference, T.logits(petl.unwrap(adapted(strategy, arch, head)), batch))
    assert_identical(model, before)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == addresses  # copied back in place
    assert torch.equal(T.logits(model, batch), reference)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_nested_and_repeated_blocks_are_safe(strategy: str) -> None:
    model = adapted(strategy, "llama", "causal-lm")
    batch = T.inputs("llama", "causal-lm")
    before, reference = tensors(model), T.logits(model, batch)
    s = strategy_of(model)
    with torch.no_grad():
        with s.merged_for_inference(model) as outer:
            first = T.logits(model, batch)
            merged_weights = tensors(model)
            with s.merged_for_inference(model) as inner:
                assert outer and inner
                assert_equal_dicts(tensors(model), merged_weights)  # the inner block merges nothing again
                assert torch.equal(T.logits(model, batch), first)
            assert_equal_dicts(tensors(model), merged_weights)  # nor does it restore the outer one's merge
            assert torch.equal(T.logits(model, batch), first)
        assert_identical(model, before)
        with s.merged_for_inference(model) as again:
            assert again and torch.equal(T.logits(model, batch), first)
    assert_identical(model, before)
    assert torch.equal(T.logits(model, batch), reference)


def assert_equal_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_leaving_the_block_by_an_error_restores_the_model(strategy: str, error: BaseException) -> None:
    model = adapted(strategy, "bert", "seq-cls")
    batch = T.inputs("bert", "seq-cls")
    before, reference = tensors(model), T.logits(model, batch)
    with pytest.raises(type(error)), torch.no_grad(), strategy_of(model).merged_for_inference(model):
        T.logits(model, batch)
        raise error
    assert_identical(model, before)
    assert torch.equal(T.logits(model, batch), reference)


def test_a_merge_that_fails_halfway_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    model = adapted("lora", "bert", "seq-cls")
    before = tensors(model)
    second = tuner_layers(model)[1]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("merge failed")

    monkeypatch.setattr(second, "merge", broken)
    with pytest.raises(RuntimeError, match="merge failed"), torch.no_grad():
        with strategy_of(model).merged_for_inference(model):
            pytest.fail("the block must not run")
    assert_identical(model, before)


@pytest.mark.parametrize("strategy", ["prefix", "bottleneck"])
def test_strategies_that_are_no_weight_change_yield_false_and_change_nothing(strategy: str) -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), strategy)
    batch = T.inputs("bert", "seq-cls")
    before, reference = tensors(model), T.logits(model, batch)
    with torch.no_grad(), strategy_of(model).merged_for_inference(model) as merged:
        assert merged is False
        assert_equal_dicts(tensors(model), before)
        assert torch.equal(T.logits(model, batch), reference)
    assert_equal_dicts(tensors(model), before)


@pytest.mark.parametrize("strategy", ["lora", "prefix"])
def test_training_mode_with_grad_is_refused(strategy: str) -> None:
    model = adapted(strategy, "bert", "seq-cls") if strategy in STRATEGIES else petl.wrap(T.build("bert", "seq-cls"),
                                                                                           strategy)
    before = tensors(model)
    model.train()
    with pytest.raises(PetlError, match="training mode with gradients enabled"):
        with strategy_of(model).merged_for_inference(model):
            pytest.fail("the block must not run")
    assert_equal_dicts(tensors(model), before)
    with torch.no_grad(), strategy_of(model).merged_for_inference(model):
        pass  # training mode without gradients (no training step possible) is allowed
    model.eval()
    with strategy_of(model).merged_for_inference(model):
        pass  # and so is eval mode with gradients enabled


def test_switching_to_training_inside_the_block_is_refused_at_the_forward() -> None:
    model = adapted("lora", "bert", "seq-cls")
    batch = {k: v for k, v in T.inputs("bert", "seq-cls").items() if k != "labels"}
    before = tensors(model)
    with pytest.raises(PetlError, match="training mode"), strategy_of(model).merged_for_inference(model):
        model.train()
        model(**batch).logits.sum().backward()
    model.eval()
    assert_identical(model, before)
    model(**batch)  # the guard is gone after the block


def test_inference_mode_leaves_normal_tensors() -> None:
    model = adapted("lora", "bert", "seq-cls")
    batch = T.inputs("bert", "seq-cls")
    before, reference = tensors(model), T.logits(model, batch)
    with torch.inference_mode(), strategy_of(model).merged_for_inference(model) as merged:
        assert merged
        T.logits(model, batch)
    assert not any(p.is_inference() for p in model.parameters())
    assert_identical(model, before)
    assert torch.equal(T.logits(model, batch), reference)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`", "ignore:fan_in_fan_out is set")
def test_tied_or_disabled_adapters_are_not_merged(caplog: pytest.LogCaptureFixture) -> None:
    tied = adapted("lora", "gpt2", "causal-lm", target_modules=["c_attn", "lm_head"])  # lm_head shares wte
    assert tied.lm_head.base_layer.weight is tied.transformer.wte.weight
    batch = T.inputs("gpt2", "causal-lm")
    before, reference = tensors(tied), T.logits(tied, batch)
    with caplog.at_level("INFO"), torch.no_grad(), strategy_of(tied).merged_for_inference(tied) as merged:
        assert merged is False
        assert torch.equal(T.logits(tied, batch), reference)
    assert "shared with another parameter" in caplog.text
    assert_identical(tied, before)

    model = adapted("lora", "bert", "seq-cls")
    before = tensors(model)
    strategy_of(model).tuner.disable_adapter_layers()
    try:
        with torch.no_grad(), strategy_of(model).merged_for_inference(model) as merged:
            assert merged is False
    finally:
        strategy_of(model).tuner.enable_adapter_layers()
    assert_identical(model, before)


# -- evaluation ---------------------------------------------------------------------------------


class OneProcess:
    """The two Accelerate calls ``evaluate`` makes, for a single process."""

    def gather_for_metrics(self, value: Any) -> Any:
        return value

    def pad_across_processes(self, value: torch.Tensor, **_: Any) -> torch.Tensor:
        return value


def eval_batches(task: str, size: int = 4) -> list[dict[str, torch.Tensor]]:
    data = task_data(task, n_eval=12)
    return [data.collator([data.eval[i] for i in range(j, j + size)]) for j in range(0, len(data.eval), size)]


def run_evaluation(model: nn.Module, head: str, merged: bool) -> dict[str, float]:
    task = TASKS[head]
    evaluator = evaluator_for(task, ["a", "b", "c"] if task == "sequence-classification" else None)
    return evaluate(model, eval_batches(task), task=task, accelerator=OneProcess(), evaluator=evaluator,
                    merged=merged)


@pytest.mark.parametrize("strategy,arch,head", EVAL_CASES, ids=[f"{s}-{a}-{h}" for s, a, h in EVAL_CASES])
def test_evaluate_merged_gives_the_same_metrics_and_restores_the_weights(strategy: str, arch: str,
                                                                         head: str) -> None:
    model = adapted(strategy, arch, head)
    before = tensors(model)
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(all(x.merged for x in tuner_layers(m))))
    plain = run_evaluation(model, head, merged=False)
    assert seen == [False] * 3
    assert_identical(model, before)
    merged = run_evaluation(model, head, merged=True)
    assert seen[3:] == [True] * 3  # every batch ran on merged weights
    assert_identical(model, before)
    assert merged.keys() == plain.keys()
    for key in plain:
        assert merged[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-7), key


@pytest.mark.parametrize("error", [RuntimeError("batch 2 failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_evaluation_interrupted_mid_way_restores_the_weights(error: BaseException,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = adapted("lora", "bert", "seq-cls")
    batch = T.inputs("bert", "seq-cls")
    before, reference = tensors(model), T.logits(model, batch)
    model.train()
    forward, calls = model.forward, []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(all(layer.merged for layer in tuner_layers(model)))
        if len(calls) == 2:
            raise error
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    with pytest.raises(type(error)):
        run_evaluation(model, "seq-cls", merged=True)
    assert calls == [True, True]
    assert model.training  # evaluate puts the mode back too
    monkeypatch.undo()
    assert_identical(model, before)
    model.eval()
    assert torch.equal(T.logits(model, batch), reference)


def test_full_fine_tuning_evaluates_as_it_is() -> None:
    model = T.build("bert", "seq-cls")
    before = tensors(model)
    assert run_evaluation(model, "seq-cls", merged=True) == run_evaluation(model, "seq-cls", merged=False)
    assert_equal_dicts(tensors(model), before)


# -- the trainer option -------------------------------------------------------------------------


def test_merged_eval_is_a_validated_bool() -> None:
    assert TrainConfig().merged_eval is True
    assert TrainConfig.from_dict(TrainConfig(merged_eval=False).to_dict()).merged_eval is False
    with pytest.raises(ConfigError, match="merged_eval"):
        TrainConfig(merged_eval="yes")


@contextmanager
def recording(calls: list[bool], original: Any, self: Any, model: nn.Module) -> Iterator[bool]:
    with original(self, model) as merged:
        calls.append(merged)
        yield merged


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_train_evaluates_merged_with_the_same_metrics(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = LoraStrategy.merged_for_inference
    results, calls = {}, {True: [], False: []}
    for merged_eval in (True, False):
        monkeypatch.setattr(LoraStrategy, "merged_for_inference",
                            lambda self, model, c=calls[merged_eval]: recording(c, original, self, model))
        model = adapted(strategy, "bert", "seq-cls")
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        config = TrainConfig(batch_size=4, max_steps=4, eval_steps=2, progress_bar=False, merged_eval=merged_eval)
        results[merged_eval] = train(model, task_data("sequence-classification"), config=config)
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert calls == {True: [True, True], False: []}, "petl.train must pass merged=config.merged_eval to evaluate"
    on, off = results[True], results[False]
    assert [e["step"] for e in on.eval_history] == [e["step"] for e in off.eval_history] == [2, 4]
    for a, b in zip(on.eval_history, off.eval_history, strict=True):
        for key in b:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    assert on.step_losses == off.step_losses  # evaluation leaves training exactly as it was
