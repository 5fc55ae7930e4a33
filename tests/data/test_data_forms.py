"""The forms data comes in: pre-tokenized data sets, pandas DataFrames, lists of dicts and DatasetDicts."""

from __future__ import annotations

import logging
from typing import Any

import datasets
import pandas as pd
import pytest
import tiny_models as tm
import torch
import transformers as tf

import petl
from petl.data import DataError, DataFileError, LabelError, TokenizedDataset, load_task_data
from petl.data import tokenize as petl_tokenize
from petl.errors import ColumnNotFoundError, ConfigError
from petl.modeling.demo import minilm_path
from petl.training import TrainConfig, train
from petl.training.checkpoint import trainable_state

SENTENCES = ["a fine film", "a dull film", "fine acting and a fine plot", "dull acting", "fine", "dull"] * 2
ROWS = [{"sentence": s, "label": int("fine" in s)} for s in SENTENCES]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tf.AutoTokenizer.from_pretrained(minilm_path())


def _minilm_sized_bert(tok: Any) -> torch.nn.Module:
    config = tm.config("bert")
    config.vocab_size, config.num_labels = tok.vocab_size, 2
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    torch.manual_seed(0)
    return petl.wrap(model, "lora", r=4, dropout=0.1)


def _quick(**changes: Any) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "max_steps": 5, "eval_steps": 2, "learning_rate": 1e-2,
                          "progress_bar": False, **changes})


def _pretokenize(tok: Any, rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Tokenise the rows as petl's data module does, keeping the raw text as an extra column."""
    texts = [r["sentence"] for r in rows]
    examples = petl_tokenize.sequence_classification(tok, texts, None, [r["label"] for r in rows], max_length=16,
                                                     desc="test")
    return datasets.Dataset.from_list([{**e, "text": t} for e, t in zip(examples, texts, strict=True)])


# -- pre-tokenized ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_pretokenized_data_trains_exactly_like_its_raw_text(tok: Any, with_tokenizer: bool) -> None:
    raw = datasets.Dataset.from_list(ROWS)
    pre = _pretokenize(tok, ROWS)
    assert "token_type_ids" in pre.column_names
    straight = _minilm_sized_bert(tok)
    expected = train(straight, raw, eval_data=raw, tokenizer=tok, task="sequence-classification", config=_quick(),
                     data_options={"max_length": 16})
    model = _minilm_sized_bert(tok)
    result = train(model, pre, eval_data=pre, tokenizer=tok if with_tokenizer else None, config=_quick())
    assert result.step_losses == expected.step_losses and result.metrics == expected.metrics
    a, b, start = trainable_state(straight), trainable_state(model), trainable_state(_minilm_sized_bert(tok))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], start[n]) for n in a)  # it trained


def test_pretokenized_rows_are_kept_as_they_are(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"input_ids": [5, 6, 7, 8], "label": 1, "text": "x"}, {"input_ids": [9, 3], "label": -100, "text": "y"},
            {"input_ids": [4], "label": 0, "text": "z"}]
    with caplog.at_level(logging.INFO, logger="petl.data"):
        data = load_task_data("sequence-classification", datasets.Dataset.from_list(rows), pad_token_id=0,
                              max_length=2)  # max_length does not truncate pre-tokenized rows
    assert "dropping the columns 'text'" in caplog.text
    assert data.train[0] == {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1], "labels": 1}
    assert data.train[1]["labels"] == -100 and data.num_labels == 2 and data.label_names is None
    batch = data.collator([data.train[0], data.train[2]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [4, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    names = load_task_data("sequence-classification", rows, pad_token_id=0, label_names=["neg", "pos", "mid"])
    assert names.label_names == ["neg", "pos", "mid"] and names.num_labels == 3


def test_pretokenized_token_classification_and_causal_lm_train() -> None:
    tagged = [{"input_ids": [5, 6, 7], "labels": [-100, 1, 2]}, {"input_ids": [8, 9], "labels": [0, -100]}] * 6
    model = petl.wrap(tm.build("bert", "token-cls"), "lora", r=4)
    result = train(model, tagged, eval_data=tagged[:4], data_options={"label_names": ["O", "B-X", "I-X"]},
                   config=_quick(max_steps=2))
    assert result.global_step == 2 and "eval_f1" in result.metrics
    plain = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}] * 4  # no labels: learn every token
    lm = petl.wrap(tm.build("gpt2", "causal-lm"), "lora", r=4)
    before = {n: p.clone() for n, p in trainable_state(lm).items()}
    assert train(lm, plain, config=_quick(max_steps=2)).global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in trainable_state(lm).items())


@pytest.mark.parametrize("rows, error, match", [
    ([{"input_ids": "5 6", "labels": 0}], DataError, r"Row 0 of the pre-tokenized training data .* 'input_ids'"),
    ([{"input_ids": [5], "labels": 0}, {"input_ids": [5, -3], "labels": 1}], DataError, r"Row 1 .* holds -3"),
    ([{"input_ids": [5.0], "labels": 0}], DataError, r"Row 0 .* holds 5\.0"),
    ([{"input_ids": [5], "labels": 0}, {"input_ids": [], "labels": 1}], DataError, "Row 1 .* is empty"),
    ([{"input_ids": [5, 6], "attention_mask": [1], "labels": 0}], DataError, "'attention_mask', has 1 entries"),
    ([{"input_ids": [6], "labels": [1]}], LabelError, "Row 0 .* 'labels', holds \\[1\\] .* one class id"),
    ([{"input_ids": [5], "labels": 7}], LabelError, r"label 7, outside \[0, 3\)"),
    ([{"input_ids": [5], "stars": 1}], ColumnNotFoundError, "no label column .* 'stars'"),
])
def test_bad_pretokenized_rows_name_the_row_and_column(rows: list[dict[str, Any]], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_task_data("sequence-classification", rows, pad_token_id=0, num_labels=3)


def test_misaligned_token_labels_and_mixed_forms_are_refused(tok: Any) -> None:
    with pytest.raises(LabelError, match="Row 0 .* has 1 entries but input_ids has 2"):
        load_task_data("token-classification", [{"input_ids": [5, 6], "labels": [1]}], pad_token_id=0)
    with pytest.raises(DataError, match="training data is pre-tokenized .* evaluation data is raw text"):
        load_task_data("sequence-classification", [{"input_ids": [5], "labels": 0}], ROWS, tokenizer=tok)
    with pytest.raises(ConfigError, match="text_column='sentence' chooses text to tokenise"):
        load_task_data("sequence-classification", [{"input_ids": [5], "labels": 0}], pad_token_id=0,
                       text_column="sentence")


def test_a_pad_id_or_a_tokenizer_is_needed(tok: Any) -> None:
    model = tm.build("gpt2", "seq-cls")
    model.config.pad_token_id = None
    with pytest.raises(ConfigError, match="pass tokenizer="):
        train(model, [{"input_ids": [5, 6], "labels": 0}], task="sequence-classification", config=_quick())
    with pytest.raises(ConfigError, match="Raw data needs the model's tokenizer"):
        train(tm.build("bert", "seq-cls"), ROWS, task="sequence-classification", config=_quick())


# -- DataFrames and lists of dicts --------------------------------------------------------------


def test_dataframes_and_lists_of_dicts_read_like_a_dataset(tok: Any) -> None:
    reference = load_task_data("sequence-classification", datasets.Dataset.from_list(ROWS),
                               datasets.Dataset.from_list(ROWS[:4]), tokenizer=tok)
    data = load_task_data("sequence-classification", pd.DataFrame(ROWS, index=range(10, 22)), ROWS[:4], tokenizer=tok)
    assert isinstance(data.train, TokenizedDataset)
    assert data.train.examples == reference.train.examples and data.eval.examples == reference.eval.examples
    model = _minilm_sized_bert(tok)
    result = train(model, pd.DataFrame(ROWS), eval_data=ROWS, tokenizer=tok, config=_quick(max_steps=2))
    assert set(result.metrics) == {"eval_loss", "eval_accuracy", "eval_f1"}


@pytest.mark.parametrize("source, match", [
    ([], "list of examples is empty"),
    (pd.DataFrame({"sentence": [], "label": []}), "DataFrame has no rows"),
    ([{"sentence": "a", "label": 0}, {"sentence": "b", "stars": 1}], r"Row 1 of the list .*missing: \['label'\]"),
    ([{"sentence": "a", "label": 0}, "b"], "Row 1 of the list is a str"),
])
def test_empty_or_uneven_rows_are_refused(tok: Any, source: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_task_data("sequence-classification", source, tokenizer=tok)


# -- DatasetDict --------------------------------------------------------------------------------


def _dict(*names: str) -> datasets.DatasetDict:
    return datasets.DatasetDict({n: datasets.Dataset.from_list(ROWS[: 12 if n == "train" else 3]) for n in names})


@pytest.mark.parametrize("names, used", [(("train", "validation", "test"), "validation"), (("train", "dev"), "dev"),
                                         (("train",), None)])
def test_a_dataset_dict_trains_on_train_and_evaluates_on_its_validation_split(
    tok: Any, caplog: pytest.LogCaptureFixture, names: tuple[str, ...], used: str | None
) -> None:
    with caplog.at_level(logging.INFO, logger="petl.data"):
        data = load_task_data("sequence-classification", _dict(*names), tokenizer=tok)
    assert len(data.train) == 12
    if used is None:
        assert data.eval is None and "no evaluation split" in caplog.text
    else:
        assert len(data.eval) == 3 and f"evaluating on its {used!r} split" in caplog.text


def test_a_dataset_dict_never_evaluates_on_test_unasked(tok: Any, caplog: pytest.LogCaptureFixture) -> None:
    refused = r"'train', 'test': no validation split .* eval_data=dataset_dict\['test'\]"
    with pytest.raises(DataFileError, match=refused):
        load_task_data("sequence-classification", _dict("train", "test"), tokenizer=tok)
    with pytest.raises(DataFileError, match="no 'train' split; its splits are 'validation', 'test'"):
        load_task_data("sequence-classification", _dict("validation", "test"), tokenizer=tok)
    splits = _dict("train", "validation", "test")
    with caplog.at_level(logging.INFO, logger="petl.data"):
        data = load_task_data("sequence-classification", splits, splits["test"].select(range(2)), tokenizer=tok)
    assert len(data.eval) == 2 and "evaluating on eval_data as given, not on its 'validation' split" in caplog.text


def test_train_on_a_dataset_dict_evaluates_its_validation_split(tok: Any) -> None:
    model = _minilm_sized_bert(tok)
    result = train(model, _dict("train", "validation"), tokenizer=tok, task="sequence-classification",
                   config=_quick(max_steps=2))
    assert result.eval_history and set(result.metrics) == {"eval_loss", "eval_accuracy", "eval_f1"}
