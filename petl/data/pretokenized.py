"""Data that is already tokenised: rows of ``input_ids`` (and ``attention_mask``,
``token_type_ids``, ``labels``) are used as they are, after a check of every row.

What each row must hold:

* ``input_ids``: a non-empty list of token ids (non-negative ints);
* ``attention_mask`` (optional; all ones when absent) and ``token_type_ids`` (optional):
  lists of ints as long as ``input_ids`` (the mask of 0s and 1s);
* ``labels`` (or ``label``, or the column named by ``label_column``): one class id per row
  for sequence classification; a list as long as ``input_ids`` for token classification
  and causal LM; the target ids for seq2seq. -100 marks a position (or, for sequence
  classification, a row) without loss. Causal LM may leave labels out: the model then
  learns every token (``labels = input_ids``; padding is never learned).

Other columns (raw ``text``, ``idx``, ...) are dropped. Nothing is truncated: ``max_length``
applies to text that petl tokenises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from petl.data.columns import Labels
from petl.errors import ColumnNotFoundError, DataError, LabelError
from petl.tasks import CLASSIFICATION_TASKS, IGNORE_INDEX

__all__ = ["KEYS", "check_rows", "is_pretokenized", "label_column", "label_vocabulary"]

KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
"""The columns kept, in this order (the order petl's own tokenisation writes them)."""


def is_pretokenized(column_names: Sequence[str]) -> bool:
    """Whether rows with these columns are already tokenised (they have ``input_ids``)."""
    return "input_ids" in column_names


def label_column(task: str, column_names: Sequence[str], chosen: str | None, *, split: str) -> str | None:
    """The column holding the labels: ``chosen``, else ``labels``, else ``label``; ``None`` for causal
    LM without one (it learns its inputs).

    Raises:
        ColumnNotFoundError: No such column, for a task that needs labels.
    """
    if chosen is not None and chosen in column_names:
        return chosen
    if chosen is None:
        found = next((c for c in ("labels", "label") if c in column_names), None)
        if found is not None or task == "causal-lm":
            return found
    wanted = f"label_column={chosen!r} was given" if chosen is not None else "looked for 'labels' and 'label'"
    raise ColumnNotFoundError(
        f"The pre-tokenized {split} data has input_ids but no label column ({wanted}); its columns are "
        f"{', '.join(map(repr, column_names))}. Add a 'labels' column (a class id per row for sequence "
        "classification, a list aligned with input_ids for token classification, target ids for seq2seq), or "
        "choose it with label_column='NAME'."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _where(index: int, split: str, column: str) -> str:
    return f"Row {index} of the pre-tokenized {split} data (counting from 0), column {column!r},"


def _ids(value: Any, index: int, split: str, column: str, *, length: int | None, labels: bool) -> list[int]:
    """``value`` checked to be a list of ids (``labels``: -100 allowed) of ``length`` entries (``None``: any)."""
    kind = "label ids (ints, -100 for no loss)" if labels else "token ids (non-negative ints)"
    error = LabelError if labels else DataError
    if not isinstance(value, (list, tuple)):
        raise error(f"{_where(index, split, column)} holds {value!r} ({type(value).__name__}); it must be a list of "
                    f"{kind}. Fix that row, or drop the column to have petl tokenise the text.")
    bad = next((v for v in value if not _is_int(v) or (v < 0 and not (labels and v == IGNORE_INDEX))), None)
    if bad is not None:
        raise error(f"{_where(index, split, column)} holds {bad!r} in {list(value)[:8]}...; it must be a list of "
                    f"{kind}. Fix that row.")
    if length is not None and len(value) != length:
        raise error(f"{_where(index, split, column)} has {len(value)} entries but input_ids has {length}; it must be "
                    "aligned with input_ids (one entry per token). Fix that row.")
    if length is None and not value:
        raise error(f"{_where(index, split, column)} is empty; it needs at least one id. Drop that row.")
    return list(value)


def check_rows(
    task: str, rows: Mapping[str, Sequence[Any]], *, labels: str | None, split: str, offset: int = 0
) -> list[dict[str, Any]]:
    """Check pre-tokenized rows and return them as examples with the :data:`KEYS` petl uses.

    Args:
        task: One of :data:`petl.tasks.TASKS`.
        rows: Column name to the values of every row (a ``datasets.Dataset`` or a batch).
        labels: The label column (see :func:`label_column`), or ``None`` to learn ``input_ids``.
        split: "training" or "evaluation", for messages.
        offset: The number of the first row, for messages.

    Raises:
        DataError: ``input_ids``, ``attention_mask`` or ``token_type_ids`` of a row are unusable.
        LabelError: The labels of a row are unusable; the message names the row and column.
    """
    names = list(getattr(rows, "column_names", None) or rows.keys())
    inputs = list(rows["input_ids"])
    extra = {key: list(rows[key]) for key in ("attention_mask", "token_type_ids") if key in names}
    targets = list(rows[labels]) if labels is not None else None
    examples = []
    for position, input_ids in enumerate(inputs):
        index = offset + position
        example = {"input_ids": _ids(input_ids, index, split, "input_ids", length=None, labels=False)}
        length = len(example["input_ids"])
        for key, values in extra.items():
            example[key] = _ids(values[position], index, split, key, length=length, labels=False)
        if "attention_mask" not in example:
            example["attention_mask"] = [1] * length
        elif any(v not in (0, 1) for v in example["attention_mask"]):
            raise DataError(f"{_where(index, split, 'attention_mask')} holds values other than 0 and 1. Fix that row.")
        example = {key: example[key] for key in KEYS if key in example}
        if targets is None:
            example["labels"] = list(example["input_ids"])
        else:
            example["labels"] = _label(task, targets[position], index, split, labels, length)
        examples.append(example)
    return examples


def _label(task: str, value: Any, index: int, split: str, column: str, length: int) -> Any:
    if task == "sequence-classification":
        if not _is_int(value) or (value < 0 and value != IGNORE_INDEX):
            raise LabelError(
                f"{_where(index, split, column)} holds {value!r} ({type(value).__name__}); sequence classification "
                "needs one class id per row (an int from 0, or -100 to skip the row). Fix that row."
            )
        return value
    aligned = task in ("token-classification", "causal-lm")
    return _ids(value, index, split, column, length=length if aligned else None, labels=True)


def label_vocabulary(
    task: str, examples: Mapping[str, list[dict[str, Any]]], *, label_names: Sequence[str] | None,
    num_labels: int | None,
) -> Labels | None:
    """The classes of classification examples (``None`` for LM tasks): ``label_names`` or
    ``num_labels`` when given, else the largest label + 1 (at least 2).

    Raises:
        LabelError: A label is not below the number of classes.
    """
    if task not in CLASSIFICATION_TASKS:
        return None
    names = [str(name) for name in label_names] if label_names is not None else None
    size = len(names) if names is not None else num_labels
    found = [
        (split, label)
        for split, rows in examples.items()
        for row in rows
        for label in (row["labels"] if isinstance(row["labels"], list) else [row["labels"]])
        if label != IGNORE_INDEX
    ]
    if size is None:
        size = max([label for _, label in found] + [1]) + 1
    check_range(found, size, given="label_names" if names is not None else "num_labels")
    return Labels(names, size)


def check_range(found: Sequence[tuple[str, int]], size: int, *, given: str) -> None:
    """Raise a :class:`LabelError` for a (split, label) pair with a label of ``size`` or more."""
    bad = next(((split, label) for split, label in found if label >= size), None)
    if bad is not None:
        raise LabelError(
            f"The pre-tokenized {bad[0]} data has label {bad[1]}, outside [0, {size}) for the {size} classes of "
            f"{given}. Labels must be class ids 0..{size - 1} (or -100): fix the data, or pass the right {given}."
        )
