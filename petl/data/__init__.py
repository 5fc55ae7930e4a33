"""Datasets, tokenisation and collators for petl's trainer.

:func:`load_task_data` reads the training and evaluation data (local CSV / TSV /
JSON lines / CoNLL files, ``datasets`` objects or Hub names, see
:func:`read_dataset`), finds the columns a task needs, turns labels into ids and
tokenises every example, returning a :class:`TaskData` whose ``collator`` pads
batches. Supported tasks (:data:`TASKS`):

* ``sequence-classification``: one sentence or a sentence pair -> one class;
* ``token-classification``: words -> one tag per word (NER), tags aligned to the
  first sub-token of each word;
* ``causal-lm``: prompt -> completion, loss on the completion only (or plain text,
  loss on every token);
* ``seq2seq``: source text -> target text.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from petl.data import tokenize as _tokenize
from petl.data.collate import Collator, TokenizedDataset, pad_id
from petl.data.columns import Labels, class_names, encode_labels, find_column, pick_column, text_values
from petl.data.readers import read_conll, read_dataset
from petl.errors import (
    ColumnNotFoundError,
    ConfigError,
    DataError,
    DataFileError,
    LabelError,
    UnknownFormatError,
    UnknownTaskError,
)
from petl.tasks import IGNORE_INDEX, TASKS, check_task

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "Collator",
    "ColumnNotFoundError",
    "DataError",
    "DataFileError",
    "LabelError",
    "TaskData",
    "TokenizedDataset",
    "UnknownFormatError",
    "UnknownTaskError",
    "check_task",
    "load_task_data",
    "read_conll",
    "read_dataset",
]

logger = logging.getLogger(__name__)

# Default column names per role, tried in order.
_TEXT = ("sentence", "text", "content", "review", "document")
_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence"))
_CLASS = ("label", "labels", "class", "category")
_WORDS = ("tokens", "words")
_TAGS = ("ner_tags", "tags", "labels", "label", "ner")
_PROMPT = ("prompt", "instruction", "question", "input")
_COMPLETION = ("completion", "response", "output", "answer", "target")
_SOURCE = ("source", "input", "text", "document", "article", "question", "prompt", "sentence")
_TARGET = ("target", "summary", "output", "completion", "answer", "response")


@dataclass
class TaskData:
    """Tokenised training and evaluation data for one task, and how to batch it."""

    train: torch.utils.data.Dataset | None
    """Training examples: dicts of Python ints / lists, tokenised and unpadded."""
    eval: torch.utils.data.Dataset | None
    """Evaluation examples, like ``train``; ``None`` when no evaluation data was given."""
    collator: Callable[[list[dict]], dict[str, torch.Tensor]]
    """Pads a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors
    (and ``token_type_ids`` when the tokenizer gives them); labels are padded with -100."""
    task: str
    """One of :data:`TASKS`."""
    num_labels: int | None
    """The number of classes (classification tasks), else ``None``."""
    label_names: list[str] | None
    """The name of each class id (e.g. ``["negative", "positive"]`` or NER tags), or ``None``
    when the labels were integers without names."""


_Splits = dict[str, datasets.Dataset]
_Examples = dict[str, list[dict[str, Any]]]


def load_task_data(
    task: str,
    train: str | os.PathLike | datasets.Dataset | None,
    eval: str | os.PathLike | datasets.Dataset | None = None,
    *,
    tokenizer: Any,
    max_length: int = 128,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    target_column: str | None = None,
    label_names: Sequence[str] | None = None,
    limit: int | None = None,
    num_labels: int | None = None,
) -> TaskData:
    """Read, check and tokenise the data of a task.

    Args:
        task: One of :data:`TASKS`.
        train: Training data (a path, a ``datasets.Dataset`` or a Hub name), or ``None``.
        eval: Evaluation data, like ``train`` (its ``"validation"`` split is read), or ``None``.
        tokenizer: A Hugging Face tokenizer (fast tokenizers are needed for token classification).
        max_length: Truncate every sequence to this many tokens.
        text_column: The text column ("sentence"/"text" by default), the words column for
            token classification ("tokens"), the prompt column for causal LM ("prompt",
            else a plain "text" column), the source column for seq2seq ("source"/"input").
        text_pair_column: The second sentence of sentence pairs (found automatically
            for sentence1/sentence2, premise/hypothesis, question1/question2, question/sentence).
        label_column: The label column ("label"/"labels"; "ner_tags"/"tags" for token classification).
        target_column: The completion (causal LM) or target (seq2seq) column.
        label_names: The class names in id order. String labels are mapped through them;
            integer labels are checked to be below ``len(label_names)``. By default the
            names of a ``ClassLabel`` column, else the sorted unique string labels.
        limit: Keep only the first ``limit`` examples of each split (quick runs).
        num_labels: The number of classes, to check integer labels against when no
            ``label_names`` are given (default: the largest label + 1).

    Returns:
        The tokenised :class:`TaskData`.

    Raises:
        UnknownTaskError: ``task`` is not one of :data:`TASKS`.
        ColumnNotFoundError: A needed column is missing; the message lists those found.
        LabelError: Labels outside ``label_names`` / ``num_labels``, or of unusable type.
        DataFileError, UnknownFormatError: A file that cannot be read.
        ConfigError: Invalid ``max_length`` / ``limit``, or no data at all.
    """
    check_task(task)
    if max_length < 1:
        raise ConfigError(f"max_length must be a positive number of tokens, got {max_length}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of examples or None, got {limit}.")
    if train is None and eval is None:
        raise ConfigError("No data: pass a training set (train=...), an evaluation set (eval=...) or both.")
    splits: dict[str, datasets.Dataset] = {}
    for name, source, split in (("training", train, "train"), ("evaluation", eval, "validation")):
        if source is not None:
            dataset = read_dataset(source, split=split)
            if limit is not None and len(dataset) > limit:
                dataset = dataset.select(range(limit))
            splits[name] = dataset
    prepare = {
        "sequence-classification": _sequence_classification,
        "token-classification": _token_classification,
        "causal-lm": _causal_lm,
        "seq2seq": _seq2seq,
    }[task]
    options = dict(
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        target_column=target_column,
        label_names=label_names,
        num_labels=num_labels,
    )
    examples, labels = prepare(splits, tokenizer, max_length, **options)
    for name, rows in examples.items():
        logger.info("%s data: %d %s examples", name, len(rows), task)
    return TaskData(
        train=TokenizedDataset(examples["training"]) if "training" in examples else None,
        eval=TokenizedDataset(examples["evaluation"]) if "evaluation" in examples else None,
        collator=Collator(pad_id(tokenizer)),
        task=task,
        num_labels=labels.num_labels if labels is not None else None,
        label_names=labels.names if labels is not None else None,
    )


def _first(splits: _Splits) -> tuple[str, datasets.Dataset]:
    return next(iter(splits.items()))


def _columns(splits: _Splits, chosen: str | None, candidates: Sequence[str], **kw: Any) -> str:
    """Resolve a column on the first split, then require the same column in the others."""
    first_name, first = _first(splits)
    column = pick_column(first, chosen, candidates, split=first_name, **kw)
    for name, dataset in splits.items():
        if column not in dataset.column_names:
            flag = "--" + kw["option"].replace("_", "-")
            raise ColumnNotFoundError(
                f"The {name} data has no {kw['role']} column {column!r} (the {first_name} data's); its columns are "
                f"{', '.join(map(repr, dataset.column_names))}. Give both splits the same columns, or choose the "
                f"column with {flag} NAME / {kw['option']}='NAME'."
            )
    return column


def _sequence_classification(
    splits: _Splits, tokenizer: Any, max_length: int, *, text_column: str | None, text_pair_column: str | None,
    label_column: str | None, label_names: Sequence[str] | None, num_labels: int | None, **_: Any,
) -> tuple[_Examples, Labels]:
    _, first = _first(splits)
    if text_column is None and text_pair_column is None:
        pair = next(((a, b) for a, b in _PAIRS if a in first.column_names and b in first.column_names), None)
        if pair is not None:
            text_column, text_pair_column = pair
    text = _columns(splits, text_column, _TEXT, role="text", option="text_column")
    pair_column = None
    if text_pair_column is not None:
        pair_column = _columns(splits, text_pair_column, (), role="second-sentence", option="text_pair_column")
    label = _columns(splits, label_column, _CLASS, role="label", option="label_column")
    names = label_names if label_names is not None else class_names(first, label)
    ids, labels = encode_labels(
        {n: list(d[label]) for n, d in splits.items()},
        column=label,
        label_names=names,
        num_labels=num_labels,
        nested=False,
    )
    examples = {
        n: _tokenize.sequence_classification(
            tokenizer,
            text_values(d, text, split=n),
            text_values(d, pair_column, split=n) if pair_column else None,
            ids[n],
            max_length=max_length,
            desc=f"Tokenising {n} data",
        )
        for n, d in splits.items()
    }
    return examples, labels


def _token_classification(
    splits: _Splits, tokenizer: Any, max_length: int, *, text_column: str | None, label_column: str | None,
    label_names: Sequence[str] | None, num_labels: int | None, **_: Any,
) -> tuple[_Examples, Labels]:
    _, first = _first(splits)
    words = _columns(splits, text_column, _WORDS, role="tokens (words)", option="text_column")
    tags = _columns(splits, label_column, _TAGS, role="tag", option="label_column")
    names = label_names if label_names is not None else class_names(first, tags)
    values = {n: _word_lists(d, tags, split=n) for n, d in splits.items()}
    ids, labels = encode_labels(values, column=tags, label_names=names, num_labels=num_labels, nested=True)
    examples = {
        n: _tokenize.token_classification(
            tokenizer, _word_lists(d, words, split=n), ids[n], max_length=max_length, desc=f"Tokenising {n} data"
        )
        for n, d in splits.items()
    }
    return examples, labels


def _word_lists(dataset: datasets.Dataset, column: str, *, split: str) -> list[list[Any]]:
    """The values of a per-word column, checked to be lists (not text, which would split into characters)."""
    rows = list(dataset[column])
    for index, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise DataError(
                f"Row {index} of the {split} data has {row!r} in column {column!r}, but token classification needs "
                "a list per row (one entry per word). Use a CoNLL file ('word TAG' lines) or JSON lines with lists, "
                'e.g. {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}.'
            )
    return [list(row) for row in rows]


def _causal_lm(
    splits: _Splits, tokenizer: Any, max_length: int, *, text_column: str | None, target_column: str | None, **_: Any
) -> tuple[_Examples, None]:
    _, first = _first(splits)
    target = target_column if target_column is not None else find_column(first, _COMPLETION)
    if target is None:  # plain text: loss on every token
        text = _columns(splits, text_column, _TEXT, role="text (or prompt + completion)", option="text_column")
        prompt = None
    else:
        target = _columns(splits, target, _COMPLETION, role="completion", option="target_column")
        prompt = _columns(splits, text_column, _PROMPT, role="prompt", option="text_column")
        text = target
    examples = {
        n: _tokenize.causal_lm(
            tokenizer,
            text_values(d, prompt, split=n) if prompt is not None else None,
            text_values(d, text, split=n),
            max_length=max_length,
            desc=f"Tokenising {n} data",
        )
        for n, d in splits.items()
    }
    return examples, None


def _seq2seq(
    splits: _Splits, tokenizer: Any, max_length: int, *, text_column: str | None, target_column: str | None, **_: Any
) -> tuple[_Examples, None]:
    source = _columns(splits, text_column, _SOURCE, role="source text", option="text_column")
    target = _columns(splits, target_column, _TARGET, role="target text", option="target_column")
    if source == target:
        raise ColumnNotFoundError(
            f"The source and target columns are both {source!r}. Choose them with --text-column / text_column= "
            "and --target-column / target_column=."
        )
    examples = {
        n: _tokenize.seq2seq(
            tokenizer,
            text_values(d, source, split=n),
            text_values(d, target, split=n),
            max_length=max_length,
            desc=f"Tokenising {n} data",
        )
        for n, d in splits.items()
    }
    return examples, None
