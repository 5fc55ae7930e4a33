"""The contract every registered strategy must keep, on every tiny architecture and head.

Runs over ``petl.available()``, so a new built-in strategy (or an installed plugin)
is checked without editing this file. A strategy that cannot handle a model must
say so with ``UnsupportedModelError`` and leave the model untouched.
"""

from __future__ import annotations

import pytest
import tiny_models as T
import torch

import petl
from petl.errors import AlreadyWrappedError, NotMergeableError, UnsupportedModelError
from petl.io import adapter_tensors
from petl.wrapping import is_wrapped, state_of

STRATEGIES = petl.available()
CASES = [pytest.param(s, a, h, id=f"{s}-{a}-{h}") for s in STRATEGIES for a, h in T.CASES]


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _wrap_or_unsupported(model: torch.nn.Module, strategy: str) -> bool:
    """Wrap; on UnsupportedModelError check the model is untouched and report False."""
    before = _snapshot(model)
    classes = [type(m) for m in model.modules()]
    try:
        petl.wrap(model, strategy)
    except UnsupportedModelError as exc:
        assert str(exc), "an UnsupportedModelError must explain itself"
        assert not is_wrapped(model)
        assert [type(m) for m in model.modules()] == classes
        after = model.state_dict()
        assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
        return False
    return True


def _train_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int = 2) -> None:
    strategy = state_of(model).strategy
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    strategy.on_train_begin(model, 10)
    for step in range(1, steps + 1):
        loss = model(**batch).loss
        extra = strategy.regularization_loss(model)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        optimizer.step()
        strategy.on_step_end(model, step)
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("strategy,arch,head", CASES)
def test_lifecycle(strategy: str, arch: str, head: str, tmp_path) -> None:
    model = T.build(arch, head)
    batch = T.inputs(arch, head)
    base_logits = T.logits(model, batch)
    base_state = _snapshot(model)
    base_classes = [type(m) for m in model.modules()]
    base_params = dict(model.named_parameters())
    requires_grad = {n: p.requires_grad for n, p in base_params.items()}
    if not _wrap_or_unsupported(model, strategy):
        return
    cls = type(state_of(model).strategy)

    if getattr(cls, "identity_at_init", True):
        torch.testing.assert_close(T.logits(model, batch), base_logits, atol=1e-6, rtol=0)
    with pytest.raises(AlreadyWrappedError):
        petl.wrap(model, strategy)

    heads = state_of(model).strategy.config.modules_to_save or ()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable, "a wrapped model must have something to train"
    for name, param in base_params.items():
        in_head = any(name == h or name.startswith(h + ".") for h in heads)
        assert in_head or id(param) not in trainable, f"base parameter {name} was left trainable"

    saved = adapter_tensors(model)
    count = petl.count_parameters(model)
    assert count.trainable == sum(t.numel() for t in saved.values()), "what trains must be what is saved"
    assert count.total >= sum(p.numel() for p in base_params.values())

    _train_steps(model, batch)
    for name, param in base_params.items():
        in_head = any(name == h or name.startswith(h + ".") for h in heads)
        if not in_head:
            assert torch.equal(param, base_state[name]), f"training changed the frozen base weight {name}"
    trained_logits = T.logits(model, batch)
    assert not torch.equal(trained_logits, base_logits), "two optimizer steps changed nothing"

    petl.save(model, tmp_path)
    fresh = T.build(arch, head)
    petl.load(fresh, tmp_path)
    torch.testing.assert_close(T.logits(fresh, batch), trained_logits, atol=0, rtol=0)

    base = petl.unwrap(model)
    assert not is_wrapped(base) and not hasattr(base, "peft_config")
    assert [type(m) for m in base.modules()] == base_classes
    after = base.state_dict()
    assert list(after) == list(base_state)
    for key, value in base_state.items():
        assert torch.equal(after[key], value), f"unwrap did not restore {key}"
    assert {n: p.requires_grad for n, p in base.named_parameters()} == requires_grad
    torch.testing.assert_close(T.logits(base, batch), base_logits, atol=0, rtol=0)


@pytest.mark.parametrize("strategy,arch,head", CASES)
def test_merge(strategy: str, arch: str, head: str) -> None:
    model = T.build(arch, head)
    batch = T.inputs(arch, head)
    if not _wrap_or_unsupported(model, strategy):
        return
    _train_steps(model, batch)
    wrapped_logits = T.logits(model, batch)
    try:
        merged = petl.merge(model)
    except NotMergeableError as exc:
        assert "merge" in str(exc)
        assert is_wrapped(model), "a refused merge must leave the model wrapped"
        torch.testing.assert_close(T.logits(model, batch), wrapped_logits, atol=0, rtol=0)
        return
    assert not is_wrapped(merged)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(T.logits(merged, batch), wrapped_logits, atol=1e-5, rtol=1e-5)
