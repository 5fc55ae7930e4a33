"""wrap / unwrap / merge and count_parameters on their own."""

from __future__ import annotations

import json

import pytest
import tiny_models as T
import torch

import petl
from petl.core.wrapping import state_of
from petl.errors import ConfigError, NotWrappedError


def test_wrap_returns_the_same_object_and_freezes_the_base() -> None:
    model = T.build("llama", "causal-lm")
    assert petl.wrap(model, "lora") is model
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_options_next_to_a_config_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both"):
        petl.wrap(T.build("bert", "seq-cls"), petl.LoraConfig(r=2), alpha=4)


def test_strategy_of_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="name such as 'lora'"):
        petl.wrap(T.build("bert", "seq-cls"), 8)  # type: ignore[arg-type]


def test_non_module_is_refused() -> None:
    with pytest.raises(petl.PetlError, match="torch.nn.Module"):
        petl.wrap("bert-base-uncased", "lora")  # type: ignore[arg-type]


def test_unwrap_and_merge_need_a_wrapped_model() -> None:
    for fn in (petl.unwrap, petl.merge):
        with pytest.raises(NotWrappedError, match="not wrapped by petl"):
            fn(T.build("bert", "seq-cls"))


def test_user_frozen_flags_survive_a_wrap_unwrap_cycle() -> None:
    model = T.build("bert", "seq-cls")
    model.bert.embeddings.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    petl.unwrap(petl.wrap(model, "lora"))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_config_round_trips_through_dict() -> None:
    config = petl.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    data = config.to_dict()
    assert data["target_modules"] == ["query", "value"]
    assert petl.LoraConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="Valid options"):
        petl.LoraConfig.from_dict({**data, "extra": 1})


def test_configs_are_frozen_and_keyword_only() -> None:
    config = petl.LoraConfig(r=4)
    with pytest.raises(AttributeError):
        config.r = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        petl.LoraConfig(4)  # type: ignore[misc]


def test_count_parameters_of_a_plain_model_is_full_fine_tuning() -> None:
    model = T.build("gpt2", "causal-lm")
    count = petl.count_parameters(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count.trainable == count.total == sum(unique.values())
    assert count.fraction == 1.0 and str(count).endswith("(100.00%)")


def test_count_parameters_counts_tied_weights_once() -> None:
    model = T.build("gpt2", "causal-lm")
    assert model.lm_head.weight is model.transformer.wte.weight
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert petl.count_parameters(model).total == naive - model.lm_head.weight.numel()


def test_count_parameters_on_any_module() -> None:
    layer = torch.nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    count = petl.count_parameters(layer)
    assert (count.trainable, count.total) == (6, 8)
    assert str(count) == "6 / 8 (75.00%)"


@pytest.mark.parametrize("strategy", ["lora", "bottleneck"])
def test_modules_to_save_takes_short_names_and_records_full_ones(strategy: str, tmp_path) -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), strategy, modules_to_save=["pooler", "classifier"])
    assert state_of(model).strategy.config.modules_to_save == ("bert.pooler", "classifier")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("pooler" in n for n in trainable) and any("classifier" in n for n in trainable)
    petl.save(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "petl_config.json").read_text())
    assert saved["config"]["modules_to_save"] == ["bert.pooler", "classifier"]
    loaded = petl.load(T.build("bert", "seq-cls"), tmp_path / "adapter")
    assert petl.count_parameters(loaded).trainable == petl.count_parameters(model).trainable


def test_modules_to_save_inside_a_listed_module_is_not_listed_twice() -> None:
    names = ["bert.pooler", "pooler.dense", "classifier"]
    model = petl.wrap(T.build("bert", "seq-cls"), "bottleneck", modules_to_save=names)
    assert state_of(model).strategy.config.modules_to_save == ("bert.pooler", "classifier")


def test_modules_to_save_without_the_fresh_head_warns() -> None:
    with pytest.warns(UserWarning, match=r"leaves out the fresh task head \['classifier'\]"):
        petl.wrap(T.build("bert", "seq-cls"), "lora", modules_to_save=["pooler"])
