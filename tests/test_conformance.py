"""The contract every registered strategy must keep, on every tiny architecture and head.

Runs over ``petl.available()``, so a new built-in strategy (or an installed plugin)
is checked without editing this file. A strategy that cannot handle a model must
say so with ``UnsupportedModelError`` and leave the model untouched.

Which models the built-in strategies handle is declared here, not inferred: a built-in
must wrap every architecture of ``tiny_models.CASES`` except those listed in
``EXPECTED_UNSUPPORTED`` (a refusal of any other fails the case). A listed pair that
starts to wrap is reported with a ``UserWarning`` (and then has to keep the whole
contract). A plugin has no declarations: it may refuse a model, but not every model.
"""

from __future__ import annotations

import warnings

import pytest
import tiny_models as T
import torch

import petl
from petl.core.io import adapter_tensors
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import AlreadyWrappedError, NotMergeableError, UnsupportedModelError
from petl.strategies.peft_tuners import TUNERS
from petl.training.config import TrainConfig
from petl.training.step import StepRunner

BRIDGED = tuple(TUNERS)
"""The peft tuners petl registers through its bridge (``petl.strategies.peft_tuners``)."""
BRIDGED_ARCHS = ("bert", "llama", "gpt2", "bart")
"""The bridged tuners run on these only (an encoder, two decoders, GPT-2's Conv1D among them, and an
encoder-decoder with a non-linear classification head) to keep the suite's time: over every
architecture they would add about five minutes on 2 cores. LoRA, which shares their code path, runs
on every architecture."""


def _cases(strategy: str) -> list[tuple[str, str]]:
    return [(a, h) for a, h in T.CASES if strategy not in BRIDGED or a in BRIDGED_ARCHS]


STRATEGIES = petl.available()
CASES = [pytest.param(s, a, h, id=f"{s}-{a}-{h}") for s in STRATEGIES for a, h in _cases(s)]
BUILTINS = ("adalora", "bottleneck", "lora", "prefix", "prompt", "p_tuning", *BRIDGED)
"""The strategies petl ships: their support of each architecture is declared below."""

TINY_OPTIONS = T.STRATEGY_OPTIONS
"""Options the conformance cases pass to ``petl.wrap`` for the tiny models (defaults otherwise)."""
IDENTITY_ATOL: dict[str, float] = {"hra": 1e-5}
"""Wider than 1e-6 where the method's identity at init is exact only up to rounding (HRA's reflections)."""

EXPECTED_UNSUPPORTED: dict[tuple[str, str], str] = {
    # (strategy, architecture of tiny_models.ARCH_HEADS): why it may raise UnsupportedModelError.
    # lora, adalora, prefix, bottleneck, ia3, vera, fourierft and randlora wrap every architecture.
    **{(name, "gpt2"): f"peft 0.21 has no {name} layer for GPT-2's Conv1D (only nn.Linear and convolutions)"
       for name in ("boft", "c3a", "delora", "hra", "lily", "loha", "lokr", "miss", "oft", "road", "shira")},
    **{(name, arch): "prompt tuning refuses encoder-decoders (generate() runs their encoder past its hooks)"
       for name in ("prompt", "p_tuning") for arch in T.ENCODER_DECODER},
}
"""Built-in (strategy, architecture) pairs that may refuse; every other built-in pair must wrap."""


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _wrap_or_unsupported(model: torch.nn.Module, strategy: str) -> UnsupportedModelError | None:
    """Wrap; on UnsupportedModelError check the model is untouched and return the error."""
    before = _snapshot(model)
    classes = [type(m) for m in model.modules()]
    try:
        petl.wrap(model, strategy, **TINY_OPTIONS.get(strategy, {}))
    except UnsupportedModelError as exc:
        assert str(exc), "an UnsupportedModelError must explain itself"
        assert not is_wrapped(model)
        assert [type(m) for m in model.modules()] == classes
        after = model.state_dict()
        assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
        return exc
    return None


def _expected_support(strategy: str, arch: str) -> bool | None:
    """True: must wrap; False: declared unsupported; None: no declaration (a plugin)."""
    if strategy not in BUILTINS:
        return None
    return (strategy, arch) not in EXPECTED_UNSUPPORTED


def _wrap_as_declared(model: torch.nn.Module, strategy: str, arch: str) -> bool:
    """Wrap and hold the outcome against the declarations; True when the model is wrapped.

    A declared-supported pair that refuses fails; a declared-unsupported pair that wraps
    warns; a plugin's refusal (model untouched) is accepted.
    """
    refusal = _wrap_or_unsupported(model, strategy)
    expected = _expected_support(strategy, arch)
    if refusal is not None and expected:
        pytest.fail(
            f"{strategy!r} is declared to support {arch!r} but refused {type(model).__name__}: {refusal}\n"
            f"Fix the strategy, or add ({strategy!r}, {arch!r}) with the reason to EXPECTED_UNSUPPORTED."
        )
    if refusal is None and expected is False:
        warnings.warn(UserWarning(
            f"{strategy!r} now wraps {arch!r} ({type(model).__name__}), which EXPECTED_UNSUPPORTED declares "
            f"unsupported ({EXPECTED_UNSUPPORTED[strategy, arch]}): remove the entry from the table."
        ), stacklevel=2)
    return refusal is None


def _train_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int = 2) -> None:
    """Optimizer steps as petl.train takes them (the strategy's three hooks included), planned for 10."""
    model.train()
    step = StepRunner(model, TrainConfig(learning_rate=1e-2, max_grad_norm=None), total_steps=10)
    for _ in range(steps):
        step(batch)
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
    if not _wrap_as_declared(model, strategy, arch):
        return
    cls = type(state_of(model).strategy)

    if getattr(cls, "identity_at_init", True):
        atol = IDENTITY_ATOL.get(strategy, 1e-6)
        torch.testing.assert_close(T.logits(model, batch), base_logits, atol=atol, rtol=0)
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
    if getattr(cls, "saves_frozen", False):  # fixed random bases or masks are saved too
        assert 0 < count.trainable <= sum(t.numel() for t in saved.values()), "what trains must be saved"
    else:
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
    if not _wrap_as_declared(model, strategy, arch):
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


def _refusals(strategy: str) -> dict[tuple[str, str], str]:
    """Wrap a fresh model of every case; the (arch, head) cases ``strategy`` refused, with its messages."""
    refused = {}
    for arch, head in _cases(strategy):
        refusal = _wrap_or_unsupported(T.build(arch, head), strategy)
        if refusal is not None:
            refused[arch, head] = str(refusal)
    return refused


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_supports_some_model(strategy: str) -> None:
    # Without this, a plugin refusing every model would pass the whole table above.
    refused = _refusals(strategy)
    assert len(refused) < len(_cases(strategy)), f"{strategy!r} refuses every tiny model: {refused}"
    if strategy in BUILTINS:
        declared = {arch for s, arch in EXPECTED_UNSUPPORTED if s == strategy}
        undeclared = {case: why for case, why in refused.items() if case[0] not in declared}
        assert not undeclared, f"{strategy!r} refuses models declared supported: {undeclared}"


def test_the_declarations_cover_the_builtins_and_name_real_architectures() -> None:
    assert set(BUILTINS) <= set(STRATEGIES), "a built-in is no longer registered: its rows would vanish silently"
    for (strategy, arch), reason in EXPECTED_UNSUPPORTED.items():
        assert strategy in BUILTINS, f"{strategy!r}: only built-ins are declared"
        assert arch in T.ARCH_HEADS, f"{arch!r} is not an architecture of tiny_models"
        assert reason.strip(), f"({strategy!r}, {arch!r}) needs a reason"


# -- the declarations can fail: the outcomes, checked on a forced refusal --------------------------


def _refuse(model: torch.nn.Module, strategy: str, **options: object) -> torch.nn.Module:
    raise UnsupportedModelError(f"{strategy} cannot handle {type(model).__name__} (forced by the test)")


def test_a_refusal_of_a_pair_declared_supported_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(petl, "wrap", _refuse)
    with pytest.raises(pytest.fail.Exception, match="declared to support 'bert'"):
        _wrap_as_declared(T.build("bert", "seq-cls"), "lora", "bert")


def test_a_declared_refusal_is_accepted_and_an_unexpected_wrap_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXPECTED_UNSUPPORTED, ("lora", "bert"), "declared by the test")
    model = T.build("bert", "seq-cls")
    with pytest.warns(UserWarning, match="now wraps 'bert'.*declared by the test"):
        assert _wrap_as_declared(model, "lora", "bert")
    assert is_wrapped(model)
    monkeypatch.setattr(petl, "wrap", _refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _wrap_as_declared(T.build("bert", "seq-cls"), "lora", "bert")


def test_a_plugin_may_refuse_some_models_but_not_all(monkeypatch: pytest.MonkeyPatch) -> None:
    real_wrap = petl.wrap

    def refuse_bert(model: torch.nn.Module, strategy: str, **options: object) -> torch.nn.Module:
        if model.config.model_type == "bert":
            _refuse(model, strategy)
        return real_wrap(model, "lora", **options)

    monkeypatch.setattr(petl, "wrap", refuse_bert)
    assert not _wrap_as_declared(T.build("bert", "seq-cls"), "some-plugin", "bert")
    assert set(_refusals("some-plugin")) == {("bert", head) for head in T.ARCH_HEADS["bert"]}
    monkeypatch.setattr(petl, "wrap", _refuse)
    with pytest.raises(AssertionError, match="refuses every tiny model"):
        test_every_strategy_supports_some_model("some-plugin")
