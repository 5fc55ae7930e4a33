"""Streamed training data: a ``datasets.IterableDataset`` read (and tokenised) on the fly.

A stream has no length, so a run over it is measured in optimizer steps
(``TrainConfig.max_steps``). Its first batch (up to 1000 rows) is read before training
starts: it fixes the columns and is checked, so that a wrong column or label fails at
once rather than at some step. Later batches are checked as they arrive (messages count
the rows of the stream's pass from 0). String labels need ``label_names`` (or a
``ClassLabel`` column), since petl cannot scan a stream for its classes.

:class:`StreamingDataset` is what the trainer's data loader reads; its ``set_epoch(pass)``
passes the count of completed passes on to the stream, so that a shuffled stream
(``stream.shuffle(seed=..., buffer_size=...)``) reshuffles the same way in an interrupted
and in a resumed run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from petl.data import pretokenized as _pretokenized
from petl.data.columns import class_names
from petl.data.prepare import prepare_splits
from petl.errors import DataError, LabelError
from petl.tasks import CLASSIFICATION_TASKS, IGNORE_INDEX

__all__ = ["StreamingDataset", "column_names", "pretokenized_stream", "tokenize_stream"]

_BATCH = 1000  # rows per map call: large enough for the fast tokenizers' parallelism

_Vocabulary = tuple[list[str] | None, int | None]
"""The class names (or ``None``) and the number of classes (``None``: unknown, the model's head decides)."""


class StreamingDataset(torch.utils.data.IterableDataset):
    """Tokenised examples from a ``datasets.IterableDataset``, without a length.

    A plain ``torch`` iterable rather than the ``datasets`` object itself, so that under data
    parallelism Accelerate gives every process an equal slice of each batch group (reading
    shards per process could leave the processes with different numbers of batches).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.stream)

    def set_epoch(self, epoch: int) -> None:
        """Start pass ``epoch`` (counted from 0): a shuffled stream reshuffles with its seed and this count."""
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"StreamingDataset({self.stream!r})"


class _Batch:
    """One batch of a stream as :func:`prepare_splits` reads rows: ``column_names``, ``features``, ``[column]``."""

    def __init__(self, columns: Mapping[str, list[Any]], features: Any) -> None:
        self.columns, self.features = columns, features
        self.column_names = list(columns)

    def __getitem__(self, column: str) -> list[Any]:
        return self.columns[column]


def _head(stream: Any, split: str) -> dict[str, list[Any]]:
    """The first batch of ``stream`` as columns."""
    rows = list(itertools.islice(iter(stream), _BATCH))
    if not rows:
        raise DataError(f"The {split} stream yields no rows. Check the data set (and any filter or take on it).")
    return {key: [row.get(key) for row in rows] for key in rows[0]}


def column_names(stream: Any, split: str = "training") -> list[str]:
    """The columns of a stream: from its features, else from its first row."""
    names = getattr(stream, "column_names", None)
    return list(names) if names is not None else list(_head(stream, split))


def _columnar(examples: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[Any]]:
    keys = list(examples[0]) if examples else list(keys)
    return {key: [example[key] for example in examples] for key in keys}


def tokenize_stream(
    task: str, stream: Any, *, tokenizer: Any, max_length: int, options: Mapping[str, Any], split: str = "training"
) -> tuple[StreamingDataset, _Vocabulary, dict[str, Any]]:
    """Tokenise a raw stream on the fly (``stream.map``).

    Returns:
        The stream of examples, its label vocabulary, and ``options`` with the columns and
        label vocabulary fixed (to read the evaluation data the same way).

    Raises:
        ColumnNotFoundError, LabelError, DataError: The first batch is unusable, or its labels are
            strings and neither ``label_names`` nor a ``ClassLabel`` column names the classes.
    """
    stream = stream.with_format(None)
    head = _head(stream, split)
    features = getattr(stream, "features", None)
    _, labels, used = prepare_splits(task, {split: _Batch(head, features)}, tokenizer, max_length, **options)
    fixed = {**options, **used}
    vocabulary: _Vocabulary = (None, None)
    if labels is not None:
        names = options.get("label_names") or class_names(_Batch(head, features), used["label_column"])
        if names is None and labels.names is not None:
            raise LabelError(
                f"The {split} stream's labels in column {used['label_column']!r} are strings "
                f"(e.g. {head[used['label_column']][0]!r}), and petl cannot scan a stream for every class. Pass "
                "label_names=[...] (the class names in id order), or cast the column to a datasets.ClassLabel."
            )
        names = [str(n) for n in names] if names is not None else None
        vocabulary = (names, len(names) if names is not None else options.get("num_labels"))
        fixed.update(label_names=names, num_labels=vocabulary[1])

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        examples, _, _ = prepare_splits(task, {split: _Batch(batch, features)}, tokenizer, max_length,
                                        offset=indices[0] if indices else 0, **fixed)
        return _columnar(examples[split], ("input_ids", "attention_mask", "labels"))

    mapped = stream.map(encode, batched=True, batch_size=_BATCH, with_indices=True, remove_columns=list(head))
    return StreamingDataset(mapped), vocabulary, fixed


def pretokenized_stream(
    task: str, stream: Any, *, label_column: str | None, label_names: Sequence[str] | None, num_labels: int | None,
    split: str = "training",
) -> tuple[StreamingDataset, _Vocabulary]:
    """Check a pre-tokenized stream batch by batch (``stream.map``) and keep petl's columns.

    Raises:
        ColumnNotFoundError, DataError, LabelError: The first batch is unusable.
    """
    stream = stream.with_format(None)
    head = _head(stream, split)
    labels = _pretokenized.label_column(task, list(head), label_column, split=split)
    names = [str(n) for n in label_names] if label_names is not None else None
    vocabulary: _Vocabulary = (None, None)
    if task in CLASSIFICATION_TASKS:
        if names is None and labels is not None:
            names = class_names(_Batch(head, getattr(stream, "features", None)), labels)
        vocabulary = (names, len(names) if names is not None else num_labels)
    given = "label_names" if names is not None else "num_labels"

    def check(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        examples = _pretokenized.check_rows(task, batch, labels=labels, split=split,
                                            offset=indices[0] if indices else 0)
        if vocabulary[1] is not None:
            found = [(split, v) for e in examples for v in (e["labels"] if isinstance(e["labels"], list)
                                                            else [e["labels"]]) if v != IGNORE_INDEX]
            _pretokenized.check_range(found, vocabulary[1], given=given)
        return _columnar(examples, _pretokenized.KEYS)

    check(head, [0])  # fail before training starts
    mapped = stream.map(check, batched=True, batch_size=_BATCH, with_indices=True, remove_columns=list(head))
    return StreamingDataset(mapped), vocabulary
