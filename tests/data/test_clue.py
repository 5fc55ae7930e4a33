"""The CLUE classification sets (TNEWS, EPRSTMT, OCNLI) through petl's normal data path.

OCNLI's pairs without a gold label (``"-"``) are dropped when the file is read, with a
logged count; TNEWS needs ``label_column="label_desc"``; EPRSTMT needs nothing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from petl.bench.config import load_config
from petl.data import load_task_data, read_dataset
from petl.data.clue import drop_no_gold_label
from petl.modeling.demo import minilm_path

ROOT = Path(__file__).resolve().parents[2]
CLUE = ROOT.parent / "shared" / "data" / "clue"
TASK = "sequence-classification"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(minilm_path())  # BERT WordPiece: one token per CJK character


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


PAIRS = [
    {"sentence1": "身上裹一件棉大衣", "sentence2": "身上至少一件衣服", "label": "entailment"},
    {"sentence1": "他走了", "sentence2": "他还在", "label": "-"},
    {"sentence1": "天很冷", "sentence2": "天很热", "label": "contradiction"},
    {"sentence1": "她笑了", "sentence2": "她很开心", "label": "neutral"},
    {"sentence1": "下雨了", "sentence2": "地是湿的", "label": "-"},
]


def test_pairs_labelled_dash_are_dropped_with_a_logged_count(tmp_path: Path, caplog) -> None:
    path = jsonl(tmp_path / "dev.json", PAIRS)
    with caplog.at_level(logging.INFO, logger="petl.data.clue"):
        rows = read_dataset(path)
    assert rows["sentence1"] == ["身上裹一件棉大衣", "天很冷", "她笑了"]
    assert "Dropped 2 of 5 rows" in caplog.text and "'-'" in caplog.text


def test_the_dropped_rows_never_become_a_class(tmp_path: Path, tok) -> None:
    train = jsonl(tmp_path / "train.json", PAIRS)
    dev = jsonl(tmp_path / "dev.json", PAIRS[:3])
    data = load_task_data(TASK, train, dev, tokenizer=tok, max_length=32)
    assert data.label_names == ["contradiction", "entailment", "neutral"] and data.num_labels == 3
    assert [e["labels"] for e in data.train] == [1, 0, 2] and [e["labels"] for e in data.eval] == [1, 0]
    first = data.train[0]["input_ids"]  # a sentence pair: [CLS] a [SEP] b [SEP]
    assert first.count(tok.sep_token_id) == 2
    assert first == tok("身上裹一件棉大衣", "身上至少一件衣服")["input_ids"]


def test_dash_is_an_ordinary_label_outside_sentence_pair_data(tmp_path: Path) -> None:
    rows = [{"sentence": "好", "label": "-"}, {"sentence": "坏", "label": "bad"}]
    assert read_dataset(jsonl(tmp_path / "single.json", rows))["label"] == ["-", "bad"]
    tsv = tmp_path / "pairs.tsv"  # tables go through the same rule (MultiNLI's gold_label)
    tsv.write_text("premise\thypothesis\tgold_label\na\tb\t-\nc\td\tneutral\n", encoding="utf-8")
    assert read_dataset(tsv)["gold_label"] == ["neutral"]


def test_a_data_set_without_dashes_is_returned_as_it_is(tmp_path: Path) -> None:
    rows = read_dataset(jsonl(tmp_path / "ok.json", [PAIRS[0], PAIRS[2]]))
    assert drop_no_gold_label(rows) is rows


@pytest.mark.real_data
def test_ocnli_dev_has_2950_gold_pairs_in_three_classes(tok) -> None:
    raw = [json.loads(line) for line in (CLUE / "ocnli" / "dev.json").read_text(encoding="utf-8").splitlines()]
    expected = Counter(r["label"] for r in raw if r["label"] != "-")  # the README: 50 rows carry "-"
    assert len(raw) - sum(expected.values()) == 50
    data = load_task_data(TASK, CLUE / "ocnli" / "train.3k.json", CLUE / "ocnli" / "dev.json", tokenizer=tok,
                          max_length=64)
    assert data.label_names == ["contradiction", "entailment", "neutral"] and len(data.eval) == 2950
    got = Counter(data.label_names[e["labels"]] for e in data.eval)
    assert got == expected


@pytest.mark.real_data
def test_tnews_reads_its_fifteen_label_descriptions(tok) -> None:
    names = [json.loads(line)["label_desc"]
             for line in (CLUE / "tnews" / "label_index2en2zh.json").read_text(encoding="utf-8").splitlines()]
    data = load_task_data(TASK, CLUE / "tnews" / "train_few_all.json", CLUE / "tnews" / "dev_few_all.json",
                          tokenizer=tok, max_length=64, label_column="label_desc")
    assert data.label_names == sorted(names) and data.num_labels == 15
    assert len(data.train) == 1185 and len(data.eval) == 1098


@pytest.mark.real_data
def test_eprstmt_needs_no_options(tok) -> None:
    data = load_task_data(TASK, CLUE / "eprstmt" / "train_few_all.json", CLUE / "eprstmt" / "dev_few_all.json",
                          tokenizer=tok, max_length=64)
    assert data.label_names == ["Negative", "Positive"] and (len(data.train), len(data.eval)) == (160, 160)


@pytest.mark.parametrize("name", ["clue_tnews_gemma", "clue_eprstmt_gemma", "clue_ocnli_gemma"])
def test_the_clue_benchmark_configs_load(name: str) -> None:
    config = load_config(ROOT / "benchmarks" / f"{name}.toml")
    assert config.model.name == "gemma3" and config.task == TASK
    assert {row.name for row in config.strategies} == {"full", "lora", "adalora", "prefix", "bottleneck"}
