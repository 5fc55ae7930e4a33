"""Structural discovery: finding the blocks of a model family petl has no table for.

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
"""

from __future__ import annotations

import re
from dataclasses import fields

from torch import nn

from petl.errors import UnsupportedModelError
from petl.modeling.families import StackPaths
from petl.modeling.layers import linear_dims

__all__ = ["block_lists", "config_hidden_size", "discover", "match_lists", "model_type", "unsupported"]

_OUTPUT_NAME = re.compile(r"(^|[._])(o|wo|out\w*|output\w*|dense|c_proj)$")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def config_hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    return size if isinstance(size, int) else None


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
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


def match_lists(model: nn.Module, suffix: str) -> list[tuple[str, nn.ModuleList]]:
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
    lists = block_lists(model)
    if not lists:
        raise unsupported(model, "it has no nn.ModuleList of identical blocks containing linear layers")
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        lists = [max(lists, key=lambda item: len(item[1]))]
    hidden = config_hidden_size(model)
    stacks = []
    for name, blocks in lists:
        found = _discover_block(blocks[0], hidden)
        if found is None or found.ffn_output is None:
            raise unsupported(model, f"no feed-forward output projection was found in the blocks of {name!r}")
        stacks.append(StackPaths(**{**_as_dict(found), "blocks": name}))
    return tuple(stacks)


def _as_dict(paths: StackPaths) -> dict[str, str | None]:
    return {f.name: getattr(paths, f.name) for f in fields(paths)}


def unsupported(model: nn.Module, why: str, option: str = "module_paths") -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Cannot locate the transformer blocks of this {type(model).__name__} "
        f"(model_type {model_type(model)!r}): {why}. Pass the paths explicitly, e.g. "
        f"{option}={{'blocks': 'model.layers', 'attention_output': 'self_attn.o_proj', "
        "'ffn_input': 'mlp.up_proj', 'ffn_output': 'mlp.down_proj'}, where 'blocks' names the "
        "nn.ModuleList of blocks and the other paths are inside one block, as in model.named_modules()."
    )
