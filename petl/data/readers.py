"""Read training and evaluation data into :class:`datasets.Dataset` objects.

Supported sources: local ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` files,
CoNLL files (``.txt`` / ``.conll`` / ``.iob`` / ``.bio``: one ``token ... TAG`` line
per word, a blank line between sentences, giving the columns ``tokens`` and
``tags``), a folder holding ``<split>.<ext>`` files, a ``datasets.Dataset`` or
``datasets.IterableDataset`` (passed through), a ``datasets.DatasetDict`` (the split is
picked; :func:`split_dataset_dict` picks a training and an evaluation split), a pandas
``DataFrame`` (``Dataset.from_pandas(frame, preserve_index=False)``), a list of dicts, one
per row, with the same keys (``Dataset.from_list``) and, for online users, a Hugging Face
Hub data set name (``"imdb"``, or ``"nyu-mll/glue:sst2"`` to pick a configuration).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from petl.data.clue import drop_no_gold_label
from petl.data.qa import is_squad_file, squad_rows
from petl.errors import DataError, DataFileError, UnknownFormatError, suggest

__all__ = ["CONLL_SUFFIXES", "EVAL_SPLITS", "SUFFIXES", "read_conll", "read_dataset", "split_dataset_dict"]

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv")
JSON_SUFFIXES = (".jsonl", ".json")
CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio")
SUFFIXES = TABLE_SUFFIXES + JSON_SUFFIXES + CONLL_SUFFIXES
"""Every file extension :func:`read_dataset` reads."""

# Other names data sets commonly give each split.
_SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}
EVAL_SPLITS = _SPLIT_ALIASES["validation"]
"""The splits of a ``DatasetDict`` that :func:`split_dataset_dict` evaluates on, in this order (never "test")."""
_DICTS = (datasets.DatasetDict, datasets.IterableDatasetDict)


def _split_names(split: str) -> tuple[str, ...]:
    for names in _SPLIT_ALIASES.values():
        if split in names:
            return (split,) + tuple(n for n in names if n != split)
    return (split,)


def read_dataset(source: Any, split: str = "train") -> datasets.Dataset | datasets.IterableDataset:
    """Read one split of a data set from a file, a folder, a ``datasets`` object, rows in memory or the Hub.

    Args:
        source: A path to a local file or folder; a ``datasets.Dataset`` or
            ``datasets.IterableDataset`` (returned as is); a ``datasets.DatasetDict`` or
            ``IterableDatasetDict`` (``split`` is picked); a pandas ``DataFrame``; a list of
            dicts, one per row, all with the same keys; or a Hub data set name (``"name"`` or
            ``"name:config"``) loaded with ``datasets.load_dataset``.
        split: The split to pick from a folder, a ``DatasetDict`` or the Hub.
            ``"validation"`` also finds ``valid`` / ``dev`` / ``val``.

    Returns:
        The rows as a ``datasets.Dataset`` (an ``IterableDataset`` stays one).

    Raises:
        DataFileError: The file does not exist or cannot be parsed, or the split is missing.
        UnknownFormatError: The file's extension is not one petl reads.
        DataError: An empty ``DataFrame`` or list, or rows with different keys.
    """
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return source
    if isinstance(source, _DICTS):
        return _pick_split(source, split, where=f"the {type(source).__name__}")
    if _is_dataframe(source):
        return _from_dataframe(source)
    if isinstance(source, (list, tuple)):
        return _from_rows(source)
    if not isinstance(source, (str, os.PathLike)):
        raise DataFileError(
            f"Cannot read data from a {type(source).__name__}. Pass a path to a {'/'.join(SUFFIXES)} file, a "
            "datasets.Dataset, IterableDataset or DatasetDict, a pandas DataFrame, a list of dicts (one per row), "
            "or a Hub data set name."
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, split)
    if path.is_file():
        return _read_file(path)
    text = os.fspath(source)
    if path.suffix.lower() in SUFFIXES or text.startswith((".", "/", "~")) or os.sep + os.sep in text:
        raise DataFileError(f"The data file {text!r} does not exist (looked in {path.resolve()}). Check the path.")
    return _load_from_hub(text, split)


def split_dataset_dict(splits: Mapping[str, Any], eval_data: Any = None) -> tuple[Any, Any]:
    """The training and evaluation data of a ``DatasetDict`` passed as the training data.

    Training uses its "train" (or "training") split. Evaluation uses ``eval_data`` when one
    is given, else the first of :data:`EVAL_SPLITS` (validation, valid, dev, val) it has,
    else none. A "test" split is never used without being asked for: a ``DatasetDict`` with a
    test split but no evaluation split is refused. Which splits were used is logged.

    Returns:
        ``(training split, evaluation data or None)``.

    Raises:
        DataFileError: No training split, or a test split and no evaluation split without ``eval_data``.
    """
    names = list(splits)
    listed = ", ".join(map(repr, names)) or "none"
    train = next((n for n in _SPLIT_ALIASES["train"] if n in splits), None)
    if train is None:
        raise DataFileError(
            f"The {type(splits).__name__} passed as training data has no 'train' split; its splits are {listed}."
            f"{suggest('train', names)} Pass the split to train on, e.g. "
            f"train_data=dataset_dict[{names[0] if names else 'train'!r}]."
        )
    held_out = next((n for n in EVAL_SPLITS if n in splits), None)
    if eval_data is not None:
        if held_out is not None and eval_data is not splits[held_out]:
            logger.warning("Training on the %r split of the %s; evaluating on eval_data as given, not on its %r split.",
                           train, type(splits).__name__, held_out)
        else:
            logger.info("Training on the %r split of the %s; evaluating on eval_data.", train, type(splits).__name__)
        return splits[train], eval_data
    if held_out is None and "test" in splits:
        raise DataFileError(
            f"The {type(splits).__name__} passed as training data has the splits {listed}: no validation split "
            f"({'/'.join(EVAL_SPLITS)}), and petl does not evaluate on a test split unasked. Pass "
            f"eval_data=dataset_dict['test'] if that is meant, or train_data=dataset_dict[{train!r}] to train "
            "without evaluation."
        )
    if held_out is None:
        logger.info("Training on the %r split of the %s (splits %s); it has no evaluation split (%s), so there is "
                    "no evaluation.", train, type(splits).__name__, listed, "/".join(EVAL_SPLITS))
        return splits[train], None
    logger.info("Training on the %r split of the %s and evaluating on its %r split.", train, type(splits).__name__,
                held_out)
    return splits[train], splits[held_out]


def _is_dataframe(source: Any) -> bool:
    pandas = sys.modules.get("pandas")  # a DataFrame means pandas is imported already
    return pandas is not None and isinstance(source, pandas.DataFrame)


def _from_dataframe(frame: Any) -> datasets.Dataset:
    if len(frame) == 0:
        raise DataError(
            f"The DataFrame has no rows (columns: {', '.join(map(str, frame.columns)) or 'none'}). Pass one with "
            "at least one example."
        )
    frame = frame.rename(columns=lambda c: str(c).strip())
    try:
        return datasets.Dataset.from_pandas(frame, preserve_index=False)
    except (TypeError, ValueError) as exc:  # pyarrow: a column of mixed types
        raise DataError(f"Cannot turn the DataFrame into a data set: {exc}. Give each column one type.") from exc


def _from_rows(rows: list[Any] | tuple[Any, ...]) -> datasets.Dataset:
    if not rows:
        raise DataError('The list of examples is empty. Pass at least one row, e.g. [{"text": ..., "label": ...}].')
    keys = None
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(
                f"Row {index} of the list is a {type(row).__name__} ({row!r:.80}), not a dict. Pass one dict per "
                'example, e.g. [{"text": "a fine film", "label": 1}, ...].'
            )
        if keys is None:
            keys = list(row)
        elif set(row) != set(keys):
            missing, extra = sorted(set(keys) - set(row)), sorted(set(row) - set(keys))
            raise DataError(
                f"Row {index} of the list has the keys {sorted(row)}, but row 0 has {sorted(keys)} (missing: "
                f"{missing or 'none'}; extra: {extra or 'none'}). Give every row the same keys."
            )
    try:
        return datasets.Dataset.from_list([dict(row) for row in rows])
    except (TypeError, ValueError) as exc:  # pyarrow: mixed types in a column
        raise DataError(f"Cannot build a data set from the list of rows: {exc}. Give each key one type.") from exc


def _pick_split(splits: Any, split: str, where: str) -> Any:
    for name in _split_names(split):
        if name in splits:
            return splits[name]
    raise DataFileError(
        f"{where} has no {split!r} split; it has {', '.join(map(repr, splits))}."
        f"{suggest(split, list(splits))} Pick one, e.g. pass dataset_dict[{next(iter(splits), 'train')!r}]."
    )


def _read_folder(folder: Path, split: str) -> datasets.Dataset:
    for name in _split_names(split):
        for suffix in SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return _read_file(candidate)
    found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    raise DataFileError(
        f"The folder {str(folder)!r} has no file for the {split!r} split (looked for "
        f"{'/'.join(_split_names(split))} with extension {'/'.join(SUFFIXES)}); data files found: "
        f"{', '.join(found) or 'none'}. Pass the file's path instead."
    )


def _read_file(path: Path) -> datasets.Dataset:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UnknownFormatError(
            f"Cannot read {str(path)!r}: unknown file format {suffix or '(no extension)'!r}."
            f"{suggest(suffix, SUFFIXES)} petl reads {', '.join(SUFFIXES)} (CoNLL: .txt/.conll/.iob/.bio); "
            "rename the file or load it yourself into a datasets.Dataset."
        )
    try:
        if suffix in TABLE_SUFFIXES:
            return drop_no_gold_label(_read_table(path, sep="\t" if suffix == ".tsv" else ","), repr(str(path)))
        if suffix in JSON_SUFFIXES:
            return drop_no_gold_label(_read_json(path), repr(str(path)))  # OCNLI/SNLI pairs labelled "-"
        return read_conll(path)
    except DataFileError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(
            f"Cannot read {str(path)!r}: {exc}. Check the file's permissions and that it is UTF-8 text."
        ) from exc


def _read_table(path: Path, sep: str) -> datasets.Dataset:
    import pandas as pd

    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            # TSV files of sentences (SST-2, GLUE) contain bare quote characters.
            quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
            # Keep "NA", "null", "" as text: they are words, not missing values.
            keep_default_na=False,
            encoding="utf-8",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        kind = "TSV (tab-separated)" if sep == "\t" else "CSV (comma-separated)"
        raise DataFileError(f"Cannot parse {str(path)!r} as {kind} with a header row: {exc}") from exc
    if frame.empty:
        raise DataFileError(f"{str(path)!r} has a header ({', '.join(map(str, frame.columns))}) but no rows.")
    frame.columns = [str(c).strip() for c in frame.columns]
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _read_json(path: Path) -> datasets.Dataset:
    text = path.read_text(encoding="utf-8")
    records: Any = None
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            records = None  # maybe JSON lines under a .json name
    if records is None:  # JSON lines: one object per line
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFileError(
                    f"Cannot parse line {number} of {str(path)!r} as JSON: {exc}. "
                    "Write one JSON object per line (JSON lines) or one JSON list of objects."
                ) from exc
    if is_squad_file(records):
        records = squad_rows(records)  # SQuAD's data -> paragraphs -> qas: one row per question
    if isinstance(records, dict) and not any(isinstance(v, list) for v in records.values()):
        records = [records]  # a single object
    if isinstance(records, dict) and len(records) == 1:
        (only,) = records.values()
        if isinstance(only, list) and only and all(isinstance(r, dict) for r in only):
            records = only  # {"data": [{...}, ...]}
    try:
        if isinstance(records, dict) and all(isinstance(v, list) for v in records.values()):
            dataset = datasets.Dataset.from_dict(records)  # {"column": [values...]}
        elif isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
            dataset = datasets.Dataset.from_list(records)
        else:
            raise DataFileError(
                f"{str(path)!r} holds no rows petl can read. Write JSON lines (one object such as "
                '{"text": ..., "label": ...} per line), a list of such objects, or {"column": [values...]}.'
            )
    except (TypeError, ValueError) as exc:  # pyarrow: mixed types in a column
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"Cannot build a table from {str(path)!r}: {exc}. Give each column one type.") from exc
    return dataset


def read_conll(path: str | os.PathLike) -> datasets.Dataset:
    """Read a CoNLL file: ``token [other columns...] TAG`` per line, blank line between sentences.

    The first field of a line is the word and the last its tag, so both the two-column
    form and the four-column CoNLL-2003 form (word, POS, chunk, NER) work.
    ``-DOCSTART-`` lines are skipped.

    Returns:
        A data set with the columns ``tokens`` and ``tags`` (lists of strings).

    Raises:
        DataFileError: A line has a single field, or the file has no sentences.
    """
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    tokens.append(words)
                    tags.append(labels)
                    words, labels = [], []
                continue
            if len(fields) < 2:
                raise DataFileError(
                    f"Line {number} of {os.fspath(path)!r} is {line.strip()!r}: a CoNLL line needs a word and a tag "
                    "separated by whitespace ('EU B-ORG'), with a blank line between sentences."
                )
            words.append(fields[0])
            labels.append(fields[-1])
    if words:
        tokens.append(words)
        tags.append(labels)
    if not tokens:
        raise DataFileError(f"{os.fspath(path)!r} has no sentences. A CoNLL file has 'word TAG' lines.")
    return datasets.Dataset.from_dict({"tokens": tokens, "tags": tags})


def _load_from_hub(name: str, split: str) -> datasets.Dataset:
    repo, _, config = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing, private or gated: all mean "cannot load"
        raise DataFileError(
            f"{name!r} is not a local file or folder, and loading it as a Hub data set failed: {exc}. "
            f"Pass a path to a {'/'.join(SUFFIXES)} file, or check the name (and your network)."
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):  # load_dataset returns a dict for split=None only
        return _pick_split(loaded, split, where=repr(name))
    return loaded
