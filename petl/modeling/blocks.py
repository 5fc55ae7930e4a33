"""Every block of a model with the full paths of its attention and feed-forward projections.

:func:`find_blocks` takes the family's entry of :data:`petl.modeling.families.FAMILIES`
when it fits the model, explicit user paths when given, and structural discovery
(:mod:`petl.modeling.discovery`) otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from torch import nn

from petl.errors import TargetNotFoundError, suggest
from petl.modeling.discovery import block_lists, config_hidden_size, discover, match_lists, model_type, unsupported
from petl.modeling.families import FAMILIES, BlockInfo, StackPaths
from petl.modeling.layers import linear_dims

__all__ = ["find_blocks", "resolve_path"]

logger = logging.getLogger(__name__)


def resolve_path(block: nn.Module, spec: str | None) -> str | None:
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


def _table_stacks(model: nn.Module, family: tuple[StackPaths, ...]) -> list[tuple[str, nn.ModuleList, StackPaths]]:
    """The family's stacks resolved against ``model``; empty when any stack does not fit."""
    resolved = []
    for paths in family:
        matches = match_lists(model, paths.blocks)
        if len(matches) != 1:
            return []
        name, blocks = matches[0]
        first = blocks[0]
        required = (paths.attention_output, paths.ffn_output, paths.ffn_input)
        if any(spec is not None and resolve_path(first, spec) is None for spec in required):
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
            matches = match_lists(model, stack.blocks)
            if len(matches) != 1:
                lists = ", ".join(name for name, _ in block_lists(model)) or "none"
                raise TargetNotFoundError(
                    f"{option}: blocks={stack.blocks!r} matches {len(matches)} nn.ModuleList(s) of this "
                    f"{type(model).__name__}; it must match exactly one. Block lists found: {lists}."
                )
            stacks.append((*matches[0], stack))
        explicit = True
    else:
        family = FAMILIES.get(model_type(model) or "")
        stacks = _table_stacks(model, family) if family else []
        if family and not stacks:
            logger.debug("The %s table entry does not fit %s; discovering.", model_type(model), type(model).__name__)
        if not stacks:
            stacks = [(*match_lists(model, s.blocks)[0], s) for s in discover(model)]
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
        rel = resolve_path(block, spec)
        if spec is not None and rel is None and key != "cross_attention_output":
            names = [n for n, m in block.named_modules() if linear_dims(m) is not None]
            if explicit:
                raise TargetNotFoundError(
                    f"{option}: {key}={spec!r} is not a module of block {path!r}.{suggest(spec, names)} "
                    f"Its linear layers are: {', '.join(names) or 'none'}."
                )
            raise unsupported(model, f"block {path!r} has no {key.replace('_', ' ')} at {spec!r}", option)
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
    hidden = config_hidden_size(model)
    if hidden is None:
        raise unsupported(model, f"the hidden size of block {path!r} is unknown (its outputs are not linear layers)")
    return hidden
