"""Packing causal-LM examples: several short examples share one row of a batch, each
attending only to itself, so a batch carries almost no padding.

:class:`PackingCollator` places the examples of a batch into rows as long as its longest
example (first fit, longest first), and gives the model what it needs to keep them apart:

* ``position_ids`` that restart at 0 with every example, so each example sees the
  positions it would see alone;
* no ``attention_mask``: with ``attention_mask=None`` and no cache, transformers
  (``masking_utils.find_packed_sequence_indices``, 5.x) reads the example boundaries from the
  restarts of ``position_ids`` and builds a block-diagonal causal mask (eager, sdpa and flex
  attention; flash attention reads the same boundaries for its variable-length kernels);
* ``use_cache=False``: a model that builds a cache in its forward pass (``config.use_cache``,
  true for most causal LMs, also in training) would switch that detection off and let every
  token attend to the examples before it in its row;
* ``labels`` of -100 at the first token of each example, so it is not predicted from the
  example before it. Alone, an example's first label is never predicted either (the model
  shifts the labels by one), so a packed batch has the same labelled tokens as the padded
  batch of the same examples, and the same loss up to float rounding.

The padding at the end of a row continues the positions of the row's last example: no real
token attends to it (it comes after them), its labels are -100, and ``position_ids == 0``
counts the examples of a batch.

Not every model honours this (OPT, for one, lets packed examples see each other in
transformers 5.24). :func:`check_packing` runs the model once on two tiny examples, alone and
packed, and refuses a model whose packed outputs differ; it does not name families, so it also
judges adapters that change the attention (petl's ``prefix`` passes: it widens the mask that
transformers builds).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from petl.errors import ConfigError, DataError
from petl.tasks import IGNORE_INDEX

__all__ = ["PackingCollator", "check_packing", "pack_rows"]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Place examples into rows of at most ``capacity`` tokens: first fit, longest first.

    Args:
        lengths: Each example's length, none above ``capacity``.
        capacity: Tokens per row.

    Returns:
        The example indices of each row, in the order they are placed.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[index]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= lengths[index]
    return rows


class PackingCollator:
    """Pack a list of tokenised causal-LM examples into a batch (see the module docstring).

    Each example needs ``input_ids``; ``labels`` default to ``input_ids`` (every token
    learned), and an ``attention_mask``, if given, must be all ones (packing drops it).

    Args:
        pad_token_id: The id that fills the end of each row (never attended to, never learned).
    """

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The packed batch: ``input_ids``, ``labels``, ``position_ids`` and ``use_cache=False``."""
        ids = [list(example["input_ids"]) for example in examples]
        for number, example in enumerate(examples):
            mask = example.get("attention_mask")
            if mask is not None and any(int(v) != 1 for v in mask):
                raise DataError(
                    f"Example {number} of a packed batch has padding (zeros in its attention_mask), but packing "
                    "joins examples end to end and drops the mask. Pass unpadded examples, or train with "
                    "packing=False."
                )
        lengths = [len(row) for row in ids]
        capacity = max(lengths)
        rows = pack_rows(lengths, capacity)
        shape = (len(rows), capacity)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        for r, members in enumerate(rows):
            start = 0
            for index in members:
                n = lengths[index]
                example_labels = examples[index].get("labels", ids[index])
                if len(example_labels) != n:
                    raise DataError(
                        f"Example {index} of a packed batch has {n} input_ids but {len(example_labels)} labels; "
                        "causal-LM labels must be aligned with input_ids (-100 for no loss)."
                    )
                input_ids[r, start:start + n] = torch.tensor(ids[index], dtype=torch.long)
                labels[r, start:start + n] = torch.tensor(example_labels, dtype=torch.long)
                labels[r, start] = IGNORE_INDEX  # never predicted from the example before it
                positions[r, start:start + n] = torch.arange(n)
                start += n
            # The padding continues the last example's positions (never beyond capacity - 1).
            last = positions[r, start - 1] + 1
            positions[r, start:] = torch.arange(capacity - start) + last
        return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "use_cache": False}

    def __repr__(self) -> str:
        return f"PackingCollator(pad_token_id={self.pad_token_id})"


def _packing_error(model: nn.Module, why: str) -> ConfigError:
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return ConfigError(
        f"packing=True needs a model that keeps packed examples apart, but this {type(model).__name__} "
        f"(attention {attention!r}) {why}. Train with packing=False (group_by_length=True also removes most of "
        "the padding), or use a model that takes position_ids and reads packed sequences "
        "from them (Llama, Qwen2, Mistral, GPT-2, GPT-NeoX and most decoders of transformers 5)."
    )


def check_packing(model: nn.Module, task: str) -> None:
    """Refuse ``packing=True`` where a packed batch would not train like a padded one.

    The model runs once (in eval mode, without gradients) on two tiny examples, alone and
    packed into one row as :class:`PackingCollator` packs them; their logits must agree
    (up to float rounding: 1e-4 of their largest magnitude in float32, 3e-2 in half precision).
    The model's train/eval modes are put back afterwards; no random generator is drawn from.

    Args:
        model: The model to train (wrapped or plain).
        task: The data's task; packing applies to ``causal-lm`` only.

    Raises:
        ConfigError: Another task, a model whose forward takes no ``position_ids``, or a model
            whose packed outputs differ from its outputs on the examples alone.
    """
    if task != "causal-lm":
        raise ConfigError(
            f"packing=True packs causal-LM examples, but the task is {task!r}: its models (encoders, "
            "encoder-decoders, classification heads) read each example as a whole. Train with packing=False; "
            "group_by_length=True removes most of the padding."
        )
    if "position_ids" not in inspect.signature(model.forward).parameters:
        raise _packing_error(model, "takes no position_ids to restart positions at each example")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    device = weight.device if weight is not None else next(model.parameters()).device
    vocab = int(weight.shape[0]) if weight is not None else int(getattr(model.config, "vocab_size", 8))
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(0, vocab, (1, n), generator=generator).to(device) for n in (3, 5))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            alone = torch.cat([model(input_ids=x, use_cache=False).logits for x in (first, second)], dim=1)
            positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]], device=device)
            packed = model(input_ids=torch.cat([first, second], dim=1), position_ids=positions,
                           use_cache=False).logits
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _packing_error(model, f"fails on a packed row ({exc})") from exc
    finally:
        for module, training in modes:
            module.training = training
    alone, packed = alone.float(), packed.float()
    half = any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())
    tolerance = 3e-2 if half else 1e-4
    difference = float((packed - alone).abs().max())
    if difference > tolerance * max(float(alone.abs().max()), 1e-6):
        raise _packing_error(
            model, f"lets packed examples see each other (its outputs on a packed row differ by {difference:.3g} "
            "from its outputs on the examples alone)")
