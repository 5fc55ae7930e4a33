"""peft's other tuners as petl strategies (petl.strategies.peft_tuners): generated configs, parity with
peft's own PeftModel, merging, and the benchmark and estimate finding them through the registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import peft
import pytest
import tiny_models as T
import torch
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

import petl
from petl.bench.defaults import default_config
from petl.core import registry
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import ConfigError, NotMergeableError
from petl.strategies.peft_bridge import PEFT_METADATA
from petl.strategies.peft_tuners import NOT_REGISTERED, TUNERS

ARCH, HEAD = "bert", "seq-cls"


def _trained(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    return T.perturb_trainable(model, seed)


def test_at_least_15_strategies_and_every_peft_type_is_accounted_for() -> None:
    names = petl.available()
    assert len(names) >= 15
    assert set(TUNERS) <= set(names)
    peft_types = {t.value for t in PEFT_TYPE_TO_TUNER_MAPPING}
    registered = {tuner.peft_type for tuner in TUNERS.values()}
    assert not registered & set(NOT_REGISTERED)
    assert peft_types <= registered | set(NOT_REGISTERED), peft_types - registered - set(NOT_REGISTERED)
    assert all(reason.strip() for reason in NOT_REGISTERED.values())
    for name, tuner in TUNERS.items():  # petl.load finds each by the peft_type of adapter_config.json
        assert registry.for_peft_type(tuner.peft_type) is registry.get(name)


@pytest.mark.parametrize("name", ["loha", "ia3", "oft", "vera"])
def test_the_config_has_peft_fields_types_and_defaults(name: str) -> None:
    cls = registry.get(name)
    config_class, peft_class = cls.config_class, cls.peft_config_class
    ours = {f.name for f in dataclasses.fields(config_class)}
    theirs = {f.name for f in dataclasses.fields(peft_class)}
    assert ours == (theirs - PEFT_METADATA - {"fan_in_fan_out"}) | {"modules_to_save"}
    assert not ours & {"task_type", "inference_mode", "base_model_name_or_path", "revision", "peft_type"}
    default, reference = config_class(), peft_class()
    for option in ours - {"modules_to_save"}:
        value, expected = getattr(default, option), getattr(reference, option)
        assert (list(value) if isinstance(value, tuple) else value) == expected, option


def test_loha_defaults_are_peft_s() -> None:
    config = registry.get("loha").config_class()
    assert (config.r, config.alpha, config.rank_dropout, config.init_weights) == (8, 8, 0.0, True)


def test_bad_options_are_config_errors_before_the_model_is_touched() -> None:
    model = T.build(ARCH, HEAD)
    with pytest.raises(ConfigError, match=r"'rr' is not an option of the 'loha' strategy\. Did you mean 'r'\?"):
        petl.wrap(model, "loha", rr=4)
    with pytest.raises(ConfigError, match=r"r must be int, got str 'x'"):
        petl.wrap(model, "loha", r="x")
    with pytest.raises(ConfigError, match="one of 'none', 'all', 'oft_only'"):
        petl.wrap(model, "oft", bias="some")
    with pytest.raises(ConfigError, match="peft refuses.*either r .* or oft_block_size"):  # peft's own check
        petl.wrap(model, "oft", r=4, oft_block_size=4)
    assert not is_wrapped(model)
    with pytest.raises(ConfigError, match="'task_type' is not an option"):
        registry.get("ia3").config_class.from_dict({"task_type": "SEQ_CLS"})


def test_hra_gram_schmidt_on_the_symmetric_init_is_refused_and_odd_r_trains_finite() -> None:
    # peft's symmetric init repeats each Householder vector, so Gram-Schmidt meets zero vectors.
    peft_model = peft.get_peft_model(T.build(ARCH, HEAD), peft.HRAConfig(r=4, target_modules=["query"]))
    u = next(m.hra_u["default"] for m in peft_model.modules() if hasattr(m, "hra_u"))
    assert torch.equal(u[:, 0::2], u[:, 1::2])
    model = T.build(ARCH, HEAD)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"apply_GS=True and init_weights=True needs an odd r, got r=8"):
        petl.wrap(model, "hra", apply_GS=True)
    assert not is_wrapped(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for options in ({"apply_GS": True, "r": 3}, {"apply_GS": True, "init_weights": False}):
        wrapped = petl.wrap(T.build(ARCH, HEAD), "hra", **options)
        assert torch.isfinite(T.logits(wrapped, T.inputs(ARCH, HEAD))).all(), options


@pytest.mark.parametrize("name", ["loha", "ia3", "oft", "vera"])
def test_save_loads_with_peft_and_petl_exactly(name: str, tmp_path: Path) -> None:
    batch = T.inputs(ARCH, HEAD)
    ours = _trained(petl.wrap(T.build(ARCH, HEAD), name))
    heads = state_of(ours).strategy.config.modules_to_save
    assert heads == ("classifier",)  # the fresh head trains, as with lora
    assert all(p.requires_grad for p in ours.get_submodule("classifier").modules_to_save["default"].parameters())
    expected = T.logits(ours, batch)
    petl.save(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == TUNERS[name].peft_type
    theirs = peft.PeftModel.from_pretrained(T.build(ARCH, HEAD), tmp_path).eval()
    assert torch.equal(T.logits(theirs, batch), expected)
    assert torch.equal(T.logits(petl.load(T.build(ARCH, HEAD), tmp_path), batch), expected)


@pytest.mark.parametrize("name", ["loha", "ia3"])
def test_a_folder_peft_saved_loads_with_petl(name: str, tmp_path: Path) -> None:
    batch = T.inputs(ARCH, HEAD)
    peft_config = registry.get(name).peft_config_class(task_type="SEQ_CLS")
    theirs = _trained(peft.get_peft_model(T.build(ARCH, HEAD), peft_config)).eval()
    theirs.save_pretrained(tmp_path)
    loaded = petl.load(T.build(ARCH, HEAD), tmp_path)
    assert type(state_of(loaded).strategy) is registry.get(name)
    assert torch.equal(T.logits(loaded, batch), T.logits(theirs, batch))


@pytest.mark.parametrize("name", ["loha", "lokr", "ia3", "boft"])
def test_merge_equals_unmerged_and_merged_for_inference_restores_bit_for_bit(name: str) -> None:
    batch = T.inputs("llama", "causal-lm")
    model = _trained(petl.wrap(T.build("llama", "causal-lm"), name))
    wrapped = T.logits(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), state_of(model).strategy.merged_for_inference(model) as merged:
        assert merged
        torch.testing.assert_close(T.logits(model, batch), wrapped, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(T.logits(model, batch), wrapped)
    plain = petl.merge(model)
    assert not is_wrapped(plain) and not any(hasattr(m, "base_layer") for m in plain.modules())
    torch.testing.assert_close(T.logits(plain, batch), wrapped, atol=1e-5, rtol=1e-5)


def test_lily_refuses_to_merge_and_stays_wrapped() -> None:
    batch = T.inputs("llama", "causal-lm")
    model = _trained(petl.wrap(T.build("llama", "causal-lm"), "lily"))
    before = T.logits(model, batch)
    with pytest.raises(NotMergeableError, match="'lily' strategy cannot be merged"):
        petl.merge(model)
    assert is_wrapped(model) and torch.equal(T.logits(model, batch), before)
    with torch.no_grad(), state_of(model).strategy.merged_for_inference(model) as merged:
        assert not merged


def test_gpt2_conv1d_is_an_unsupported_model_for_loha_but_ia3_takes_it() -> None:
    from petl.errors import UnsupportedModelError

    model = T.build("gpt2", "causal-lm")
    with pytest.raises(UnsupportedModelError, match="'loha' strategy cannot adapt this GPT2LMHeadModel"):
        petl.wrap(model, "loha")
    assert not is_wrapped(model)
    assert is_wrapped(petl.wrap(model, "ia3"))


def test_bench_and_estimate_take_bridged_strategies() -> None:
    picked = default_config().select(["full", "lora", "loha", "ia3"])
    assert [r.name for r in picked.strategies] == ["full", "lora", "loha", "ia3"]
    with pytest.raises(ConfigError, match="neither a row"):
        default_config().select(["not-a-strategy"])
    from petl.bench.estimate import estimate

    config_dir = Path(__file__).parent / "_tiny_bert_config"
    config_dir.mkdir(exist_ok=True)
    T.config("bert").save_pretrained(config_dir)
    try:
        report = estimate(str(config_dir), [("loha", "loha", {"r": 4}), ("ia3", "ia3", {})],
                          task="sequence-classification", precisions=("fp32",))
    finally:
        for path in config_dir.iterdir():
            path.unlink()
        config_dir.rmdir()
    rows = {row["label"] if "label" in row else row["strategy"]: row for row in report.to_dict()["rows"]}
    assert set(rows) >= {"loha", "ia3"}
