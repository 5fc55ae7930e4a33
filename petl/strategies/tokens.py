"""Token helpers shared by the strategies that start from or stand in for real tokens
(``prefix`` and ``prompt``): the input embedding table, the special ids, a plain id, random ids."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Any

import torch
from torch import nn

from petl.core.validators import check, is_int
from petl.errors import ConfigError, UnsupportedModelError

__all__ = ["check_token_ids", "input_embeddings", "plain_token", "random_tokens", "special_ids"]


def check_token_ids(ids: Any) -> tuple[int, ...]:
    """``init_token_ids`` as a tuple, checked: a non-empty, ordered list of non-negative ints.

    Raises:
        ConfigError: Anything else, with how to tokenize a text into ids.
    """
    # A set or a mapping has no order (or is not a list of ids at all), and the order of the ids matters.
    if isinstance(ids, (str, bytes, Mapping, Set)) or not isinstance(ids, Iterable):
        raise ConfigError(
            f"init_token_ids must be a list of token ids, got {type(ids).__name__} {ids!r}. Tokenize the text "
            'first, e.g. tokenizer("Classify the sentiment:", add_special_tokens=False).input_ids.'
        )
    ids = tuple(ids)
    check(len(ids) > 0, "init_token_ids must not be empty; pass None for a random start.")
    check(all(is_int(i) and i >= 0 for i in ids),
          f"init_token_ids must contain non-negative integers, got {list(ids)!r}.")
    return ids


def input_embeddings(model: nn.Module, needed_by: str) -> nn.Embedding:
    """``model``'s input embedding table.

    Raises:
        UnsupportedModelError: The model has none; ``needed_by`` completes "..., which <needed_by>".
    """
    get = getattr(model, "get_input_embeddings", None)
    table = get() if callable(get) else None
    if not isinstance(table, nn.Embedding):
        raise UnsupportedModelError(
            f"This {type(model).__name__} has no input embedding table (get_input_embeddings()), which {needed_by}"
        )
    return table


def special_ids(model: nn.Module) -> set[object]:
    """The pad, bos, eos and decoder-start ids of ``model``'s config."""
    config = getattr(model, "config", None)
    special: set[object] = set()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        special.update(value if isinstance(value, (list, tuple)) else [value])
    return special


def plain_token(model: nn.Module) -> int:
    """The smallest token id that is not a special token (never padding, never an end)."""
    special = special_ids(model)
    return next(i for i in range(len(special) + 1) if i not in special)


def random_tokens(model: nn.Module, vocab: int, count: int) -> tuple[int, ...]:
    """``count`` distinct random ids below ``vocab``, none of them special, drawn from torch's generator."""
    special = special_ids(model)
    ids = tuple(i for i in torch.randperm(vocab).tolist() if i not in special)[:count]
    return ids if len(ids) == count else (ids * count)[:count]
