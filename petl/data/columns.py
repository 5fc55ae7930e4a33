"""Find the text / label / target columns of a data set and turn labels into ids.

Labels may be integers (used as ids) or strings (mapped through ``label_names``, or
through the sorted unique values found when no names are given). Integer labels
must lie in ``[0, num_labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets

from petl.errors import ColumnNotFoundError, ConfigError, DataError, LabelError, suggest

__all__ = [
    "MESSAGES_COLUMNS", "SUMMARY_COLUMNS", "Labels", "class_names", "encode_labels", "find_column",
    "find_messages_column", "is_messages", "pick_column", "text_values",
]

SUMMARY_COLUMNS = ("summary", "summaries", "highlights", "abstract", "headline")
"""Target columns that hold reference summaries: a generative evaluation scores them with ROUGE."""
MESSAGES_COLUMNS = ("messages", "conversations", "conversation", "chat", "dialog")
"""Columns tried, in order, for chat data: a list of ``{"role", "content"}`` dicts per row."""

# ``dataset`` below is anything with ``column_names`` (and ``features`` for class names) that
# returns a column's values for ``dataset[column]``: a ``datasets.Dataset``, or one batch of a
# streamed data set (see :mod:`petl.data.streaming`).


def find_column(dataset: datasets.Dataset, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that ``dataset`` has, or ``None``."""
    return next((c for c in candidates if c in dataset.column_names), None)


def is_messages(value: Any) -> bool:
    """Whether ``value`` is one conversation: a non-empty list of dicts with ``role`` and ``content``."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def find_messages_column(dataset: datasets.Dataset, chosen: str | None = None) -> str | None:
    """The chat column: ``chosen`` (or else the first of :data:`MESSAGES_COLUMNS`) when its first row
    is a conversation (:func:`is_messages`), else ``None``."""
    names = [chosen] if chosen is not None else MESSAGES_COLUMNS
    for name in names:
        if name in dataset.column_names:
            values = dataset[name]
            first = next(iter(values), None)
            if is_messages(first):
                return name
    return None


def pick_column(
    dataset: datasets.Dataset,
    chosen: str | None,
    candidates: Sequence[str],
    *,
    role: str,
    option: str,
    split: str,
) -> str:
    """The column named ``chosen``, or else the first of ``candidates`` that exists.

    Args:
        dataset: The data set.
        chosen: The column the user named, or ``None`` for the default.
        candidates: The default names, tried in order.
        role: What the column holds, for the message ("text", "label").
        option: The option that chooses it, without dashes ("text_column").
        split: "training" or "evaluation", for the message.

    Raises:
        ColumnNotFoundError: No such column; the message lists the columns found.
    """
    found = dataset.column_names
    if chosen is not None and chosen in found:
        return chosen
    if chosen is None:
        column = find_column(dataset, candidates)
        if column is not None:
            return column
        looked = f"looked for {', '.join(map(repr, candidates))}"
        hint = ""
    else:
        looked = f"{option}={chosen!r} was given"
        hint = suggest(chosen, found)
    flag = "--" + option.replace("_", "-")
    raise ColumnNotFoundError(
        f"The {split} data has no {role} column ({looked}); its columns are {', '.join(map(repr, found))}.{hint} "
        f"Choose the {role} column with {flag} NAME on the command line or {option}='NAME' in Python."
    )


def text_values(dataset: datasets.Dataset, column: str, *, split: str, offset: int = 0) -> list[str]:
    """The values of a text column, checked to be strings.

    An empty string is kept: tokenizers encode it as just their special tokens (``[CLS] [SEP]``),
    which a model reads like any other input, and an empty completion or target teaches the
    model to stop. A missing value (``None``, as JSON's ``null`` or a JSON line without the key
    reads, or a float NaN) is an error, as is any other non-string.

    Args:
        dataset: The rows.
        column: The text column.
        split: "training" or "evaluation", for messages.
        offset: The number of the first row (a streamed batch starts further on), for messages.

    Raises:
        DataError: A value is missing or not a string; the message names the row (counted from 0).
    """
    values = list(dataset[column])
    for index, value in enumerate(values, start=offset):
        if _is_missing(value):
            raise DataError(
                f"Row {index} of the {split} data (counting from 0) has no text in column {column!r} "
                f"(got {value!r}). Fill in its text or drop that row."
            )
        if not isinstance(value, str):
            raise DataError(
                f"Row {index} of the {split} data (counting from 0) has {value!r} ({type(value).__name__}) in the "
                f"text column {column!r}; every value must be a string. Fix or drop that row, or pick another column."
            )
    return values


def _is_missing(value: Any) -> bool:
    """``None`` or a float NaN (what pandas reads for an empty cell): no value at all."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return False


def _is_blank(value: Any) -> bool:
    return _is_missing(value) or (isinstance(value, str) and value.strip() == "")


def _check_no_missing(splits: dict[str, list[Any]], column: str, nested: bool, offset: int) -> None:
    """Raise a :class:`LabelError` at the first example without a label (or a word without a tag)."""
    for split, values in splits.items():
        for index, row in enumerate(values, start=offset):
            if nested:
                if _is_missing(row):
                    raise LabelError(
                        f"Row {index} of the {split} data (counting from 0) has no tags in column {column!r} "
                        f"(got {row!r}). Give every word a tag, or drop that row."
                    )
                if not isinstance(row, (list, tuple)):
                    continue  # the caller reports rows that are not lists
                word = next((i for i, tag in enumerate(row) if _is_blank(tag)), None)
                if word is not None:
                    raise LabelError(
                        f"Row {index} of the {split} data (counting from 0) has no tag for word {word} in column "
                        f"{column!r} (got {row[word]!r}). Give every word a tag, or drop that row."
                    )
            elif _is_blank(row):
                raise LabelError(
                    f"Row {index} of the {split} data (counting from 0) has no label in column {column!r} "
                    f"(got {row!r}: an empty cell, null or a missing key). Fill in its label or drop that row; "
                    "every example needs one, and an empty label is not a class."
                )


def class_names(dataset: datasets.Dataset | None, column: str) -> list[str] | None:
    """The names of a ``ClassLabel`` column (or of a sequence of ``ClassLabel``), if it is one."""
    features = getattr(dataset, "features", None)  # a stream may not know its features
    if features is None or column not in features:
        return None
    feature = features[column]
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    return list(names) if names else None


class Labels:
    """The label vocabulary of a task: ``names`` (or ``None``) and ``num_labels``."""

    def __init__(self, names: list[str] | None, num_labels: int) -> None:
        self.names = names
        self.num_labels = num_labels


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sort_key(value: str) -> tuple[int, Any]:
    # "2" before "10" when every label is a number written as text.
    return (0, int(value)) if value.lstrip("-").isdigit() else (1, value)


def encode_labels(
    splits: dict[str, list[Any]],
    *,
    column: str,
    label_names: Sequence[str] | None,
    num_labels: int | None,
    nested: bool,
    offset: int = 0,
) -> tuple[dict[str, list[Any]], Labels]:
    """Turn the labels of each split into ids, with one vocabulary for all splits.

    Args:
        splits: Split name ("training"/"evaluation") to its label values: one value per
            example, or one list per example when ``nested`` (token tags).
        column: The label column, for messages.
        label_names: The names of the ids, if known.
        num_labels: The number of classes, if known (checked against ``label_names``).
        nested: Whether each example carries a list of labels.
        offset: The number of the first row (a streamed batch starts further on), for messages.

    Returns:
        The ids per split (same nesting) and the :class:`Labels`.

    Raises:
        LabelError: A missing label (``None``, NaN, an empty or blank string: an empty CSV cell),
            labels of mixed or unusable type, unknown names, or ids out of range.
        ConfigError: ``label_names`` and ``num_labels`` disagree.
    """
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(set(label_names)) != len(label_names):
            raise ConfigError(f"label_names has duplicates: {label_names}. Give each class one distinct name.")
        if num_labels is not None and num_labels != len(label_names):
            raise ConfigError(
                f"num_labels={num_labels} but {len(label_names)} label_names were given ({label_names}); "
                "pass only one of them, or make them agree."
            )
    _check_no_missing(splits, column, nested, offset)
    flat = {s: [v for row in values for v in row] if nested else list(values) for s, values in splits.items()}
    everything = [v for values in flat.values() for v in values]
    if not everything:
        raise LabelError(f"The label column {column!r} is empty. Check that the data has labelled rows.")
    if all(isinstance(v, str) for v in everything):
        names = label_names if label_names is not None else sorted(set(everything), key=_sort_key)
        index = {name: i for i, name in enumerate(names)}
        for split, values in flat.items():
            unknown = sorted({v for v in values if v not in index})
            if unknown:
                raise LabelError(
                    f"The {split} data has labels {unknown[:10]} in column {column!r} that are not in "
                    f"label_names {names}.{suggest(unknown[0], names)} Add them to label_names or fix the data."
                )
        encode = index.__getitem__
        labels = Labels(list(names), len(names))
    elif all(_is_int(v) for v in everything):
        size = len(label_names) if label_names is not None else num_labels
        if size is None:
            size = max(max(everything) + 1, 2)
        for split, values in flat.items():
            bad = sorted({v for v in values if not 0 <= v < size})
            if bad:
                given = f"label_names {label_names}" if label_names is not None else f"num_labels={size}"
                raise LabelError(
                    f"The {split} data has labels {bad[:10]} in column {column!r}, outside [0, {size}) for "
                    f"{given}. Labels must be class ids 0..{size - 1}: fix or drop those rows"
                    + ("" if label_names is not None else ", or pass the right num_labels")
                    + "."
                )
        encode = int
        labels = Labels(label_names, size)
    else:
        kinds = sorted({type(v).__name__ for v in everything})
        example = next(v for v in everything if not isinstance(v, str) and not _is_int(v))
        raise LabelError(
            f"The label column {column!r} holds values of type {', '.join(kinds)} (e.g. {example!r}); labels must "
            "be all integers (class ids) or all strings (class names). Regression targets are not supported; "
            "pick the right column with --label-column / label_column=."
        )
    ids = {
        split: [[encode(v) for v in row] for row in values] if nested else [encode(v) for v in values]
        for split, values in splits.items()
    }
    return ids, labels
