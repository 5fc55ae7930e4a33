"""4-bit bases in ``petl bench`` configs: the ``[model]`` and per-row keys, how a row resolves
them, and the base a worker builds from them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_models as tm

from petl.bench.config import BenchConfig, load_config
from petl.bench.schema import ModelSpec, StrategySpec, row_quantization
from petl.errors import ConfigError
from petl.modeling.quantization import Quantization

CONFIG = """
name = "qlora"
[model]
name = "minilm"
load_in_4bit = true
bnb_4bit_quant_type = "fp4"
[data]
train = "synthetic"
[[strategies]]
name = "lora"
label = "lora-fp4"
[[strategies]]
name = "lora"
label = "lora-nf4-double"
bnb_4bit_quant_type = "nf4"
bnb_4bit_double_quant = true
bnb_4bit_compute_dtype = "bfloat16"
[[strategies]]
name = "lora"
label = "lora-8bit"
load_in_8bit = true
[[strategies]]
name = "bottleneck"
label = "bottleneck-fp32"
load_in_4bit = false
[[strategies]]
name = "full"
load_in_4bit = false
"""


def test_rows_resolve_their_own_keys_over_the_models(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_config(path)
    resolved = {row.display: row_quantization(config.model, row) for row in config.strategies}
    assert resolved == {
        "lora-fp4": Quantization(quant_type="fp4"),
        "lora-nf4-double": Quantization(quant_type="nf4", double_quant=True, compute_dtype="bfloat16"),
        "lora-8bit": Quantization(bits=8),  # a row turning 8-bit on turns [model]'s 4-bit off
        "bottleneck-fp32": None,
        "full": None,
    }
    again = BenchConfig.from_dict(json.loads(json.dumps(config.to_dict())))  # what a worker reads
    assert again == config
    assert [row_quantization(again.model, row) for row in again.strategies] == list(resolved.values())


def test_model_level_8bit_stays_as_before() -> None:
    model = ModelSpec(load_in_8bit=True)
    assert row_quantization(model, StrategySpec(name="lora")) == Quantization(bits=8)
    assert row_quantization(model, StrategySpec(name="lora", load_in_4bit=True)) == Quantization()
    assert row_quantization(ModelSpec(), StrategySpec(name="lora")) is None


@pytest.mark.parametrize("make, match", [
    (lambda: ModelSpec(load_in_8bit=True, load_in_4bit=True),
     r"\[model\] load_in_8bit and \[model\] load_in_4bit were both given"),
    (lambda: ModelSpec(bnb_4bit_quant_type="fp4"), r"\[model\] bnb_4bit_quant_type describe 4-bit loading"),
    (lambda: ModelSpec(load_in_4bit=True, bnb_4bit_compute_dtype="float64"),
     r"\[model\] bnb_4bit_compute_dtype must be one of"),
    (lambda: ModelSpec(load_in_4bit="yes"), r"\[model\] load_in_4bit must be True or False"),
    (lambda: StrategySpec(name="full", load_in_4bit=True), "Full fine-tuning cannot train 4-bit weights"),
    (lambda: StrategySpec(name="lora", load_in_8bit=True, load_in_4bit=True),
     "lora: load_in_8bit and lora: load_in_4bit"),
    (lambda: StrategySpec(name="lora", load_in_8bit=True, bnb_4bit_quant_type="nf4"),
     "lora: bnb_4bit_quant_type describe 4-bit loading, which is off"),
    (lambda: StrategySpec(name="lora", bnb_4bit_quant_type="nf5"), "lora: bnb_4bit_quant_type must be one of"),
    (lambda: StrategySpec(name="lora", load_in_4bit=1), "lora: load_in_4bit must be true or false"),
    (lambda: StrategySpec.from_dict({"name": "lora", "load_in_4bits": True}), r"Did you mean 'load_in_4bit'\?"),
])
def test_bad_quantization_keys_are_refused(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_a_row_with_4bit_details_but_no_4bit_base_is_refused_when_resolved() -> None:
    with pytest.raises(ConfigError, match="lora: bnb_4bit_double_quant describe 4-bit loading"):
        row_quantization(ModelSpec(), StrategySpec(name="lora", bnb_4bit_double_quant=True))


def test_a_4bit_row_builds_a_4bit_base(tmp_path: Path) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    from petl.bench.loading import build_row_model

    tm.build("llama", "causal-lm").save_pretrained(tmp_path / "llama")
    config = BenchConfig(task="causal-lm", model=ModelSpec(name=str(tmp_path / "llama"), load_in_4bit=True),
                         strategies=(StrategySpec(name="lora", bnb_4bit_quant_type="fp4", options={"r": 4}),))
    data = SimpleNamespace(num_labels=None, label_names=None)
    model = build_row_model(config, config.strategies[0], data, SimpleNamespace(pad_token_id=0), seed=0)
    layer = model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_type == "fp4"
