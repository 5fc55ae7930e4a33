"""Data with holes: a missing label is an error naming the row and the column, never a class of
its own; a missing text is an error naming the row; an empty text is a legal (empty) input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import datasets
import pytest
from transformers import AutoTokenizer

from petl.data import DataError, LabelError, load_task_data
from petl.modeling.demo import minilm_path

CLS, SEP = 101, 102  # MiniLM's (BERT uncased) special ids


@pytest.fixture(scope="module")
def tok() -> Any:
    return AutoTokenizer.from_pretrained(minilm_path())


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    return _file(tmp_path, name, "".join(json.dumps(r) + "\n" for r in rows))


def _no_label(row: int, got: str, split: str = "training", column: str = "label") -> str:
    return (
        f"Row {row} of the {split} data (counting from 0) has no label in column {column!r} (got {got}: an empty "
        "cell, null or a missing key). Fill in its label or drop that row; every example needs one, and an empty "
        "label is not a class."
    )


@pytest.mark.parametrize(
    "name,text",
    [
        ("names.csv", "sentence,label\ngood,pos\nbad,\nok,neg\n"),  # was a third class ''
        ("ids.csv", "sentence,label\ngood,1\nbad,\nok,0\n"),  # was the classes '0', '1' and ''
        ("short.csv", "sentence,label\ngood,1\nbad\nok,0\n"),  # the row ends before its label cell
        ("names.tsv", "sentence\tlabel\ngood\tpos\nbad\t\nok\tneg\n"),
    ],
)
def test_an_empty_label_cell_is_an_error_naming_the_row_and_the_column(
    tmp_path: Path, tok: Any, name: str, text: str
) -> None:
    with pytest.raises(LabelError) as info:
        load_task_data("sequence-classification", _file(tmp_path, name, text), tokenizer=tok)
    assert str(info.value) == _no_label(1, "''")


def test_a_blank_label_and_one_missing_from_the_evaluation_data(tmp_path: Path, tok: Any) -> None:
    train = _file(tmp_path, "train.csv", "sentence,label\ngood,pos\nok,neg\n")
    blank = _file(tmp_path, "blank.csv", "sentence,label\ngood,pos\nbad, \n")
    with pytest.raises(LabelError, match=r"^Row 1 of the evaluation data \(counting from 0\) has no label in column "
                                         r"'label' \(got ' '"):
        load_task_data("sequence-classification", train, blank, tokenizer=tok)


@pytest.mark.parametrize(
    "rows", [[{"sentence": "a", "label": 1}, {"sentence": "b", "label": None}], [{"sentence": "a", "label": 1},
                                                                                  {"sentence": "b"}]],
    ids=["null", "no key"],
)
def test_a_null_or_absent_label_in_json_lines(tmp_path: Path, tok: Any, rows: list[dict[str, Any]]) -> None:
    with pytest.raises(LabelError) as info:
        load_task_data("sequence-classification", _jsonl(tmp_path, "t.jsonl", rows), tokenizer=tok)
    assert str(info.value) == _no_label(1, "None")


def test_a_nan_label_from_a_data_frame(tok: Any) -> None:
    ds = datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "stars": [1.0, 0.0, math.nan]})
    with pytest.raises(LabelError) as info:
        load_task_data("sequence-classification", ds, tokenizer=tok, label_column="stars")
    assert str(info.value) == _no_label(2, "nan", column="stars")


def test_limit_keeps_the_row_numbers(tmp_path: Path, tok: Any) -> None:
    path = _file(tmp_path, "t.csv", "sentence,label\na,x\nb,y\nc,\nd,\n")
    with pytest.raises(LabelError, match=r"^Row 2 of the training data"):
        load_task_data("sequence-classification", path, tokenizer=tok, limit=3)
    assert load_task_data("sequence-classification", path, tokenizer=tok, limit=2).label_names == ["x", "y"]


@pytest.mark.parametrize(
    "tags,message",
    [
        (["B-ORG", None], "Row 1 of the training data (counting from 0) has no tag for word 1 in column 'tags' "
                          "(got None). Give every word a tag, or drop that row."),
        (["", "O"], "Row 1 of the training data (counting from 0) has no tag for word 0 in column 'tags' (got ''). "
                    "Give every word a tag, or drop that row."),
    ],
)
def test_a_missing_word_tag(tok: Any, tags: Any, message: str) -> None:
    ds = datasets.Dataset.from_list([{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["EU", "x"], "tags": tags}])
    with pytest.raises(LabelError) as info:
        load_task_data("token-classification", ds, tokenizer=tok)
    assert str(info.value) == message
    no_tags = datasets.Dataset.from_list([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["EU"], "tags": None}])
    with pytest.raises(DataError, match=r"^Row 1 of the training data has None in column 'tags'"):
        load_task_data("token-classification", no_tags, tokenizer=tok)


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"sentence": "a", "label": 1}, {"label": 0}],
         "Row 1 of the training data (counting from 0) has no text in column 'sentence' (got None). Fill in its text "
         "or drop that row."),
        ([{"sentence": "a", "label": 1}, {"sentence": None, "label": 0}],
         "Row 1 of the training data (counting from 0) has no text in column 'sentence' (got None). Fill in its text "
         "or drop that row."),
        ([{"sentence": 4, "label": 1}, {"sentence": 5, "label": 0}],
         "Row 0 of the training data (counting from 0) has 4 (int) in the text column 'sentence'; every value must be "
         "a string. Fix or drop that row, or pick another column."),
    ],
    ids=["no key", "null", "a number"],
)
def test_a_missing_text_is_an_error_naming_the_row(tmp_path: Path, tok: Any, rows: list, message: str) -> None:
    with pytest.raises(DataError) as info:
        load_task_data("sequence-classification", _jsonl(tmp_path, "t.jsonl", rows), tokenizer=tok)
    assert str(info.value) == message


def test_a_missing_second_sentence_or_target(tok: Any) -> None:
    pairs = datasets.Dataset.from_dict({"premise": ["a", "b"], "hypothesis": ["c", None], "label": [0, 1]})
    with pytest.raises(DataError, match=r"^Row 1 of the training data .* no text in column 'hypothesis'"):
        load_task_data("sequence-classification", pairs, tokenizer=tok)
    s2s = datasets.Dataset.from_dict({"source": ["a", "b"], "target": [None, "c"]})
    with pytest.raises(DataError, match=r"^Row 0 of the training data .* no text in column 'target' \(got None\)"):
        load_task_data("seq2seq", s2s, tokenizer=tok)


def test_an_empty_text_is_a_legal_input(tmp_path: Path, tok: Any) -> None:
    # Tokenizers encode "" as just their special tokens, which a model reads like any other input.
    csv = _file(tmp_path, "t.csv", "sentence,label\n,1\nbad,0\n")
    data = load_task_data("sequence-classification", csv, tokenizer=tok)
    assert data.train[0]["input_ids"] == [CLS, SEP] and data.train[0]["labels"] == 1
    # An empty completion teaches the model to end right after the prompt: its only target is the end token.
    clm = load_task_data("causal-lm", _jsonl(tmp_path, "c.jsonl", [{"prompt": "a", "completion": ""}]), tokenizer=tok)
    assert clm.train[0]["labels"] == [-100, -100, SEP]
    s2s = load_task_data("seq2seq", _jsonl(tmp_path, "s.jsonl", [{"source": "", "target": ""}]), tokenizer=tok)
    assert s2s.train[0]["input_ids"] == [CLS, SEP] and s2s.train[0]["labels"] == [CLS, SEP]
