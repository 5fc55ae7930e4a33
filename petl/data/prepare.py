"""Per task: choose the columns of raw rows, turn their labels into ids and tokenise them.

:func:`prepare_splits` works on whole splits (``datasets.Dataset`` objects) and on one
batch of a streamed data set alike (anything with ``column_names``, ``features`` and
``rows[column]``), so map-style and streamed data go through the same code. It returns
the columns it used, which a stream fixes after its first batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from petl.data import tokenize as _tokenize
from petl.data.columns import (
    Labels,
    class_names,
    encode_labels,
    find_column,
    find_messages_column,
    pick_column,
    text_values,
)
from petl.errors import ColumnNotFoundError, DataError

__all__ = ["COLUMN_OPTIONS", "prepare_splits"]

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

COLUMN_OPTIONS = ("text_column", "text_pair_column", "label_column", "target_column")
"""The options that choose columns; :func:`prepare_splits` returns the value it used for each."""

_Splits = Mapping[str, Any]
_Examples = dict[str, list[dict[str, Any]]]
_Result = tuple[_Examples, Labels | None, dict[str, str | None]]


def prepare_splits(
    task: str, splits: _Splits, tokenizer: Any, max_length: int, *, offset: int = 0, **options: Any
) -> _Result:
    """Tokenise every split of ``task`` with one label vocabulary.

    Args:
        task: One of :data:`petl.tasks.TASKS`.
        splits: "training" / "evaluation" to the rows (a ``datasets.Dataset`` or a batch view).
        tokenizer: The Hugging Face tokenizer.
        max_length: Truncate every sequence to this many tokens.
        offset: The number of the first row, for messages (a streamed batch starts further on).
        **options: ``text_column``, ``text_pair_column``, ``label_column``, ``target_column``,
            ``label_names``, ``num_labels`` of :func:`petl.data.load_task_data`.

    Returns:
        The tokenised examples per split, the :class:`Labels` (``None`` for LM tasks) and the
        column chosen for each of :data:`COLUMN_OPTIONS` (``None`` when unused).
    """
    prepare = {
        "sequence-classification": _sequence_classification,
        "token-classification": _token_classification,
        "causal-lm": _causal_lm,
        "seq2seq": _seq2seq,
        "question-answering": _question_answering,
    }[task]
    return prepare(splits, tokenizer, max_length, offset=offset, **options)


def _question_answering(splits: _Splits, tokenizer: Any, max_length: int, **options: Any) -> _Result:
    from petl.data.qa import prepare_question_answering  # windows, offsets and span labels

    return prepare_question_answering(splits, tokenizer, max_length, **options)


def _first(splits: _Splits) -> tuple[str, Any]:
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


def _used(text: str | None = None, pair: str | None = None, label: str | None = None,
          target: str | None = None) -> dict[str, str | None]:
    return {"text_column": text, "text_pair_column": pair, "label_column": label, "target_column": target}


def _sequence_classification(
    splits: _Splits, tokenizer: Any, max_length: int, *, offset: int, text_column: str | None,
    text_pair_column: str | None, label_column: str | None, label_names: Sequence[str] | None,
    num_labels: int | None, **_: Any,
) -> _Result:
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
        offset=offset,
    )
    examples = {
        n: _tokenize.sequence_classification(
            tokenizer,
            text_values(d, text, split=n, offset=offset),
            text_values(d, pair_column, split=n, offset=offset) if pair_column else None,
            ids[n],
            max_length=max_length,
            desc=f"Tokenising {n} data",
        )
        for n, d in splits.items()
    }
    return examples, labels, _used(text, pair_column, label)


def _token_classification(
    splits: _Splits, tokenizer: Any, max_length: int, *, offset: int, text_column: str | None,
    label_column: str | None, label_names: Sequence[str] | None, num_labels: int | None, **_: Any,
) -> _Result:
    _, first = _first(splits)
    words = _columns(splits, text_column, _WORDS, role="tokens (words)", option="text_column")
    tags = _columns(splits, label_column, _TAGS, role="tag", option="label_column")
    names = label_names if label_names is not None else class_names(first, tags)
    values = {n: _word_lists(d, tags, split=n, offset=offset) for n, d in splits.items()}
    ids, labels = encode_labels(values, column=tags, label_names=names, num_labels=num_labels, nested=True,
                                offset=offset)
    examples = {
        n: _tokenize.token_classification(
            tokenizer, _word_lists(d, words, split=n, offset=offset), ids[n], max_length=max_length,
            desc=f"Tokenising {n} data", offset=offset,
        )
        for n, d in splits.items()
    }
    return examples, labels, _used(words, label=tags)


def _word_lists(dataset: Any, column: str, *, split: str, offset: int) -> list[list[Any]]:
    """The values of a per-word column, checked to be lists (not text, which would split into characters)."""
    rows = list(dataset[column])
    for index, row in enumerate(rows, start=offset):
        if not isinstance(row, (list, tuple)):
            raise DataError(
                f"Row {index} of the {split} data has {row!r} in column {column!r}, but token classification needs "
                "a list per row (one entry per word). Use a CoNLL file ('word TAG' lines) or JSON lines with lists, "
                'e.g. {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}.'
            )
    return [list(row) for row in rows]


def _causal_lm(
    splits: _Splits, tokenizer: Any, max_length: int, *, offset: int, text_column: str | None,
    target_column: str | None, **_: Any,
) -> _Result:
    _, first = _first(splits)
    chat = find_messages_column(first, text_column) if target_column is None else None
    if chat is not None:  # conversations: the chat template, the loss on the assistant turns
        from petl.data.chat import prepare_chat

        return prepare_chat(splits, tokenizer, max_length, column=chat, offset=offset)
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
            text_values(d, prompt, split=n, offset=offset) if prompt is not None else None,
            text_values(d, text, split=n, offset=offset),
            max_length=max_length,
            desc=f"Tokenising {n} data",
        )
        for n, d in splits.items()
    }
    return examples, None, _used(prompt if prompt is not None else text, target=target)


def _seq2seq(
    splits: _Splits, tokenizer: Any, max_length: int, *, offset: int, text_column: str | None,
    target_column: str | None, **_: Any,
) -> _Result:
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
            text_values(d, source, split=n, offset=offset),
            text_values(d, target, split=n, offset=offset),
            max_length=max_length,
            desc=f"Tokenising {n} data",
        )
        for n, d in splits.items()
    }
    return examples, None, _used(source, target=target)
