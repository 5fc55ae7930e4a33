"""Tokenise each task's examples.

* sequence classification: ``tokenizer(text[, text_pair])``, ``labels`` = class id;
* token classification: ``tokenizer(words, is_split_into_words=True)``; the first
  sub-token of each word gets the word's tag id, later sub-tokens and special tokens
  get -100 (Devlin et al. 2019, BERT, Section 5.3);
* causal LM: ``input_ids`` = [special prefix] + prompt + completion + EOS with
  ``labels`` = -100 on the prefix and prompt, so the loss covers the completion only;
  a data set with only a text column trains on every token. The model shifts the
  labels itself (``labels[t]`` is predicted from positions ``< t``);
* seq2seq: ``input_ids`` = tokenised source, ``labels`` = tokenised target.

Every sequence is truncated to ``max_length`` tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from petl.errors import DataError
from petl.tasks import IGNORE_INDEX

__all__ = ["causal_lm", "sequence_classification", "seq2seq", "token_classification"]

logger = logging.getLogger(__name__)

_BATCH = 1000  # examples per tokenizer call: large enough for the fast tokenizers' parallelism


def _batches(n: int, desc: str) -> Iterator[range]:
    starts = range(0, n, _BATCH)
    # disable=None: a bar on terminals only, so logs and CI stay clean.
    for start in tqdm(starts, desc=desc, unit="batch", disable=None if n > _BATCH else True):
        yield range(start, min(start + _BATCH, n))


def _rows(encoding: Any, n: int) -> list[dict[str, Any]]:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
    return [{k: list(encoding[k][i]) for k in keys} for i in range(n)]


def sequence_classification(
    tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, labels: Sequence[int], *, max_length: int,
    desc: str,
) -> list[dict[str, Any]]:
    """Tokenise single sentences (``pairs=None``) or sentence pairs with their class ids."""
    examples: list[dict[str, Any]] = []
    for rows in _batches(len(texts), desc):
        batch_pairs = [pairs[i] for i in rows] if pairs is not None else None
        encoding = tokenizer([texts[i] for i in rows], batch_pairs, truncation=True, max_length=max_length)
        for i, example in zip(rows, _rows(encoding, len(rows)), strict=True):
            example["labels"] = labels[i]
            examples.append(example)
    return examples


def token_classification(
    tokenizer: Any,
    words: Sequence[Sequence[str]],
    tags: Sequence[Sequence[int]],
    *,
    max_length: int,
    desc: str,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Tokenise pre-split words and align word tags to their first sub-token (``offset``: the
    number of the first example, for messages)."""
    for index, (row_words, row_tags) in enumerate(zip(words, tags, strict=True), start=offset):
        if len(row_words) != len(row_tags):
            raise DataError(
                f"Example {index} ({desc}) has {len(row_words)} words but {len(row_tags)} tags: "
                f"{list(row_words)[:8]} / {list(row_tags)[:8]}. Each word needs exactly one tag."
            )
    if not getattr(tokenizer, "is_fast", True):
        raise DataError(
            f"Token classification needs a fast tokenizer (for word_ids), got a {type(tokenizer).__name__}. "
            "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    examples: list[dict[str, Any]] = []
    for rows in _batches(len(words), desc):
        try:
            encoding = tokenizer(
                [list(words[i]) for i in rows], is_split_into_words=True, truncation=True, max_length=max_length
            )
        except (ValueError, AssertionError) as exc:  # e.g. byte-level BPE without add_prefix_space
            raise DataError(
                f"The tokenizer cannot encode pre-split words: {exc}. For GPT-2/RoBERTa-style tokenizers load it "
                "with AutoTokenizer.from_pretrained(..., add_prefix_space=True)."
            ) from exc
        for batch_index, (i, example) in enumerate(zip(rows, _rows(encoding, len(rows)), strict=True)):
            aligned = []
            previous = None
            for word in encoding.word_ids(batch_index):
                aligned.append(IGNORE_INDEX if word is None or word == previous else tags[i][word])
                previous = word
            example["labels"] = aligned
            examples.append(example)
    return examples


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text (BOS, [CLS]), found by encoding a probe."""
    probe = "petl"
    full = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start])
    return []


def _end_id(tokenizer: Any) -> int | None:
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return None


def causal_lm(
    tokenizer: Any,
    prompts: Sequence[str] | None,
    completions: Sequence[str],
    *,
    max_length: int,
    desc: str,
) -> list[dict[str, Any]]:
    """Tokenise prompt + completion + EOS with the prompt masked, or plain texts (``prompts=None``).

    The prompt and the completion are tokenised separately, so the boundary is exact;
    put the separator (a space or newline) at the end of the prompt or the start of
    the completion. Examples whose completion is truncated away entirely are dropped
    (with a warning), because they carry no loss.
    """
    prefix = _special_prefix(tokenizer)
    end = _end_id(tokenizer)
    if end is None:
        logger.warning("The tokenizer has no EOS or SEP token: sequences get no end-of-text token.")
    suffix = [end] if end is not None else []
    examples: list[dict[str, Any]] = []
    dropped = 0
    for rows in _batches(len(completions), desc):
        targets = tokenizer([completions[i] for i in rows], add_special_tokens=False)["input_ids"]
        if prompts is not None:
            contexts = tokenizer([prompts[i] for i in rows], add_special_tokens=False)["input_ids"]
        else:
            contexts = [[] for _ in rows]
        for context, target in zip(contexts, targets, strict=True):
            masked = prefix + list(context)
            input_ids = (masked + list(target) + suffix)[:max_length]
            if prompts is None:
                labels = list(input_ids)
            else:
                labels = ([IGNORE_INDEX] * len(masked) + list(target) + suffix)[:max_length]
                if all(label == IGNORE_INDEX for label in labels):
                    dropped += 1
                    continue
            examples.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
    if dropped:
        logger.warning(
            "Dropped %d of %d %s examples whose prompt fills all max_length=%d tokens (no completion token left "
            "to learn from); raise max_length to keep them.",
            dropped,
            len(completions),
            desc,
            max_length,
        )
    return examples


def seq2seq(
    tokenizer: Any, sources: Sequence[str], targets: Sequence[str], *, max_length: int, desc: str
) -> list[dict[str, Any]]:
    """Tokenise source texts as ``input_ids`` and target texts as ``labels``."""
    examples: list[dict[str, Any]] = []
    for rows in _batches(len(sources), desc):
        encoding = tokenizer([sources[i] for i in rows], truncation=True, max_length=max_length)
        labels = tokenizer(text_target=[targets[i] for i in rows], truncation=True, max_length=max_length)
        for i, example in enumerate(_rows(encoding, len(rows))):
            example["labels"] = list(labels["input_ids"][i])
            examples.append(example)
    return examples
