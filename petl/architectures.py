"""Where things live inside each model family: blocks, attention output, FFN input/output.

Strategies that act on every transformer block (bottleneck adapters, IA3, the
parameter estimator) need the same few places in each block:

* the **block list**, the ``nn.ModuleList`` of repeated blocks (two for an
  encoder-decoder: the encoder's and the decoder's);
* the **attention output projection**, the linear layer that maps the attention
  heads back to the hidden size (``o_proj``, ``attention.output.dense``, ``c_proj``);
* the **cross-attention output projection** of a decoder block of an encoder-decoder;
* the **feed-forward input** and **output** projections (``up``/``gate`` and ``down``).

:data:`FAMILIES` holds these paths, relative to each block, for the common families.
Any other family goes through structural discovery (:func:`discover`):

1. Blocks: the outermost ``nn.ModuleList`` s whose items all have the same class and
   contain linear layers; the longest one, or all of them for an encoder-decoder.
2. Inside a block, the linear layers (``nn.Linear`` and its subclasses such as
   bitsandbytes' ``Linear8bitLt``, or GPT-2's ``Conv1D``) are grouped by sub-module
   (``self_attn``, ``mlp``, ``layer.1``). The FFN output is the last layer whose
   output is the hidden size ``d`` and whose input is wider than ``d``; every other
   group of two or more layers with a ``d``-wide output is an attention (the first
   self-attention, the second cross-attention), and its output projection is the
   ``d``-wide layer named like an output (``o``, ``out_proj``, ``dense``...) or else
   the last one. The FFN input is the first layer outside the attention groups,
   before the FFN output, that reads ``d`` features and writes the FFN output's
   input width (or twice it, when the gate and up projections are fused).

Paths may list alternatives separated by ``|`` (``"wi|wi_0"``: T5 and its gated
variants); the first that exists in a block is used. Users of an unknown family
pass the same information explicitly (see :func:`parse_module_paths`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from petl.errors import ConfigError, TargetNotFoundError, UnsupportedModelError, suggest

__all__ = [
    "FAMILIES",
    "BlockInfo",
    "StackPaths",
    "discover",
    "find_blocks",
    "linear_dims",
    "parse_module_paths",
]

logger = logging.getLogger(__name__)


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

_OUTPUT_NAME = re.compile(r"(^|[._])(o|wo|out\w*|output\w*|dense|c_proj)$")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear-like layer, else ``None``.

    Covers ``nn.Linear`` and its subclasses (bitsandbytes' 8-bit and 4-bit layers,
    Falcon's ``FalconLinear``) and the transposed ``Conv1D`` of GPT-2.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nx") and hasattr(module, "nf"):
        return int(module.nx), int(module.nf)
    return None


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _config_hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    return size if isinstance(size, int) else None


def _resolve(block: nn.Module, spec: str | None) -> str | None:
    """The first ``|``-separated alternative of ``spec`` that is a submodule of ``block``."""
    if spec is None:
        return None
    for candidate in spec.split("|"):
        try:
            block.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    return None


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Outermost module lists of identical blocks that contain linear layers."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(item) for item in module}) != 1:
            continue
        if not any(linear_dims(m) is not None for m in module[0].modules()):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, module))
    return found


def _match_lists(model: nn.Module, suffix: str) -> list[tuple[str, nn.ModuleList]]:
    matches = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix))
    ]
    if not matches:
        return []
    depth = min(name.count(".") for name, _ in matches)
    return [(name, module) for name, module in matches if name.count(".") == depth]


def _group(block: nn.Module, path: str) -> str:
    """The sub-module of ``block`` a layer belongs to, looking through ModuleLists (T5's ``layer.1``)."""
    parts = path.split(".")
    module: nn.Module = block
    for i, part in enumerate(parts[:-1]):
        module = module.get_submodule(part)
        if not isinstance(module, _CONTAINERS):
            return ".".join(parts[: i + 1])
    return ""


def _discover_block(block: nn.Module, hidden: int | None) -> StackPaths | None:
    """Structural discovery inside one block (see the module docstring); ``blocks`` left empty."""
    linears = [(name, dims) for name, m in block.named_modules() if (dims := linear_dims(m)) is not None]
    if not linears:
        return None
    if hidden is None or not any(out == hidden for _, (_, out) in linears):
        outs = [out for _, (_, out) in linears]
        hidden = max(set(outs), key=outs.count)
    wide_out = [(i, name, dims) for i, (name, dims) in enumerate(linears) if dims[1] == hidden]
    ffn = [item for item in wide_out if item[2][0] > hidden] or wide_out
    ffn_pos, ffn_output, ffn_dims = ffn[-1]
    ffn_group = _group(block, ffn_output)
    groups: dict[str, list[tuple[int, str]]] = {}
    for i, (name, _) in enumerate(linears):
        groups.setdefault(_group(block, name), []).append((i, name))
    attention: list[tuple[int, str]] = []
    attention_groups: set[str] = set()
    for key, members in groups.items():
        if key == ffn_group or len(members) < 2:
            continue
        outs = [(i, name) for i, name in members if linears[i][1][1] == hidden]
        if outs:
            named = [(i, name) for i, name in outs if _OUTPUT_NAME.search(name)]
            attention.append((named or outs)[-1])
            attention_groups.add(key)
    width = ffn_dims[0]
    ffn_input = next(
        (name for i, (name, (din, dout)) in enumerate(linears)
         if i < ffn_pos and din == hidden and dout in (width, 2 * width)
         and _group(block, name) not in attention_groups),
        None,
    )
    return StackPaths(
        blocks="",
        attention_output=attention[0][1] if attention else None,
        cross_attention_output=attention[1][1] if len(attention) > 1 else None,
        ffn_input=ffn_input,
        ffn_output=ffn_output,
    )


def discover(model: nn.Module) -> tuple[StackPaths, ...]:
    """Find the block lists and the paths inside a block by structure alone.

    Returns:
        One :class:`StackPaths` per stack (two for an encoder-decoder), with full
        block-list names; usable as explicit ``module_paths``.

    Raises:
        UnsupportedModelError: No list of repeated blocks, or no feed-forward output.
    """
    lists = _block_lists(model)
    if not lists:
        raise _unsupported(model, "it has no nn.ModuleList of identical blocks containing linear layers")
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        lists = [max(lists, key=lambda item: len(item[1]))]
    hidden = _config_hidden_size(model)
    stacks = []
    for name, blocks in lists:
        found = _discover_block(blocks[0], hidden)
        if found is None or found.ffn_output is None:
            raise _unsupported(model, f"no feed-forward output projection was found in the blocks of {name!r}")
        stacks.append(StackPaths(**{**_as_dict(found), "blocks": name}))
    return tuple(stacks)


def _as_dict(paths: StackPaths) -> dict[str, str | None]:
    return {f.name: getattr(paths, f.name) for f in fields(paths)}


def _unsupported(model: nn.Module, why: str, option: str = "module_paths") -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Cannot locate the transformer blocks of this {type(model).__name__} "
        f"(model_type {_model_type(model)!r}): {why}. Pass the paths explicitly, e.g. "
        f"{option}={{'blocks': 'model.layers', 'attention_output': 'self_attn.o_proj', "
        "'ffn_input': 'mlp.up_proj', 'ffn_output': 'mlp.down_proj'}, where 'blocks' names the "
        "nn.ModuleList of blocks and the other paths are inside one block, as in model.named_modules()."
    )


def _table_stacks(model: nn.Module, family: tuple[StackPaths, ...]) -> list[tuple[str, nn.ModuleList, StackPaths]]:
    """The family's stacks resolved against ``model``; empty when any stack does not fit."""
    resolved = []
    for paths in family:
        matches = _match_lists(model, paths.blocks)
        if len(matches) != 1:
            return []
        name, blocks = matches[0]
        first = blocks[0]
        required = (paths.attention_output, paths.ffn_output, paths.ffn_input)
        if any(spec is not None and _resolve(first, spec) is None for spec in required):
            return []
        resolved.append((name, blocks, paths))
    return resolved


def find_blocks(
    model: nn.Module, paths: Sequence[StackPaths] | None = None, *, option: str = "module_paths"
) -> list[BlockInfo]:
    """Every block of ``model`` with the full paths of its attention and FFN projections.

    Args:
        model: Any model; Hugging Face models are recognised by ``config.model_type``.
        paths: Explicit paths (from :func:`parse_module_paths`); ``None`` uses
            :data:`FAMILIES` and falls back to :func:`discover`.
        option: The user-facing option name to mention in error messages.

    Raises:
        UnsupportedModelError: The blocks cannot be found.
        TargetNotFoundError: An explicit path matches nothing.
    """
    if paths is not None:
        stacks = []
        for stack in paths:
            matches = _match_lists(model, stack.blocks)
            if len(matches) != 1:
                lists = ", ".join(name for name, _ in _block_lists(model)) or "none"
                raise TargetNotFoundError(
                    f"{option}: blocks={stack.blocks!r} matches {len(matches)} nn.ModuleList(s) of this "
                    f"{type(model).__name__}; it must match exactly one. Block lists found: {lists}."
                )
            stacks.append((*matches[0], stack))
        explicit = True
    else:
        family = FAMILIES.get(_model_type(model) or "")
        stacks = _table_stacks(model, family) if family else []
        if family and not stacks:
            logger.debug("The %s table entry does not fit %s; discovering.", _model_type(model), type(model).__name__)
        if not stacks:
            stacks = [(*_match_lists(model, s.blocks)[0], s) for s in discover(model)]
        explicit = False
    infos: list[BlockInfo] = []
    for name, blocks, stack in stacks:
        for i, block in enumerate(blocks):
            infos.append(_block_info(model, block, f"{name}.{i}", name, stack, len(infos), explicit, option))
    return infos


def _block_info(
    model: nn.Module, block: nn.Module, path: str, stack: str, paths: StackPaths, index: int, explicit: bool,
    option: str,
) -> BlockInfo:
    parts: dict[str, str | None] = {}
    for key in ("attention_output", "ffn_output", "ffn_input", "cross_attention_output"):
        spec = getattr(paths, key)
        rel = _resolve(block, spec)
        if spec is not None and rel is None and key != "cross_attention_output":
            names = [n for n, m in block.named_modules() if linear_dims(m) is not None]
            if explicit:
                raise TargetNotFoundError(
                    f"{option}: {key}={spec!r} is not a module of block {path!r}.{suggest(spec, names)} "
                    f"Its linear layers are: {', '.join(names) or 'none'}."
                )
            raise _unsupported(model, f"block {path!r} has no {key.replace('_', ' ')} at {spec!r}", option)
        parts[key] = f"{path}.{rel}" if rel is not None else None
    hidden = _stack_hidden(model, block, parts, path)
    return BlockInfo(index=index, path=path, stack=stack, hidden_size=hidden, **parts)  # type: ignore[arg-type]


def _stack_hidden(model: nn.Module, block: nn.Module, parts: Mapping[str, str | None], path: str) -> int:
    for key in ("ffn_output", "attention_output", "cross_attention_output"):
        full = parts[key]
        if full is not None:
            dims = linear_dims(block.get_submodule(full[len(path) + 1 :]))
            if dims is not None:
                return dims[1]
    hidden = _config_hidden_size(model)
    if hidden is None:
        raise _unsupported(model, f"the hidden size of block {path!r} is unknown (its outputs are not linear layers)")
    return hidden


_PATH_KEYS = tuple(f.name for f in fields(StackPaths))


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
            if key not in _PATH_KEYS:
                raise ConfigError(
                    f"{option} has an unknown key {key!r}.{suggest(str(key), _PATH_KEYS)} "
                    f"Valid keys: {', '.join(_PATH_KEYS)}."
                )
            if path is not None and (not isinstance(path, str) or not path):
                raise ConfigError(f"{option}[{key!r}] must be a module path string, got {path!r}.")
        if not item.get("blocks"):
            raise ConfigError(f"{option} needs 'blocks', the name of the nn.ModuleList of blocks; got {dict(item)!r}.")
        if not (item.get("attention_output") or item.get("ffn_output")):
            raise ConfigError(f"{option} needs 'attention_output' or 'ffn_output' (or both); got {dict(item)!r}.")
        stacks.append(StackPaths(**dict(item)))
    return tuple(stacks)
