"""Several named adapters on one model (petl.core.adapters): stacking, switching, petl.disabled,
training only the active ones, save/load by name, delete, and every verb as a transaction.

Expectations are independent of the code under test: the unwrapped base model's outputs
(``torch.equal``), a model that only ever carried the other adapter, and peft's own
multi-adapter LoraModel (``set_adapter`` with a list) for two stacked LoRAs.
"""

from __future__ import annotations

import json
import signal
import warnings

import peft
import pytest
import tiny_models as tm
import torch
from safetensors.torch import load_file, save_file

import petl
from petl.core.io import WEIGHTS_NAME, adapter_tensors
from petl.errors import CheckpointError, ConfigError, PetlError, TargetNotFoundError, UnsupportedModelError
from petl.strategies.lora import LoraStrategy
from petl.training import TrainConfig
from petl.training.step import StepRunner

CASES = [("bert", "seq-cls"), ("llama", "causal-lm")]
QV = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}
QK = {"bert": ["query", "key"], "llama": ["q_proj", "k_proj"]}


def _perturb(model: torch.nn.Module, name: str, seed: int) -> None:
    """Give adapter ``name`` (and its heads) random values, so that it changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in adapter_tensors(model, name).values():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.3)


def _copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in tensors.items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fingerprint(model: torch.nn.Module) -> tuple:
    return (_copy(model.state_dict()), [(n, type(m)) for n, m in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()}, petl.adapters(model))


def _assert_unchanged(model: torch.nn.Module, before: tuple) -> None:
    after = _fingerprint(model)
    assert _equal(before[0], after[0])
    assert before[1:] == after[1:]


def _stacked(arch: str, head: str) -> torch.nn.Module:
    model = tm.build(arch, head)
    petl.wrap(model, "bottleneck")  # "default"; on BERT it also trains the fresh classifier
    petl.add_adapter(model, "lo", "lora", r=4)
    _perturb(model, "default", 1)
    _perturb(model, "lo", 2)
    return model


def _base_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if "lora_" not in n and "petl_adapter" not in n and "classifier" not in n}


def _steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], n: int = 3) -> None:
    model.train()
    runner = StepRunner(model, TrainConfig(learning_rate=1e-2, max_grad_norm=None), total_steps=n)
    for _ in range(n):
        runner(batch)
    model.eval()


@pytest.mark.parametrize(("arch", "head"), CASES)
@pytest.mark.usefixtures("python_sigint")
def test_stack_train_switch_and_disable(arch: str, head: str) -> None:
    batch = tm.inputs(arch, head)
    reference = tm.logits(tm.build(arch, head), batch)
    model = _stacked(arch, head)
    assert [(a.name, a.strategy, a.active, a.trainable) for a in petl.adapters(model)] == [
        ("default", "bottleneck", True, True), ("lo", "lora", True, True)]
    both = tm.logits(model, batch)
    assert not torch.equal(both, reference)
    petl.set_active(model, "lo")
    only_lora = tm.logits(model, batch)
    assert not torch.equal(only_lora, both) and not torch.equal(only_lora, reference)

    # Only the active adapter trains: the other one's tensors (and its head) and the base stay as they were.
    bottleneck, lora, base = (_copy(adapter_tensors(model, "default")), _copy(adapter_tensors(model, "lo")),
                              _base_params(model))
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    _steps(model, batch)
    assert _equal(adapter_tensors(model, "default"), bottleneck)
    assert not _equal(adapter_tensors(model, "lo"), lora)
    assert _equal(_base_params(model), base)

    petl.set_active(model, "default")
    lora = _copy(adapter_tensors(model, "lo"))
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    _steps(model, batch)
    assert _equal(adapter_tensors(model, "lo"), lora)
    assert not _equal(adapter_tensors(model, "default"), bottleneck)
    assert _equal(_base_params(model), base)

    petl.set_active(model, ["default", "lo"])
    stacked = tm.logits(model, batch)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with petl.disabled(model):
        assert torch.equal(tm.logits(model, batch), reference)
        assert not any(p.requires_grad for p in model.parameters())
        assert not any(a.active for a in petl.adapters(model))
    assert torch.equal(tm.logits(model, batch), stacked)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

    # Ctrl-C (and any exception) inside the block: the activation comes back all the same.
    with pytest.raises(KeyboardInterrupt), petl.disabled(model):
        signal.raise_signal(signal.SIGINT)
    assert torch.equal(tm.logits(model, batch), stacked)
    assert [a.active for a in petl.adapters(model)] == [True, True]

    petl.unwrap(model)
    assert torch.equal(tm.logits(model, batch), reference)
    assert all(type(m).__module__.startswith(("torch", "transformers")) for m in model.modules())


@pytest.mark.parametrize(("arch", "head"), CASES)
def test_save_load_by_name_and_delete(arch: str, head: str, tmp_path) -> None:
    batch = tm.inputs(arch, head)
    model = _stacked(arch, head)
    stacked = tm.logits(model, batch)
    petl.save(model, tmp_path / "bn", adapter="default")
    petl.save(model, tmp_path / "lo", adapter="lo")
    with pytest.raises(PetlError, match="adapter=NAME"):
        petl.save(model, tmp_path / "both")
    assert json.loads((tmp_path / "lo" / "petl_config.json").read_text())["strategy"] == "lora"
    assert (tmp_path / "lo" / "adapter_config.json").is_file()  # the same folder a single-adapter save writes

    fresh = tm.build(arch, head)
    petl.load(fresh, tmp_path / "bn", adapter="bn")
    petl.load(fresh, tmp_path / "lo", adapter="lo")
    assert torch.equal(tm.logits(fresh, batch), stacked)
    assert [(a.name, a.active, a.trainable) for a in petl.adapters(fresh)] == [("bn", True, False),
                                                                               ("lo", True, False)]
    assert not any(p.requires_grad for p in fresh.parameters())  # loaded for inference
    petl.set_active(fresh, ["bn", "lo"], trainable=True)
    assert any(p.requires_grad for p in fresh.parameters())

    # A model that only ever carried the LoRA adapter, through the single-adapter API ...
    only = tm.build(arch, head)
    petl.load(only, tmp_path / "lo")
    expected = tm.logits(only, batch)
    # ... computes what the stack computes once the bottleneck adapter is deleted.
    petl.delete_adapter(model, "default")
    assert [a.name for a in petl.adapters(model)] == ["lo"]
    assert torch.equal(tm.logits(model, batch), expected)
    assert [type(m) for m in model.modules()] == [type(m) for m in only.modules()]  # peft names differ: lo, default
    assert not any("petl_adapter" in n for n, _ in model.named_modules())

    # peft itself reads the LoRA folder saved by name. (On BERT the classifier belongs to the other adapter, and
    # peft's PeftModelForSequenceClassification insists on finding a classifier in a SEQ_CLS folder.)
    if head == "causal-lm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft.PeftModel.from_pretrained(tm.build(arch, head), str(tmp_path / "lo"))
        torch.testing.assert_close(tm.logits(theirs, batch), expected, rtol=1e-5, atol=1e-5)

    # Deleting the last adapter is unwrap.
    base = petl.delete_adapter(model, "lo")
    assert torch.equal(tm.logits(base, batch), tm.logits(tm.build(arch, head), batch))
    assert petl.adapters(base) == []


@pytest.mark.parametrize(("arch", "head"), CASES)
def test_two_loras_with_different_ranks(arch: str, head: str, tmp_path) -> None:
    batch = tm.inputs(arch, head)
    model = tm.build(arch, head)
    petl.add_adapter(model, "a", "lora", r=2, target_modules=QV[arch], modules_to_save=[])
    petl.add_adapter(model, "b", "lora", r=8, target_modules=QK[arch], modules_to_save=[])
    _perturb(model, "a", 3)
    _perturb(model, "b", 4)
    q = next(m for n, m in model.named_modules() if n.endswith(QV[arch][0]) and hasattr(m, "lora_A"))
    assert q.lora_A["a"].weight.shape[0] == 2 and q.lora_A["b"].weight.shape[0] == 8
    stacked = tm.logits(model, batch)

    # peft's own LoraModel with the same two adapters, both active.
    reference = tm.build(arch, head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(reference, peft.LoraConfig(r=2, lora_alpha=16, target_modules=QV[arch]), "a")
        theirs.add_adapter("b", peft.LoraConfig(r=8, lora_alpha=16, target_modules=QK[arch]))
    for name in ("a", "b"):  # petl saves peft's keys: a PeftModel's, "base_model.model." first
        loaded = peft.set_peft_model_state_dict(theirs, adapter_tensors(model, name), adapter_name=name)
        assert not loaded.unexpected_keys
    theirs.base_model.set_adapter(["a", "b"])
    torch.testing.assert_close(tm.logits(theirs, batch), stacked, rtol=1e-5, atol=1e-6)

    petl.save(model, tmp_path / "a", adapter="a")
    only_a = petl.load(tm.build(arch, head), tmp_path / "a")
    petl.set_active(model, "a")
    assert torch.equal(tm.logits(model, batch), tm.logits(only_a, batch))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n and ".a." in n}

    petl.set_active(model, ["a", "b"])
    petl.delete_adapter(model, "b")
    assert torch.equal(tm.logits(model, batch), tm.logits(only_a, batch))
    def peft_default(name: str) -> str:
        return ".".join("default" if part == "a" else part for part in name.split("."))

    assert [(peft_default(n), type(m)) for n, m in model.named_modules()] == [
        (n, type(m)) for n, m in only_a.named_modules()]  # the key layers are plain Linear layers again
    assert model.peft_config.keys() == {"a"}


@pytest.mark.parametrize(("arch", "head"), CASES)
def test_failures_leave_the_model_unchanged(arch: str, head: str, tmp_path, monkeypatch) -> None:
    model = _stacked(arch, head)
    before = _fingerprint(model)
    with pytest.raises(ConfigError, match="Did you mean 'lo'"):
        petl.set_active(model, ["default", "low"])
    with pytest.raises(ConfigError, match="Did you mean 'default'"):
        petl.delete_adapter(model, "defualt")
    with pytest.raises(ConfigError, match="already has an adapter named 'lo'"):
        petl.add_adapter(model, "lo", "lora", r=2)
    with pytest.raises(ConfigError, match="adapter name"):
        petl.add_adapter(model, "a.b", "lora", r=2)
    with pytest.raises(PetlError, match="one adapter per model"):
        petl.add_adapter(model, "bn2", "bottleneck")
    with pytest.raises(PetlError, match="AdaLoraModel"):
        petl.add_adapter(model, "ada", "adalora", total_step=10)
    with pytest.raises(TargetNotFoundError):
        petl.add_adapter(model, "nowhere", "lora", target_modules=["no_such_layer"])
    if head == "seq-cls":
        with pytest.raises(ConfigError, match="belongs to one adapter"):
            petl.add_adapter(model, "lo2", "lora", modules_to_save=["classifier"])
    _assert_unchanged(model, before)
    assert model.peft_config.keys() == {"lo"}  # the shared peft tuner forgot the failed adapters

    # A failure after the strategy injected itself: everything is put back, and a retry works.
    def broken(self, model, active, trainable):
        raise RuntimeError("switch failed")

    monkeypatch.setattr(LoraStrategy, "set_active", broken)
    with pytest.raises(UnsupportedModelError, match="switch failed"):
        petl.add_adapter(model, "lo2", "lora", r=2, target_modules=QK[arch])
    monkeypatch.undo()
    _assert_unchanged(model, before)
    assert model.peft_config.keys() == {"lo"}
    petl.add_adapter(model, "lo2", "lora", r=2, target_modules=QK[arch])
    petl.delete_adapter(model, "lo2")
    _assert_unchanged(model, before)

    # A folder whose tensors do not fit: load by name adds nothing.
    petl.save(model, tmp_path / "lo", adapter="lo")
    tensors = load_file(tmp_path / "lo" / WEIGHTS_NAME)
    key = next(iter(tensors))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "lo" / WEIGHTS_NAME)
    with pytest.raises(CheckpointError):
        petl.load(model, tmp_path / "lo", adapter="lo3")
    _assert_unchanged(model, before)


def test_single_adapter_models_take_the_new_verbs() -> None:
    arch, head = "llama", "causal-lm"
    batch = tm.inputs(arch, head)
    reference = tm.logits(tm.build(arch, head), batch)
    model = petl.wrap(tm.build(arch, head), "lora", r=4)
    _perturb(model, "default", 5)
    wrapped = tm.logits(model, batch)
    assert [(a.name, a.strategy) for a in petl.adapters(model)] == [("default", "lora")]
    with petl.disabled(model):
        assert torch.equal(tm.logits(model, batch), reference)
    assert torch.equal(tm.logits(model, batch), wrapped)
    assert petl.adapters(tm.build(arch, head)) == []
    merged = petl.merge(model)  # a single active adapter still merges
    torch.testing.assert_close(tm.logits(merged, batch), wrapped, rtol=1e-5, atol=1e-5)
