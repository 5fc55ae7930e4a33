"""Tokenised examples and the collator that pads them into batches.

Examples are dicts of Python ints and lists (unpadded). The collator pads every
list-valued key to the longest in the batch, on the right: ``input_ids`` with the
tokenizer's pad id, ``labels`` with -100 (ignored by the loss), everything else
(``attention_mask``, ``token_type_ids``) with 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from petl.tasks import IGNORE_INDEX

__all__ = ["Collator", "TokenizedDataset", "pad_id"]

logger = logging.getLogger(__name__)



class TokenizedDataset(torch.utils.data.Dataset):
    """A list of tokenised examples (dicts of ints and lists of ints)."""

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]

    def __repr__(self) -> str:
        keys = ", ".join(self.examples[0]) if self.examples else ""
        return f"TokenizedDataset({len(self)} examples: {keys})"


def pad_id(tokenizer: Any) -> int:
    """The id to pad ``input_ids`` with: the pad token, else EOS (GPT-2 has no pad token), else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


class Collator:
    """Pad a list of tokenised examples into a batch of tensors.

    Args:
        pad_token_id: The id ``input_ids`` are padded with.
        pad_to_multiple_of: Round the padded length up to a multiple of this (8 helps
            tensor cores on GPUs), or ``None``.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_values = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad and stack ``examples``; keys follow the first example."""
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [example[key] for example in examples]
            if not isinstance(values[0], (list, tuple)):
                batch[key] = torch.tensor(values, dtype=torch.long)
                continue
            length = max(len(v) for v in values)
            if self.pad_to_multiple_of:
                length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
            fill = self.pad_values.get(key, 0)
            padded = torch.full((len(values), length), fill, dtype=torch.long)
            for row, value in enumerate(values):
                padded[row, : len(value)] = torch.tensor(value, dtype=torch.long)
            batch[key] = padded
        return batch

    def __repr__(self) -> str:
        return f"Collator(pad_token_id={self.pad_values['input_ids']}, pad_to_multiple_of={self.pad_to_multiple_of})"
