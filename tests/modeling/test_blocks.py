"""Locating blocks, attention and feed-forward projections: the family table and discovery."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import tiny_models as T
import torch
import transformers as tf
from torch import nn

from petl.errors import ConfigError, TargetNotFoundError, UnsupportedModelError
from petl.modeling import FAMILIES, StackPaths, discover, find_blocks, linear_dims, parse_module_paths

_V = {"vocab_size": T.VOCAB}
_DEC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, **_V}

# Families of the table beyond tiny_models, as small as their configs allow.
EXTRA_CONFIGS: dict[str, Callable[[], Any]] = {
    "electra": lambda: tf.ElectraConfig(embedding_size=32, **_DEC),
    "deberta-v2": lambda: tf.DebertaV2Config(**_DEC),
    "gemma": lambda: tf.GemmaConfig(num_key_value_heads=2, head_dim=8, pad_token_id=0, **_DEC),
    "qwen3": lambda: tf.Qwen3Config(num_key_value_heads=2, head_dim=8, pad_token_id=0, **_DEC),
    "phi": lambda: tf.PhiConfig(num_key_value_heads=2, pad_token_id=0, **_DEC),
    "phi3": lambda: tf.Phi3Config(num_key_value_heads=2, pad_token_id=0, **_DEC),
    "starcoder2": lambda: tf.Starcoder2Config(num_key_value_heads=2, **_DEC),
    "falcon": lambda: tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_hidden_size=64,
                                      **_V),
    "bloom": lambda: tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **_V),
    "gptj": lambda: tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, n_inner=64, rotary_dim=4, **_V),
    "codegen": lambda: tf.CodeGenConfig(n_embd=32, n_layer=2, n_head=4, n_inner=64, rotary_dim=4, **_V),
    "mpt": lambda: tf.MptConfig(d_model=32, n_layers=2, n_heads=4, **_V),
    "mt5": lambda: tf.MT5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                                decoder_start_token_id=0, **_V),
    "mbart": lambda: tf.MBartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                    max_position_embeddings=64, **_V),
}


def tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family in T.ARCH_HEADS:
        return T.build(family, T.ARCH_HEADS[family][0])
    return tf.AutoModel.from_config(EXTRA_CONFIGS[family]())


def first_block(model: nn.Module) -> dict[str, Any]:
    info = find_blocks(model)[0]
    return {k: getattr(info, k) for k in ("path", "attention_output", "ffn_input", "ffn_output", "hidden_size")}


GOLDEN = {
    "bert": ("bert.encoder.layer.0", "attention.output.dense", "intermediate.dense", "output.dense"),
    "distilbert": ("distilbert.transformer.layer.0", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
    "gpt2": ("transformer.h.0", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "llama": ("model.layers.0", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"),
    "opt": ("model.decoder.layers.0", "self_attn.out_proj", "fc1", "fc2"),
    "gpt_neox": ("gpt_neox.layers.0", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    "t5": ("encoder.block.0", "layer.0.SelfAttention.o", "layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wo"),
    "bart": ("model.encoder.layers.0", "self_attn.out_proj", "fc1", "fc2"),
}


@pytest.mark.parametrize("family", list(GOLDEN))
def test_first_block_paths(family: str) -> None:
    path, attn, ffn_in, ffn_out = GOLDEN[family]
    expected = {"path": path, "attention_output": f"{path}.{attn}", "ffn_input": f"{path}.{ffn_in}",
                "ffn_output": f"{path}.{ffn_out}", "hidden_size": 32}
    assert first_block(tiny(family)) == expected


def test_encoder_decoder_has_both_stacks_encoder_first() -> None:
    blocks = find_blocks(tiny("t5"))
    assert [b.index for b in blocks] == [0, 1, 2, 3]
    assert [b.stack for b in blocks] == ["encoder.block"] * 2 + ["decoder.block"] * 2
    assert [b.cross_attention_output for b in blocks] == [
        None, None, "decoder.block.0.layer.1.EncDecAttention.o", "decoder.block.1.layer.1.EncDecAttention.o"]
    assert blocks[3].ffn_output == "decoder.block.1.layer.2.DenseReluDense.wo"


@pytest.mark.parametrize("family", [*T.ARCH_HEADS, *EXTRA_CONFIGS])
def test_table_and_structural_discovery_agree(family: str) -> None:
    model = tiny(family)
    assert model.config.model_type in FAMILIES
    table = find_blocks(model)
    assert table and all(b.ffn_output and b.attention_output and b.ffn_input for b in table)
    assert find_blocks(model, discover(model)) == table


def test_gated_t5_uses_the_alternative_path() -> None:
    blocks = find_blocks(tiny("mt5"))
    assert blocks[0].ffn_input == "encoder.block.0.layer.1.DenseReluDense.wi_0"


def test_discovery_on_families_without_a_table_entry() -> None:
    xglm = tf.XGLMForCausalLM(tf.XGLMConfig(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                            max_position_embeddings=64, **_V))
    assert "xglm" not in FAMILIES
    assert discover(xglm) == (StackPaths(blocks="model.layers", attention_output="self_attn.out_proj",
                                         ffn_output="fc2", ffn_input="fc1"),)
    m2m = tf.M2M100Model(tf.M2M100Config(d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                                         decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                         max_position_embeddings=64, **_V))
    enc, dec = discover(m2m)
    assert (enc.blocks, enc.cross_attention_output) == ("encoder.layers", None)
    assert (dec.blocks, dec.cross_attention_output) == ("decoder.layers", "encoder_attn.out_proj")
    assert len(find_blocks(m2m)) == 5


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.o = nn.Linear(d, d)  # registered before the input projections, as in CodeGen and Phi-3
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = _Attention(d)
        self.norm = nn.LayerNorm(d)
        self.gate_up = nn.Linear(d, 6 * d)  # fused gate and up projections: twice the down input
        self.down = nn.Linear(3 * d, d)


class _Toy(nn.Module):
    def __init__(self, model_type: str = "toy", d: int = 8) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type, hidden_size=d)
        self.stack = nn.ModuleList([_Block(d) for _ in range(3)])
        self.side = nn.ModuleList([nn.Linear(d, d)])  # shorter list: not the blocks


def test_discovery_heuristics_on_a_toy_block() -> None:
    assert discover(_Toy()) == (StackPaths(blocks="stack", attention_output="attn.o", ffn_output="down",
                                           ffn_input="gate_up"),)


def test_a_table_entry_that_does_not_fit_falls_back_to_discovery() -> None:
    blocks = find_blocks(_Toy(model_type="llama"))
    assert [b.ffn_output for b in blocks] == ["stack.0.down", "stack.1.down", "stack.2.down"]


def test_explicit_paths() -> None:
    model = _Toy()
    paths = parse_module_paths({"blocks": "stack", "ffn_output": "down"})
    blocks = find_blocks(model, paths)
    assert [(b.attention_output, b.ffn_output, b.hidden_size) for b in blocks] == [(None, f"stack.{i}.down", 8)
                                                                                   for i in range(3)]
    with pytest.raises(TargetNotFoundError, match="Did you mean 'down'"):
        find_blocks(model, parse_module_paths({"blocks": "stack", "ffn_output": "dwn"}))
    with pytest.raises(TargetNotFoundError, match="matches 0 .*Block lists found: stack"):
        find_blocks(model, parse_module_paths({"blocks": "layers", "ffn_output": "down"}))


@pytest.mark.parametrize(
    "value,text",
    [
        ({"blocks": "layers", "ffn_ouput": "mlp.down_proj"}, "Did you mean 'ffn_output'"),
        ({"ffn_output": "mlp.down_proj"}, "needs 'blocks'"),
        ({"blocks": "layers"}, "needs 'attention_output' or 'ffn_output'"),
        ({"blocks": "layers", "ffn_output": 3}, "module path string"),
        ("model.layers", "must be a dict"),
        ([], "must be a dict"),
    ],
)
def test_parse_module_paths_rejects_bad_values(value: Any, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        parse_module_paths(value)


def test_parse_module_paths_accepts_one_dict_per_stack() -> None:
    enc, dec = parse_module_paths([{"blocks": "encoder.layers", "ffn_output": "fc2"},
                                   {"blocks": "decoder.layers", "ffn_output": "fc2",
                                    "cross_attention_output": "encoder_attn.out_proj"}])
    assert enc.blocks == "encoder.layers" and dec.cross_attention_output == "encoder_attn.out_proj"


def test_unsupported_models_name_the_type_and_the_way_out() -> None:
    flat = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(UnsupportedModelError, match=r"Sequential \(model_type None\).*module_paths="):
        find_blocks(flat)
    norms = nn.Module()
    norms.layers = nn.ModuleList([nn.LayerNorm(4) for _ in range(3)])
    with pytest.raises(UnsupportedModelError, match="no nn.ModuleList of identical blocks"):
        discover(norms)


def test_linear_dims() -> None:
    assert linear_dims(nn.Linear(3, 5)) == (3, 5)
    assert linear_dims(tf.pytorch_utils.Conv1D(7, 3)) == (3, 7)
    assert linear_dims(nn.LayerNorm(3)) is None
    bnb = pytest.importorskip("bitsandbytes")
    assert linear_dims(bnb.nn.Linear8bitLt(3, 5, has_fp16_weights=False)) == (3, 5)
