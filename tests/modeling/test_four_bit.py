"""4-bit (QLoRA) bases on the CPU: loading NF4/FP4 with and without double quantization,
training every built-in strategy on them, save/load, and merging, which refuses a
quantized base or dequantizes it explicitly."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import tiny_models as tm
import torch
from tiny_data import task_data
from torch import nn

import petl
from petl.core.wrapping import is_wrapped
from petl.errors import ConfigError, NotMergeableError, PetlError, UnsupportedModelError
from petl.modeling.quantization import Quantization, quantization_from_options, quantized_linear_names
from petl.strategies.peft_tuners import TUNERS
from petl.training import TrainConfig, train

bnb = pytest.importorskip("bitsandbytes")
from petl.core.quantized import DequantizedMergeWarning  # noqa: E402
from petl.modeling.loading import load_model  # noqa: E402

NF4 = Quantization(bits=4, quant_type="nf4")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama (causal LM) and a tiny BERT (sequence classification) saved as safetensors."""
    root = tmp_path_factory.mktemp("four_bit")
    tm.build("llama", "causal-lm").save_pretrained(root / "llama", safe_serialization=True)
    tm.build("bert", "seq-cls").save_pretrained(root / "bert", safe_serialization=True)
    return {"llama": root / "llama", "bert": root / "bert"}


def _llama(folders: dict[str, Path], quantization: Quantization | None = NF4) -> nn.Module:
    return load_model(str(folders["llama"]), "causal-lm", quantization=quantization)


def _stored(model: nn.Module) -> dict[str, torch.Tensor]:
    """The packed 4-bit codes and the absmax scales of every quantized layer, copied."""
    out = {}
    for name in quantized_linear_names(model):
        weight = model.get_submodule(name).weight
        out[f"{name}.codes"] = weight.data.clone()
        out[f"{name}.absmax"] = weight.quant_state.absmax.clone()
    return out


def _inputs(arch: str, head: str) -> dict[str, torch.Tensor]:
    batch = tm.inputs(arch, head)
    batch.pop("labels", None)
    return batch


# -- the one description and its options -------------------------------------------------------------


def test_options_build_one_description_and_refuse_conflicts() -> None:
    assert quantization_from_options({}) is None
    assert quantization_from_options({"load_in_8bit": True}) == Quantization(bits=8)
    assert quantization_from_options({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                                      "bnb_4bit_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}) == \
        Quantization(bits=4, quant_type="fp4", double_quant=True, compute_dtype="bfloat16")
    assert quantization_from_options({"load_in_4bit": True, "bnb_4bit_quant_type": None}) == NF4
    with pytest.raises(ConfigError, match=r"^--load-in-8bit and --load-in-4bit were both given"):
        quantization_from_options({"load_in_8bit": True, "load_in_4bit": True}, flags=True)
    with pytest.raises(ConfigError, match=r"^\[model\] bnb_4bit_quant_type describe 4-bit loading"):
        quantization_from_options({"bnb_4bit_quant_type": "nf4"}, prefix="[model] ")
    with pytest.raises(ConfigError, match=r"--bnb-4bit-quant-type must be one of 'nf4', 'fp4', got 'int4'"):
        quantization_from_options({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, flags=True)
    with pytest.raises(ConfigError, match="bnb_4bit_compute_dtype must be one of"):
        quantization_from_options({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float64"})
    with pytest.raises(ConfigError, match="load_in_4bit must be true or false"):
        quantization_from_options({"load_in_4bit": "yes"})
    with pytest.raises(ConfigError, match="describe 4-bit storage, but bits=8"):
        Quantization(bits=8, quant_type="fp4")
    with pytest.raises(ConfigError, match="bits must be one of 4, 8"):
        Quantization(bits=2)


def test_the_description_becomes_transformers_config() -> None:
    config = Quantization(bits=4, quant_type="fp4", double_quant=True, compute_dtype="bfloat16").bnb_config(["head"])
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("fp4", True)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.llm_int8_skip_modules == ["head"]
    eight = Quantization(bits=8).bnb_config([])
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert Quantization(double_quant=True).describe() == "4-bit nf4 (double quantization, float32 compute)"


def test_load_model_refuses_two_precisions(folders: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="were both given"):
        load_model(str(folders["llama"]), "causal-lm", load_in_8bit=True, quantization=NF4)


# -- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_loading_stores_what_bitsandbytes_computes(folders: dict[str, Path], quant_type: str,
                                                        double_quant: bool) -> None:
    plain = _llama(folders, None)
    model = _llama(folders, Quantization(quant_type=quant_type, double_quant=double_quant))
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and model.is_loaded_in_4bit
    assert layer.weight.quant_type == quant_type and layer.weight.quant_state.nested is double_quant
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # output embeddings stay in full precision
    # bitsandbytes' own quantization of the full-precision weight gives the same codes
    original = plain.model.layers[0].self_attn.q_proj.weight.detach()
    codes, state = bnb.functional.quantize_4bit(original, blocksize=64, quant_type=quant_type,
                                                compress_statistics=double_quant)
    assert torch.equal(layer.weight.data.flatten(), codes.flatten())
    restored = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert torch.allclose(restored, bnb.functional.dequantize_4bit(codes, state))
    # 4-bit rounding: close, not equal (FP4's grid is coarser than NF4's near zero)
    assert 0 < (restored - original).norm() / original.norm() < (0.25 if quant_type == "fp4" else 0.2)
    # k-bit preparation: everything frozen, every full-precision weight in fp32
    assert not any(p.requires_grad for p in model.parameters())
    floats = [p for p in model.parameters() if p.is_floating_point()]
    assert floats and all(p.dtype == torch.float32 for p in floats)


def test_bert_loads_in_4bit_with_its_fresh_head_in_full_precision(folders: dict[str, Path]) -> None:
    model = load_model(str(folders["bert"]), "sequence-classification", num_labels=tm.NUM_LABELS,
                       quantization=Quantization(quant_type="fp4", compute_dtype="bfloat16"))
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, bnb.nn.Linear4bit) and query.compute_dtype == torch.bfloat16
    assert type(model.classifier) is nn.Linear and model.classifier.weight.dtype == torch.float32


def test_the_estimate_counts_what_4bit_loading_stores(folders: dict[str, Path]) -> None:
    from petl.bench.memory import _quantized_bytes, quantized_weights

    plain, model = _llama(folders, None), _llama(folders, NF4)
    quantized = quantized_weights(plain)
    names = quantized_linear_names(model)
    assert len(quantized) == len(names)  # the estimate quantizes the layers loading quantizes
    expected = sum(_quantized_bytes("int4", numel, rows) for numel, rows in
                   ((p.numel(), quantized[id(p)]) for p in plain.parameters() if id(p) in quantized))
    stored = sum(t.numel() * t.element_size() for key, t in _stored(model).items())
    assert stored == expected


# -- training every strategy ----------------------------------------------------------------------


SMALL = {"lora": {"r": 4}, "prefix": {"num_virtual_tokens": 4}}
"""Options that keep a strategy small; every other one runs with the tiny models' options or its defaults."""


@pytest.mark.parametrize("strategy", petl.available())
def test_strategies_train_on_a_4bit_base_and_reload_exactly(folders: dict[str, Path], tmp_path: Path,
                                                            strategy: str) -> None:
    options = tm.strategy_options(strategy, **SMALL.get(strategy, {}))
    if strategy in TUNERS and not TUNERS[strategy].four_bit:  # its peft layers read the base weight itself
        base = _llama(folders)
        stored = _stored(base)
        with pytest.raises(UnsupportedModelError, match="cannot train on this 4-bit LlamaForCausalLM"):
            petl.wrap(base, strategy, **options)
        assert not is_wrapped(base) and all(torch.equal(t, _stored(base)[k]) for k, t in stored.items())
        return
    model = petl.wrap(_llama(folders), strategy, **options)
    stored = _stored(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = train(model, task_data("causal-lm"), config=TrainConfig(batch_size=4, max_steps=3, learning_rate=1e-2,
                                                                      progress_bar=False))
    assert all(math.isfinite(loss) for loss in result.step_losses)
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n].detach(), value) for n, value in before.items())
    assert all(torch.equal(t, _stored(model)[k]) for k, t in stored.items())  # the base, bit for bit
    petl.save(model, tmp_path / "adapter")
    fresh = petl.load(_llama(folders), tmp_path / "adapter")
    model.eval(), fresh.eval()
    batch = _inputs("llama", "causal-lm")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, fresh(**batch).logits)


def test_gradient_checkpointing_gives_the_same_steps_on_4bit(folders: dict[str, Path]) -> None:
    losses = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = petl.wrap(_llama(folders), "lora", r=4)
        config = TrainConfig(batch_size=4, max_steps=2, learning_rate=1e-2, gradient_checkpointing=checkpointing,
                             progress_bar=False)
        losses.append(train(model, task_data("causal-lm"), config=config).step_losses)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_full_fine_tuning_of_a_4bit_base_is_refused(folders: dict[str, Path]) -> None:
    with pytest.raises(PetlError, match="cannot be trained in full"):
        train(_llama(folders), task_data("causal-lm"), config=TrainConfig(max_steps=1, progress_bar=False))


# -- merging --------------------------------------------------------------------------------------


def _trained_lora(model: nn.Module) -> nn.Module:
    petl.wrap(model, "lora", r=4, target_modules=["q_proj", "v_proj"])
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # as if trained: B = 0 would make any merge exact
    return model.eval()


def test_merge_into_a_4bit_base_is_refused_and_leaves_it_unchanged(folders: dict[str, Path]) -> None:
    model = _trained_lora(_llama(folders))
    batch = _inputs("llama", "causal-lm")
    with torch.no_grad():
        before = model(**batch).logits
    stored = _stored(model)
    with pytest.raises(NotMergeableError, match=r"quantized .*round W \+ delta.*dequantize=True.*petl.load"):
        petl.merge(model)
    assert petl.core.wrapping.is_wrapped(model)
    assert all(torch.equal(t, _stored(model)[k]) for k, t in stored.items())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
    # evaluation's merged block leaves 4-bit layers alone: it yields False and the outputs stay the same
    strategy = petl.core.wrapping.state_of(model).strategy
    with torch.no_grad(), strategy.merged_for_inference(model) as merged:
        assert merged is False
        assert torch.equal(model(**batch).logits, before)


def test_merge_with_dequantize_merges_exactly_into_full_precision_layers(folders: dict[str, Path]) -> None:
    model = _trained_lora(_llama(folders, Quantization(quant_type="fp4", double_quant=True)))
    batch = _inputs("llama", "causal-lm")
    q_proj = model.model.layers[0].self_attn.q_proj
    # by hand: the weight the 4-bit forward uses, plus (alpha / r) B A
    expected = (bnb.functional.dequantize_4bit(q_proj.base_layer.weight.data, q_proj.base_layer.weight.quant_state)
                + q_proj.scaling["default"] * q_proj.lora_B["default"].weight @ q_proj.lora_A["default"].weight)
    with torch.no_grad():
        before = model(**batch).logits
    with pytest.warns(DequantizedMergeWarning, match=r"dequantized 14 quantized linear layers .* to float32"):
        merged = petl.merge(model, dequantize=True)
    assert not quantized_linear_names(merged) and not petl.core.wrapping.is_wrapped(merged)
    layer = merged.model.layers[0].self_attn.q_proj
    assert type(layer) is nn.Linear and layer.weight.dtype == torch.float32
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    assert not getattr(merged, "is_loaded_in_4bit", False) and not hasattr(merged.config, "quantization_config")
    with torch.no_grad():
        after = merged(**batch).logits
    assert torch.allclose(after, before, atol=1e-5)


def test_merge_into_an_8bit_base_is_refused_and_dequantizes_on_request(folders: dict[str, Path]) -> None:
    model = load_model(str(folders["bert"]), "sequence-classification", num_labels=tm.NUM_LABELS, load_in_8bit=True)
    petl.wrap(model, "lora", r=4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.eval()
    batch = _inputs("bert", "seq-cls")
    with torch.no_grad():
        before = model(**batch).logits
    with pytest.raises(NotMergeableError, match="4-bit/8-bit"):
        petl.merge(model)
    with pytest.warns(DequantizedMergeWarning):
        merged = petl.merge(model, dequantize=True)
    assert type(merged.bert.encoder.layer[0].attention.self.query) is nn.Linear
    with torch.no_grad():
        after = merged(**batch).logits
    # LLM.int8() also rounds the activations to int8, so the 8-bit outputs were that far off already
    assert torch.allclose(after, before, atol=5e-3)


def test_a_strategy_that_cannot_merge_keeps_its_own_refusal_on_a_4bit_base(folders: dict[str, Path]) -> None:
    model = petl.wrap(_llama(folders), "bottleneck")
    with pytest.raises(NotMergeableError, match="'bottleneck' strategy cannot be merged"):
        petl.merge(model, dequantize=True)
    assert quantized_linear_names(model) and petl.core.wrapping.is_wrapped(model)  # nothing dequantized


def test_a_failed_dequantized_merge_leaves_the_model_wrapped_and_quantized(folders: dict[str, Path],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained_lora(_llama(folders))
    batch = _inputs("llama", "causal-lm")
    with torch.no_grad():
        before = model(**batch).logits
    strategy_class = type(petl.core.wrapping.state_of(model).strategy)

    def broken(self: Any, model: nn.Module) -> nn.Module:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(strategy_class, "merge", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DequantizedMergeWarning)  # no warning: nothing was dequantized in the end
        with pytest.raises(PetlError, match="disk on fire.*left wrapped and quantized"):
            petl.merge(model, dequantize=True)
    monkeypatch.undo()
    assert len(quantized_linear_names(model)) == 14 and petl.core.wrapping.is_wrapped(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_dequantize_changes_nothing_on_a_full_precision_base(folders: dict[str, Path]) -> None:
    model = _trained_lora(_llama(folders, None))
    batch = _inputs("llama", "causal-lm")
    with torch.no_grad():
        before = model(**batch).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error", DequantizedMergeWarning)
        merged = petl.merge(model, dequantize=True)  # the plain merge: nothing to dequantize, no warning
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, before, atol=1e-5)


def test_olora_is_refused_on_a_4bit_base_before_the_model_changes(folders: dict[str, Path]) -> None:
    model = _llama(folders)
    before = _stored(model)
    with pytest.raises(ConfigError, match="init='olora' cannot be used on a quantized base"):
        petl.wrap(model, "lora", init="olora")
    after = _stored(model)
    assert not is_wrapped(model) and set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
