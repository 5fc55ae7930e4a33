"""Datasets, tokenisation and collators for petl's trainer.

:func:`load_task_data` reads the training and evaluation data (local CSV / TSV /
JSON lines / CoNLL files, ``datasets`` objects, pandas DataFrames, lists of dicts or
Hub names, see :func:`read_dataset`), finds the columns a task needs, turns labels
into ids and tokenises every example, returning a :class:`TaskData` whose
``collator`` pads batches. Data that is already tokenised (an ``input_ids`` column)
is checked and used as it is (:mod:`petl.data.pretokenized`); a
``datasets.IterableDataset`` is read and tokenised on the fly
(:mod:`petl.data.streaming`). Supported tasks (:data:`TASKS`):

* ``sequence-classification``: one sentence or a sentence pair -> one class;
* ``token-classification``: words -> one tag per word (NER), tags aligned to the
  first sub-token of each word;
* ``causal-lm``: prompt -> completion, loss on the completion only (or plain text,
  loss on every token);
* ``seq2seq``: source text -> target text;
* ``question-answering``: question + context -> the answer's span, long contexts cut into
  overlapping windows (SQuAD-format data, see :mod:`petl.data.qa`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from petl.data import pretokenized as _pretokenized
from petl.data import streaming as _streaming
from petl.data.collate import Collator, TokenizedDataset, pad_id
from petl.data.columns import SUMMARY_COLUMNS, class_names, find_column
from petl.data.prepare import prepare_splits
from petl.data.readers import read_conll, read_dataset, split_dataset_dict
from petl.data.streaming import StreamingDataset
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
    "StreamingDataset",
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


@dataclass
class TaskData:
    """Tokenised training and evaluation data for one task, and how to batch it."""

    train: torch.utils.data.Dataset | torch.utils.data.IterableDataset | None
    """Training examples: dicts of Python ints / lists, tokenised and unpadded; a
    :class:`StreamingDataset` (no length) for a streamed training set."""
    eval: torch.utils.data.Dataset | None
    """Evaluation examples, like ``train``; ``None`` when no evaluation data was given."""
    collator: Callable[[list[dict]], dict[str, torch.Tensor]]
    """Pads a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors
    (and ``token_type_ids`` when the tokenizer gives them); labels are padded with -100."""
    task: str
    """One of :data:`TASKS`."""
    num_labels: int | None
    """The number of classes (classification tasks), else ``None`` (also for a stream of integer
    labels without ``num_labels`` / ``label_names``: the model's head decides)."""
    label_names: list[str] | None
    """The name of each class id (e.g. ``["negative", "positive"]`` or NER tags), or ``None``
    when the labels were integers without names."""
    tokenizer: Any = None
    """The tokenizer that read the text (``None`` for pre-tokenized data without one): it decodes
    generated text in a generative evaluation."""
    target_column: str | None = None
    """The completion / target column of a causal-LM or seq2seq data set when it was named or holds
    reference summaries (:data:`~petl.data.columns.SUMMARY_COLUMNS`): such data is scored with ROUGE."""


_Source = str | os.PathLike | datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict | Any
_Vocabulary = tuple[list[str] | None, int | None]
_DICTS = (datasets.DatasetDict, datasets.IterableDatasetDict)
_TEXT_OPTIONS = ("text_column", "text_pair_column", "target_column")


def load_task_data(
    task: str,
    train: _Source | None,
    eval: _Source | None = None,
    *,
    tokenizer: Any = None,
    max_length: int = 128,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    target_column: str | None = None,
    label_names: Sequence[str] | None = None,
    limit: int | None = None,
    num_labels: int | None = None,
    pad_token_id: int | None = None,
    doc_stride: int = 128,
    qa_scoring: str = "auto",
) -> TaskData:
    """Read, check and tokenise the data of a task.

    ``train`` and ``eval`` may each be:

    * a path to a CSV / TSV / JSON lines / JSON / CoNLL file, or a folder of ``<split>.<ext>``
      files, or a Hub data set name (see :func:`read_dataset`);
    * a ``datasets.Dataset``;
    * a pandas ``DataFrame`` or a list of dicts, one per row, all with the same keys (e.g.
      ``[{"text": "a fine film", "label": 1}, ...]``), turned into a ``datasets.Dataset``;
    * a ``datasets.DatasetDict``. As ``train`` it gives its "train" split for training and,
      unless ``eval`` is given, its first "validation" / "valid" / "dev" / "val" split for
      evaluation (logged). A "test" split is never evaluated on unasked: a ``DatasetDict``
      with "test" but no validation split is refused (pass ``eval=dataset_dict["test"]`` if
      that is meant). As ``eval`` its validation split is read;
    * pre-tokenized data: any of the above with an ``input_ids`` column (and ``attention_mask``,
      ``token_type_ids``, ``labels`` or ``label``) is checked row by row and used as it is, with
      no tokenizer needed, nothing truncated and other columns dropped (see
      :mod:`petl.data.pretokenized`). Both splits must then be pre-tokenized;
    * for ``train`` only, a ``datasets.IterableDataset`` (a stream), raw or pre-tokenized,
      read and tokenised on the fly (``stream.map``; see :mod:`petl.data.streaming`). Train
      on it with ``TrainConfig(max_steps=...)``: a stream has no length to count epochs in.
      ``limit`` takes its first rows; string labels need ``label_names``.

    Args:
        task: One of :data:`TASKS`.
        train: Training data (any of the forms above), or ``None``.
        eval: Evaluation data (any of the forms above but a stream), or ``None``.
        tokenizer: A Hugging Face tokenizer (fast tokenizers are needed for token
            classification); needed for raw text, optional for pre-tokenized data (its pad id
            pads the batches).
        max_length: Truncate every sequence petl tokenises to this many tokens.
        text_column: The text column ("sentence"/"text" by default), the words column for
            token classification ("tokens"), the prompt column for causal LM ("prompt",
            else a plain "text" column), the source column for seq2seq ("source"/"input").
        text_pair_column: The second sentence of sentence pairs (found automatically
            for sentence1/sentence2, premise/hypothesis, question1/question2, question/sentence).
        label_column: The label column ("label"/"labels"; "ner_tags"/"tags" for token
            classification; "labels"/"label" for pre-tokenized data).
        target_column: The completion (causal LM) or target (seq2seq) column.
        label_names: The class names in id order. String labels are mapped through them;
            integer labels are checked to be below ``len(label_names)``. By default the
            names of a ``ClassLabel`` column, else the sorted unique string labels.
        limit: Keep only the first ``limit`` examples of each split (quick runs).
        num_labels: The number of classes, to check integer labels against when no
            ``label_names`` are given (default: the largest label + 1).
        pad_token_id: The id that pads the ``input_ids`` of pre-tokenized data when no
            ``tokenizer`` is given (``petl.train`` passes the model config's ``pad_token_id``).
        doc_stride: Question answering: the context tokens consecutive windows share.
        qa_scoring: Question answering: ``"squad"``, ``"cmrc2018"`` or ``"auto"`` (CMRC 2018 when
            most evaluation contexts hold CJK characters), see :mod:`petl.metrics.qa`.

    Returns:
        The tokenised :class:`TaskData`.

    Raises:
        UnknownTaskError: ``task`` is not one of :data:`TASKS`.
        ColumnNotFoundError: A needed column is missing; the message lists those found.
        LabelError: Labels outside ``label_names`` / ``num_labels``, or of unusable type.
        DataError: Unusable rows (the message names the row and column), an empty DataFrame or
            list, rows with different keys, a streamed evaluation set, or a mix of raw and
            pre-tokenized splits.
        DataFileError, UnknownFormatError: A file that cannot be read, or a ``DatasetDict``
            without the splits needed.
        ConfigError: Invalid ``max_length`` / ``limit``, no data at all, raw text without a
            tokenizer, or pre-tokenized data without a pad id.
    """
    check_task(task)
    if max_length < 1:
        raise ConfigError(f"max_length must be a positive number of tokens, got {max_length}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of examples or None, got {limit}.")
    if train is None and eval is None:
        raise ConfigError("No data: pass a training set (train=...), an evaluation set (eval=...) or both.")
    if isinstance(train, _DICTS):
        train, eval = split_dataset_dict(train, eval)
    splits = _read_splits(train, eval, limit)
    options = dict(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                   target_column=target_column, label_names=label_names, num_labels=num_labels)
    if task == "question-answering":
        options.update(doc_stride=doc_stride, qa_scoring=qa_scoring)
    forms = {n: _pretokenized.is_pretokenized(_column_names(d, n)) for n, d in splits.items()}
    if len(set(forms.values())) > 1:
        done = next(n for n, pre in forms.items() if pre)
        raw = next(n for n, pre in forms.items() if not pre)
        raise DataError(
            f"The {done} data is pre-tokenized (it has an input_ids column) but the {raw} data is raw text. "
            "Tokenise both splits the same way, or neither (then petl tokenises them)."
        )
    if any(forms.values()):
        given = [name for name in _TEXT_OPTIONS if options[name] is not None]
        if given:
            raise ConfigError(
                f"{', '.join(f'{n}={options[n]!r}' for n in given)} chooses text to tokenise, but the data is "
                "pre-tokenized (it has an input_ids column) and is used as it is. Drop the option, or drop the "
                "input_ids column to have petl tokenise the text."
            )
        pad = pad_id(tokenizer) if tokenizer is not None else pad_token_id
        if pad is None:
            raise ConfigError(
                "Pre-tokenized data without a tokenizer needs a pad id for its batches, and the model's config has "
                "no pad_token_id: pass tokenizer= (its pad token is used), or set model.config.pad_token_id."
            )
        train_set, eval_set, (names, size) = _from_pretokenized(task, splits, options)
    else:
        if tokenizer is None:
            raise ConfigError(
                "Raw data needs the model's tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...), or pass "
                "pre-tokenized data (input_ids, attention_mask and labels columns), or a TaskData prepared with "
                "petl.data.load_task_data."
            )
        pad = pad_id(tokenizer)
        train_set, eval_set, (names, size) = _from_text(task, splits, tokenizer, max_length, options)
    for name, rows in (("training", train_set), ("evaluation", eval_set)):
        if isinstance(rows, TokenizedDataset):
            logger.info("%s data: %d %s examples", name, len(rows), task)
        elif rows is not None:
            logger.info("%s data: a stream of %s examples, read as training goes", name, task)
    target = target_column
    if target is None and task in ("causal-lm", "seq2seq") and not any(forms.values()):
        target = find_column(next(iter(splits.values())), SUMMARY_COLUMNS) if splits else None
    return TaskData(train=train_set, eval=eval_set, collator=Collator(pad), task=task, num_labels=size,
                    label_names=names, tokenizer=tokenizer, target_column=target)


def _read_splits(train: Any, eval: Any, limit: int | None) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for name, source, split in (("training", train, "train"), ("evaluation", eval, "validation")):
        if source is None:
            continue
        dataset = read_dataset(source, split=split)
        if isinstance(dataset, datasets.IterableDataset):
            if name == "evaluation":
                raise DataError(
                    "The evaluation data is a stream (datasets.IterableDataset), but evaluation reads its whole set "
                    "every time. Pass a map-style slice of it, e.g. eval_data=datasets.Dataset.from_list("
                    "list(stream.take(1000)))."
                )
            splits[name] = dataset.take(limit) if limit is not None else dataset
        else:
            splits[name] = dataset.select(range(limit)) if limit is not None and len(dataset) > limit else dataset
    return splits


def _column_names(dataset: Any, split: str) -> list[str]:
    if isinstance(dataset, datasets.IterableDataset):
        return _streaming.column_names(dataset, split)
    return list(dataset.column_names)


def _from_text(
    task: str, splits: Mapping[str, Any], tokenizer: Any, max_length: int, options: dict[str, Any]
) -> tuple[Any, TokenizedDataset | None, _Vocabulary]:
    """Tokenise raw splits: whole, or the training stream on the fly and the evaluation set with its columns."""
    stream = splits.get("training")
    if isinstance(stream, datasets.IterableDataset):
        train_set, vocabulary, fixed = _streaming.tokenize_stream(
            task, stream, tokenizer=tokenizer, max_length=max_length, options=options)
        eval_set = None
        if "evaluation" in splits:
            examples, _, _ = prepare_splits(task, {"evaluation": splits["evaluation"]}, tokenizer, max_length, **fixed)
            eval_set = TokenizedDataset(examples["evaluation"])
        return train_set, eval_set, vocabulary
    examples, labels, _ = prepare_splits(task, splits, tokenizer, max_length, **options)
    datasets_ = {n: rows if isinstance(rows, TokenizedDataset) else TokenizedDataset(rows)  # QA keeps its windows
                 for n, rows in examples.items()}
    vocabulary = (labels.names, labels.num_labels) if labels is not None else (None, None)
    return datasets_.get("training"), datasets_.get("evaluation"), vocabulary


def _from_pretokenized(
    task: str, splits: Mapping[str, Any], options: dict[str, Any]
) -> tuple[Any, TokenizedDataset | None, _Vocabulary]:
    """Check pre-tokenized splits and keep their input_ids / attention_mask / token_type_ids / labels."""
    label_names, num_labels = options["label_names"], options["num_labels"]
    train_set: Any = None
    examples: dict[str, list[dict[str, Any]]] = {}
    vocabulary: _Vocabulary = (None, None)
    for name, dataset in splits.items():
        if isinstance(dataset, datasets.IterableDataset):
            train_set, vocabulary = _streaming.pretokenized_stream(
                task, dataset, label_column=options["label_column"], label_names=label_names, num_labels=num_labels)
            continue
        dataset = dataset.with_format(None)
        column = _pretokenized.label_column(task, dataset.column_names, options["label_column"], split=name)
        if label_names is None and column is not None:
            label_names = class_names(dataset, column)
        dropped = [c for c in dataset.column_names if c not in _pretokenized.KEYS and c != column]
        if dropped:
            logger.info("Pre-tokenized %s data: dropping the columns %s.", name, ", ".join(map(repr, dropped)))
        examples[name] = _pretokenized.check_rows(task, dataset, labels=column, split=name)
    if train_set is None:
        labels = _pretokenized.label_vocabulary(task, examples, label_names=label_names, num_labels=num_labels)
        vocabulary = (labels.names, labels.num_labels) if labels is not None else (None, None)
        train_set = TokenizedDataset(examples["training"]) if "training" in examples else None
    elif vocabulary[1] is not None and "evaluation" in examples:
        found = [("evaluation", v) for row in examples["evaluation"]
                 for v in (row["labels"] if isinstance(row["labels"], list) else [row["labels"]]) if v != IGNORE_INDEX]
        _pretokenized.check_range(found, vocabulary[1], given="label_names" if vocabulary[0] else "num_labels")
    eval_set = TokenizedDataset(examples["evaluation"]) if "evaluation" in examples else None
    return train_set, eval_set, vocabulary
