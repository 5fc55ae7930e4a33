"""Read training and evaluation data into :class:`datasets.Dataset` objects.

Supported sources: local ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` files,
CoNLL files (``.txt`` / ``.conll`` / ``.iob`` / ``.bio``: one ``token ... TAG`` line
per word, a blank line between sentences, giving the columns ``tokens`` and
``tags``), a folder holding ``<split>.<ext>`` files, a ``datasets.Dataset``
(passed through), a ``datasets.DatasetDict`` (the split is picked) and, for online
users, a Hugging Face Hub data set name (``"imdb"``, or ``"nyu-mll/glue:sst2"`` to
pick a configuration).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import datasets

from petl.errors import DataFileError, UnknownFormatError, suggest

__all__ = ["CONLL_SUFFIXES", "SUFFIXES", "read_conll", "read_dataset"]

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


def _split_names(split: str) -> tuple[str, ...]:
    for names in _SPLIT_ALIASES.values():
        if split in names:
            return (split,) + tuple(n for n in names if n != split)
    return (split,)


def read_dataset(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict, split: str = "train"
) -> datasets.Dataset:
    """Read one split of a data set from a file, a folder, a ``datasets`` object or the Hub.

    Args:
        source: A path to a local file or folder, a ``datasets.Dataset`` (returned as
            is), a ``datasets.DatasetDict`` (``split`` is picked), or a Hub data set
            name (``"name"`` or ``"name:config"``) loaded with ``datasets.load_dataset``.
        split: The split to pick from a folder, a ``DatasetDict`` or the Hub.
            ``"validation"`` also finds ``valid`` / ``dev`` / ``val``.

    Returns:
        The rows as a ``datasets.Dataset``.

    Raises:
        DataFileError: The file does not exist or cannot be parsed, or the split is missing.
        UnknownFormatError: The file's extension is not one petl reads.
    """
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        return _pick_split(source, split, where="the DatasetDict")
    if not isinstance(source, (str, os.PathLike)):
        raise DataFileError(
            f"Cannot read data from a {type(source).__name__}. Pass a path to a "
            f"{'/'.join(SUFFIXES)} file, a datasets.Dataset or DatasetDict, or a Hub data set name."
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


def _pick_split(splits: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
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
            return _read_table(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in JSON_SUFFIXES:
            return _read_json(path)
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
