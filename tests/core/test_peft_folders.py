"""peft folders in (petl.load of a peft save_pretrained folder), peft folders out (AutoPeftModel
loads a petl folder), and load_weights into an already wrapped model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import peft
import pytest
import tiny_models as T
import torch
import transformers as tf
from safetensors.torch import load_file
from torch import nn

import petl
from petl.core import registry
from petl.core.io import CONFIG_NAME, WEIGHTS_NAME, adapter_tensors, load_weights
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import CheckpointError, DuplicateStrategyError, NotWrappedError
from petl.strategies.adalora import AdaLoraStrategy
from petl.strategies.lora import LoraConfig, LoraStrategy

PEFT_TASKS = {"seq-cls": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
CASES = [("bert", "seq-cls"), ("llama", "causal-lm")]
IDS = [f"{arch}-{head}" for arch, head in CASES]


def _randomise(model: nn.Module, seed: int = 3) -> nn.Module:
    """Move every trainable tensor off its initial value (LoRA's B starts at zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.1)
    return model


def _peft_folder(arch: str, head: str, folder: Path, config: peft.PeftConfig) -> Path:
    model = _randomise(peft.get_peft_model(T.build(arch, head), config))
    model.save_pretrained(folder)
    return folder


def _peft_reference(arch: str, head: str, folder: Path) -> torch.Tensor:
    return T.logits(peft.PeftModel.from_pretrained(T.build(arch, head), folder).eval(), T.inputs(arch, head))


def _fingerprint(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[type]]:
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _untouched(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[type]]) -> bool:
    tensors, classes = before
    after = model.state_dict()
    return (not is_wrapped(model) and not hasattr(model, "peft_config") and set(after) == set(tensors)
            and all(torch.equal(tensors[k], after[k]) for k in tensors)
            and [type(m) for m in model.modules()] == classes)


# -- peft folders in ---------------------------------------------------------------------------------------


LORA_OPTIONS = {
    "defaults": {"r": 2},
    "rslora-bias": {"r": 4, "lora_alpha": 16, "use_rslora": True, "bias": "lora_only", "lora_dropout": 0.1},
    "no-task-type": {"r": 2, "task_type": None},
}


@pytest.mark.parametrize("options", LORA_OPTIONS.values(), ids=LORA_OPTIONS.keys())
@pytest.mark.parametrize(("arch", "head"), CASES, ids=IDS)
def test_a_peft_lora_folder_loads_exactly_like_peft(arch: str, head: str, options: dict, tmp_path: Path) -> None:
    options = {"task_type": PEFT_TASKS[head], **options}
    if options["task_type"] is None and head == "seq-cls":
        options["modules_to_save"] = ["classifier"]
    folder = _peft_folder(arch, head, tmp_path, peft.LoraConfig(**options))
    assert not (folder / CONFIG_NAME).exists()
    model = petl.load(T.build(arch, head), folder)
    assert torch.equal(T.logits(model, T.inputs(arch, head)), _peft_reference(arch, head, folder))
    config = state_of(model).strategy.config
    assert isinstance(config, LoraConfig) and config.r == options["r"]
    assert config.modules_to_save == (("classifier",) if head == "seq-cls" else ())
    saved = load_file(folder / WEIGHTS_NAME)
    if head == "seq-cls":  # the trained head, saved by peft without its modules_to_save infix
        trained = model.classifier.modules_to_save["default"].weight
        assert torch.equal(trained, saved["base_model.model.classifier.weight"])


def test_a_regular_expression_target_and_the_trained_head(tmp_path: Path) -> None:
    folder = _peft_folder("llama", "causal-lm", tmp_path, peft.LoraConfig(
        r=2, target_modules=r".*\.(k_proj|down_proj)", modules_to_save=["lm_head"], task_type="CAUSAL_LM"))
    model = petl.load(T.build("llama", "causal-lm"), folder)
    config = state_of(model).strategy.config
    assert config.target_modules == r".*\.(k_proj|down_proj)" and config.modules_to_save == ("lm_head",)
    assert torch.equal(T.logits(model, T.inputs("llama", "causal-lm")), _peft_reference("llama", "causal-lm", folder))


@pytest.mark.parametrize(("arch", "head"), CASES, ids=IDS)
def test_a_peft_adalora_folder_loads_exactly_like_peft(arch: str, head: str, tmp_path: Path) -> None:
    folder = _peft_folder(arch, head, tmp_path, peft.AdaLoraConfig(
        init_r=4, target_r=2, tinit=1, tfinal=1, total_step=10, deltaT=2, beta1=0.8, orth_reg_weight=0.2,
        task_type=PEFT_TASKS[head]))
    model = petl.load(T.build(arch, head), folder)
    assert torch.equal(T.logits(model, T.inputs(arch, head)), _peft_reference(arch, head, folder))
    config = state_of(model).strategy.config
    assert (config.strategy, config.init_r, config.target_r, config.total_step, config.deltaT, config.beta1,
            config.orth_reg_weight) == ("adalora", 4, 2, 10, 2, 0.8, 0.2)


def test_a_peft_adalora_folder_saved_after_rank_allocation_is_padded_back_to_init_r(tmp_path: Path) -> None:
    batch = T.inputs("bert", "seq-cls")
    theirs = peft.get_peft_model(T.build("bert", "seq-cls"), peft.AdaLoraConfig(
        init_r=6, target_r=2, tinit=2, tfinal=2, total_step=12, task_type="SEQ_CLS"))
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    theirs.train()
    for step in range(1, 13):
        theirs(**batch).loss.backward()
        optimizer.step()
        theirs.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    theirs.eval()
    theirs.save_pretrained(tmp_path)
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    ranks = {k: v.shape[0] for k, v in load_file(tmp_path / WEIGHTS_NAME).items() if k.endswith("lora_E")}
    assert pattern and min(ranks.values()) < 6, "peft should have saved shrunk layers"
    model = petl.load(T.build("bert", "seq-cls"), tmp_path)
    assert torch.equal(T.logits(model, batch), _peft_reference("bert", "seq-cls", tmp_path))
    assert torch.equal(T.logits(model, batch), T.logits(theirs, batch))
    for key, tensor in adapter_tensors(model).items():
        if key.endswith("lora_E"):
            assert tensor.shape[0] == 6 and int((tensor != 0).sum()) <= ranks[key]


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    # use_dora, rank_pattern, alpha_pattern, layers_to_transform and init_lora_weights='pissa' are
    # options of petl's lora now (tests/strategies/test_lora.py loads such peft folders).
    "exclude": ({"exclude_modules": ["value"]}, "exclude_modules="),
    "lora bias": ({"lora_bias": True}, "lora_bias=True"),
    "corda": ({"init_lora_weights": "corda"}, "init_lora_weights='corda'.*data pass"),
    "a newer peft's option": ({"some_future_option": 3}, "some_future_option=3 .*does not know"),
    "bad value": ({"lora_dropout": 2.0}, "dropout"),
    "bad targets": ({"target_modules": 7}, "target_modules=7"),
}


@pytest.mark.parametrize(("change", "match"), REFUSED.values(), ids=REFUSED.keys())
def test_peft_options_petl_cannot_reproduce_are_refused(change: dict, match: str, tmp_path: Path) -> None:
    folder = _peft_folder("bert", "seq-cls", tmp_path, peft.LoraConfig(r=2, task_type="SEQ_CLS"))
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**adapter_config, **change}))
    model = T.build("bert", "seq-cls")
    before = _fingerprint(model)
    with pytest.raises(CheckpointError, match=match):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_init_methods_that_only_initialise_the_adapter_are_accepted(tmp_path: Path) -> None:
    folder = _peft_folder("bert", "seq-cls", tmp_path, peft.LoraConfig(r=2, init_lora_weights="gaussian",
                                                                       task_type="SEQ_CLS"))
    model = petl.load(T.build("bert", "seq-cls"), folder)
    assert torch.equal(T.logits(model, T.inputs("bert", "seq-cls")), _peft_reference("bert", "seq-cls", folder))


def test_an_olora_folder_loads_with_peft_outputs(tmp_path: Path) -> None:
    # peft and petl both run OLoRA's QR on the base weights again, then load the trained A and B.
    folder = _peft_folder("llama", "causal-lm", tmp_path, peft.LoraConfig(r=2, init_lora_weights="olora"))
    model = petl.load(T.build("llama", "causal-lm"), folder)
    torch.testing.assert_close(T.logits(model, T.inputs("llama", "causal-lm")),
                               _peft_reference("llama", "causal-lm", folder), atol=1e-6, rtol=0)
    assert state_of(model).strategy.config.init == "olora"


def _smaller_bert() -> nn.Module:
    config = tf.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                           vocab_size=T.VOCAB, num_labels=T.NUM_LABELS)
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(config).eval()


@pytest.mark.parametrize(("source", "match"), [
    ("smaller bert", "shape mismatches"),
    ("llama seq-cls", "does not fit this BertForSequenceClassification: target_modules"),
    ("llama causal-lm", "task='causal-lm'"),
])
def test_a_peft_folder_of_another_base_model_is_refused(source: str, match: str, tmp_path: Path) -> None:
    if source == "smaller bert":
        peft_model = peft.get_peft_model(_smaller_bert(), peft.LoraConfig(r=2, task_type="SEQ_CLS"))
        _randomise(peft_model).save_pretrained(tmp_path)
    else:
        arch, head = source.split(" ")
        _peft_folder(arch, head, tmp_path, peft.LoraConfig(r=2, task_type=PEFT_TASKS[head]))
    model = T.build("bert", "seq-cls")
    before = _fingerprint(model)
    with pytest.raises(CheckpointError, match=match):
        petl.load(model, tmp_path)
    assert _untouched(model, before)


def test_a_peft_type_no_strategy_reads_is_refused(tmp_path: Path) -> None:
    # IA3 and most other peft tuners are read since petl.strategies.peft_tuners; LN tuning is not.
    _peft_folder("bert", "seq-cls", tmp_path, peft.LNTuningConfig(task_type="SEQ_CLS", target_modules=["LayerNorm"]))
    model = T.build("bert", "seq-cls")
    before = _fingerprint(model)
    with pytest.raises(CheckpointError, match="of type 'LN_TUNING', which no petl strategy reads.*ADALORA, BOFT"):
        petl.load(model, tmp_path)
    assert _untouched(model, before)


def test_a_folder_with_neither_description_names_both(tmp_path: Path) -> None:
    (tmp_path / WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"neither {CONFIG_NAME} .* nor adapter_config.json"):
        petl.load(T.build("bert", "seq-cls"), tmp_path)


def test_a_petl_folder_without_its_description_loads_through_adapter_config(tmp_path: Path) -> None:
    ours = _randomise(petl.wrap(T.build("bert", "seq-cls"), "lora", r=2))
    petl.save(ours, tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    loaded = petl.load(T.build("bert", "seq-cls"), tmp_path)
    assert torch.equal(T.logits(loaded, T.inputs("bert", "seq-cls")), T.logits(ours, T.inputs("bert", "seq-cls")))


def _strategy(name: str, **attrs: Any) -> type:
    """A LoRA subclass with its own config class (registering sets the config's strategy name)."""
    config_class = dataclasses.make_dataclass(f"{name}Config", [], bases=(LoraConfig,), frozen=True, kw_only=True)
    return type(name, (LoraStrategy,), {"config_class": config_class, **attrs})


def test_the_registry_finds_the_strategy_that_declares_a_peft_type() -> None:
    assert registry.for_peft_type("LORA") is LoraStrategy
    assert registry.for_peft_type("ADALORA") is AdaLoraStrategy
    assert registry.for_peft_type("PREFIX_TUNING") is None
    claimer = registry.register("test-claimer")(_strategy("Claimer", peft_type="TEST_CLAIMED"))
    registry.register("test-inheritor")(_strategy("Inheritor"))  # inherits LoRA's peft_type: no claim
    try:
        assert registry.for_peft_type("TEST_CLAIMED") is claimer
        assert registry.for_peft_type("LORA") is LoraStrategy
        registry.register("test-claimer-2")(_strategy("Claimer2", peft_type="TEST_CLAIMED"))
        with pytest.raises(DuplicateStrategyError, match="test-claimer', 'test-claimer-2'"):
            registry.for_peft_type("TEST_CLAIMED")
    finally:
        for name in ("test-claimer", "test-claimer-2", "test-inheritor"):
            registry.unregister(name)


# -- peft folders out --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "head", "task_type"), [
    ("bert", "seq-cls", "SEQ_CLS"), ("bert", "token-cls", "TOKEN_CLS"), ("llama", "causal-lm", "CAUSAL_LM"),
    ("t5", "seq2seq-lm", "SEQ_2_SEQ_LM"),
])
def test_adapter_config_names_the_head_in_peft_terms(arch: str, head: str, task_type: str) -> None:
    model = petl.wrap(T.build(arch, head), "lora", r=2)
    assert state_of(model).strategy.adapter_config(model)["task_type"] == task_type


def test_a_model_without_a_head_petl_knows_has_no_task_type() -> None:
    torch.manual_seed(0)
    model = petl.wrap(tf.BertModel(T.config("bert")).eval(), "lora", r=2)
    assert state_of(model).strategy.adapter_config(model)["task_type"] is None


@pytest.mark.parametrize(("arch", "head", "strategy"), [
    ("llama", "causal-lm", "lora"), ("bert", "seq-cls", "lora"), ("bert", "seq-cls", "adalora"),
])
def test_auto_peft_model_loads_a_petl_folder(arch: str, head: str, strategy: str, tmp_path: Path) -> None:
    auto_model = getattr(tf, T.HEADS[head])
    auto_peft = {"causal-lm": peft.AutoPeftModelForCausalLM, "seq-cls": peft.AutoPeftModelForSequenceClassification}
    T.build(arch, head).save_pretrained(tmp_path / "base")
    ours = _randomise(petl.wrap(auto_model.from_pretrained(tmp_path / "base").eval(), strategy))
    petl.save(ours, tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tmp_path / "base")
    theirs = auto_peft[head].from_pretrained(tmp_path / "adapter").eval()
    assert torch.equal(T.logits(theirs, T.inputs(arch, head)), T.logits(ours, T.inputs(arch, head)))


# -- load_weights ------------------------------------------------------------------------------------------


def _values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in adapter_tensors(model).items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["lora", "adalora", "bottleneck"])
def test_load_weights_puts_saved_values_back_in_place(strategy: str, tmp_path: Path) -> None:
    model = _randomise(petl.wrap(T.build("bert", "seq-cls"), strategy))
    petl.save(model, tmp_path)
    saved, logits = _values(model), T.logits(model, T.inputs("bert", "seq-cls"))
    _randomise(model, seed=7)
    assert not _equal(_values(model), saved)
    assert load_weights(model, tmp_path) is model
    assert _equal(_values(model), saved)
    assert torch.equal(T.logits(model, T.inputs("bert", "seq-cls")), logits)


def test_load_weights_into_adalora_after_rank_allocation(tmp_path: Path) -> None:
    batch = T.inputs("bert", "seq-cls")
    model = petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=6, target_r=2, tinit=1, tfinal=1)
    strategy = state_of(model).strategy
    strategy.on_train_begin(model, 6)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 7):
        penalty = strategy.regularization_loss(model)  # None: no orthogonality penalty (the default)
        (model(**batch).loss + (0 if penalty is None else penalty)).backward()
        optimizer.step()
        strategy.on_step_end(model, step)
        optimizer.zero_grad()
    assert strategy.tuner.peft_config["default"].rank_pattern, "the budget should have been allocated"
    petl.save(model, tmp_path)
    saved = _values(model)
    _randomise(model, seed=7)
    load_weights(model, tmp_path)  # peft alone would first shrink the layers to the live rank pattern
    assert _equal(_values(model), saved)


def test_load_weights_takes_a_peft_folder_with_the_same_options(tmp_path: Path) -> None:
    folder = _peft_folder("bert", "seq-cls", tmp_path, peft.LoraConfig(r=2, task_type="SEQ_CLS"))
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=2, alpha=8, target_modules=["query", "value"])
    load_weights(model, folder)
    assert torch.equal(T.logits(model, T.inputs("bert", "seq-cls")), _peft_reference("bert", "seq-cls", folder))


@pytest.mark.parametrize(("strategy", "options", "match"), [
    ("bottleneck", {}, "strategy: folder 'lora', model 'bottleneck'"),
    ("adalora", {}, "strategy: folder 'lora', model 'adalora'"),
    ("lora", {"r": 4}, "r: folder 2, model 4"),
    ("lora", {"r": 2, "modules_to_save": []}, r"modules_to_save: folder \['classifier'\], model \[\]"),
])
def test_load_weights_refuses_another_strategy_or_other_options(strategy: str, options: dict, match: str,
                                                                tmp_path: Path) -> None:
    petl.save(_randomise(petl.wrap(T.build("bert", "seq-cls"), "lora", r=2)), tmp_path)
    model = _randomise(petl.wrap(T.build("bert", "seq-cls"), strategy, **options), seed=7)
    before = _values(model)
    with pytest.raises(CheckpointError, match=match):
        load_weights(model, tmp_path)
    assert _equal(_values(model), before)


def test_load_weights_needs_a_wrapped_model(tmp_path: Path) -> None:
    petl.save(petl.wrap(T.build("bert", "seq-cls"), "lora", r=2), tmp_path)
    with pytest.raises(NotWrappedError):
        load_weights(T.build("bert", "seq-cls"), tmp_path)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("strategy", ["lora", "bottleneck"])
def test_a_fault_while_load_weights_copies_restores_every_value(
    strategy: str, error: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    petl.save(_randomise(petl.wrap(T.build("bert", "seq-cls"), strategy)), tmp_path)
    model = _randomise(petl.wrap(T.build("bert", "seq-cls"), strategy), seed=7)
    before = _values(model)
    wrapped = state_of(model).strategy
    real = wrapped.load_adapter_state_dict

    def copy_then_fail(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        real(model, state_dict)  # every tensor (and, for bottleneck, the head) already holds the new value
        raise error("injected")

    monkeypatch.setattr(wrapped, "load_adapter_state_dict", copy_then_fail)
    with pytest.raises(CheckpointError if error is RuntimeError else error, match="injected"):
        load_weights(model, tmp_path)
    assert _equal(_values(model), before)
    monkeypatch.undo()
    load_weights(model, tmp_path)
    assert not _equal(_values(model), before)
