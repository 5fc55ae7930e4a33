"""Where the parts of each transformer block live, per model family.

Strategies that act on every transformer block (bottleneck adapters, IA3, the
parameter estimator) need the same few places in each block:

* the **block list**, the ``nn.ModuleList`` of repeated blocks (two for an
  encoder-decoder: the encoder's and the decoder's);
* the **attention output projection**, the linear layer that maps the attention
  heads back to the hidden size (``o_proj``, ``attention.output.dense``, ``c_proj``);
* the **cross-attention output projection** of a decoder block of an encoder-decoder;
* the **feed-forward input** and **output** projections (``up``/``gate`` and ``down``).

:data:`FAMILIES` holds these paths, relative to each block, for the common families;
any other family goes through :mod:`petl.modeling.discovery`. Paths may list
alternatives separated by ``|`` (``"wi|wi_0"``: T5 and its gated variants); the
first that exists in a block is used. Users of an unknown family pass the same
information explicitly (see :func:`parse_module_paths`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from petl.errors import ConfigError, suggest

__all__ = ["FAMILIES", "PATH_KEYS", "BlockInfo", "StackPaths", "parse_module_paths"]


@dataclass(frozen=True)
class StackPaths:
    """Where the parts of every block of one stack live, as paths inside the block."""

    blocks: str
    """The block list: its full name in ``model.named_modules()`` or a dotted suffix of it
    (``"layers"`` matches ``model.layers``)."""
    attention_output: str | None = None
    """The self-attention output projection inside a block, e.g. ``"self_attn.o_proj"``."""
    ffn_output: str | None = None
    """The feed-forward output projection inside a block, e.g. ``"mlp.down_proj"``."""
    ffn_input: str | None = None
    """A feed-forward input projection (it reads the FFN's input), e.g. ``"mlp.up_proj"``."""
    cross_attention_output: str | None = None
    """The cross-attention output projection of a decoder block; skipped where absent."""


@dataclass(frozen=True)
class BlockInfo:
    """One block of a model, with the full module paths of its parts (``None`` = absent)."""

    index: int
    """Position among all blocks, counting the encoder's blocks first."""
    path: str
    stack: str
    """The full name of the block list holding this block."""
    attention_output: str | None
    ffn_output: str | None
    ffn_input: str | None
    cross_attention_output: str | None
    hidden_size: int


def _one(**paths: str) -> tuple[StackPaths, ...]:
    """A single-stack family."""
    return (StackPaths(**paths),)  # type: ignore[arg-type]


_BERT = _one(
    blocks="encoder.layer", attention_output="attention.output.dense", ffn_input="intermediate.dense",
    ffn_output="output.dense", cross_attention_output="crossattention.output.dense",
)
_GPT2 = _one(
    blocks="h", attention_output="attn.c_proj", ffn_input="mlp.c_fc", ffn_output="mlp.c_proj",
    cross_attention_output="crossattention.c_proj",
)
_LLAMA = _one(blocks="layers", attention_output="self_attn.o_proj", ffn_input="mlp.gate_proj",
                  ffn_output="mlp.down_proj")
_GPTJ = _one(blocks="h", attention_output="attn.out_proj", ffn_input="mlp.fc_in", ffn_output="mlp.fc_out")
_BLOOM = _one(blocks="h", attention_output="self_attention.dense", ffn_input="mlp.dense_h_to_4h",
                  ffn_output="mlp.dense_4h_to_h")
_T5 = (
    StackPaths(blocks="encoder.block", attention_output="layer.0.SelfAttention.o",
               ffn_input="layer.1.DenseReluDense.wi|layer.1.DenseReluDense.wi_0",
               ffn_output="layer.1.DenseReluDense.wo"),
    StackPaths(blocks="decoder.block", attention_output="layer.0.SelfAttention.o",
               cross_attention_output="layer.1.EncDecAttention.o",
               ffn_input="layer.2.DenseReluDense.wi|layer.2.DenseReluDense.wi_0",
               ffn_output="layer.2.DenseReluDense.wo"),
)
_BART = (
    StackPaths(blocks="encoder.layers", attention_output="self_attn.out_proj", ffn_input="fc1", ffn_output="fc2"),
    StackPaths(blocks="decoder.layers", attention_output="self_attn.out_proj", ffn_input="fc1", ffn_output="fc2",
               cross_attention_output="encoder_attn.out_proj"),
)

FAMILIES: dict[str, tuple[StackPaths, ...]] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2"), _BERT),
    "distilbert": _one(blocks="transformer.layer", attention_output="attention.out_lin", ffn_input="ffn.lin1",
                           ffn_output="ffn.lin2"),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), _GPT2),
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "stablelm"), _LLAMA
    ),
    "phi": _one(blocks="layers", attention_output="self_attn.dense", ffn_input="mlp.fc1", ffn_output="mlp.fc2"),
    "phi3": _one(blocks="layers", attention_output="self_attn.o_proj", ffn_input="mlp.gate_up_proj",
                     ffn_output="mlp.down_proj"),
    "starcoder2": _one(blocks="layers", attention_output="self_attn.o_proj", ffn_input="mlp.c_fc",
                           ffn_output="mlp.c_proj"),
    "opt": _one(blocks="decoder.layers", attention_output="self_attn.out_proj", ffn_input="fc1",
                    ffn_output="fc2"),
    "gpt_neox": _one(blocks="layers", attention_output="attention.dense", ffn_input="mlp.dense_h_to_4h",
                         ffn_output="mlp.dense_4h_to_h"),
    **dict.fromkeys(("falcon", "bloom"), _BLOOM),
    **dict.fromkeys(("gptj", "codegen"), _GPTJ),
    "mpt": _one(blocks="blocks", attention_output="attn.out_proj", ffn_input="ffn.up_proj",
                    ffn_output="ffn.down_proj"),
    **dict.fromkeys(("t5", "mt5"), _T5),
    **dict.fromkeys(("bart", "mbart", "pegasus", "marian"), _BART),
}
"""Paths per ``config.model_type``. Families not listed here go through :func:`discover`."""


PATH_KEYS = tuple(f.name for f in fields(StackPaths))


def parse_module_paths(value: Any, option: str = "module_paths") -> tuple[StackPaths, ...]:
    """Check a user's explicit paths: one mapping, or one per stack (encoder, decoder).

    Each mapping has ``blocks`` and at least one of ``attention_output`` / ``ffn_output``,
    with optional ``ffn_input`` and ``cross_attention_output``; see :class:`StackPaths`.

    Raises:
        ConfigError: A key is unknown, a value is not a non-empty string, or
            ``blocks`` is missing.
    """
    items = [value] if isinstance(value, Mapping) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ConfigError(
            f"{option} must be a dict such as {{'blocks': 'model.layers', 'ffn_output': 'mlp.down_proj'}} "
            f"or a list of such dicts (one per stack), got {value!r}."
        )
    stacks = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ConfigError(f"{option} entries must be dicts, got {item!r}.")
        for key, path in item.items():
            if key not in PATH_KEYS:
                raise ConfigError(
                    f"{option} has an unknown key {key!r}.{suggest(str(key), PATH_KEYS)} "
                    f"Valid keys: {', '.join(PATH_KEYS)}."
                )
            if path is not None and (not isinstance(path, str) or not path):
                raise ConfigError(f"{option}[{key!r}] must be a module path string, got {path!r}.")
        if not item.get("blocks"):
            raise ConfigError(f"{option} needs 'blocks', the name of the nn.ModuleList of blocks; got {dict(item)!r}.")
        if not (item.get("attention_output") or item.get("ffn_output")):
            raise ConfigError(f"{option} needs 'attention_output' or 'ffn_output' (or both); got {dict(item)!r}.")
        stacks.append(StackPaths(**dict(item)))
    return tuple(stacks)
