"""Training on a stream (a ``datasets.IterableDataset``): steps instead of epochs, passes that
restart the stream, and a resume that skips what was consumed and repeats the run bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest
import tiny_models as tm
import torch
import transformers as tf
from tiny_data import Interrupt, _examples, interrupt_after

import petl
from petl.data import Collator, DataError, LabelError, StreamingDataset, TaskData, load_task_data
from petl.errors import ConfigError
from petl.modeling.demo import minilm_path
from petl.training import TrainConfig, train
from petl.training.checkpoint import latest_checkpoint, trainable_state

SENTENCES = ["a fine film", "a dull film", "fine acting and a fine plot", "dull acting", "fine", "dull"] * 2
CONFIG = TrainConfig(max_steps=8, batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1,
                     progress_bar=False)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tf.AutoTokenizer.from_pretrained(minilm_path())


def _model() -> torch.nn.Module:
    model = tm.build("bert", "seq-cls")  # dropout 0.1: a resumed run must replay the same masks
    torch.manual_seed(0)
    return petl.wrap(model, "lora", r=4, dropout=0.1)


def _stream(n: int = 24) -> datasets.IterableDataset:
    """Pre-tokenized rows (6 batches of 4 per pass), shuffled anew in every pass."""
    rows = [{**e, "idx": i} for i, e in enumerate(_examples("sequence-classification", n, seed=1))]
    return datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=2).shuffle(seed=3, buffer_size=8)


def test_passes_reshuffle_deterministically() -> None:
    data = load_task_data("sequence-classification", _stream(), pad_token_id=0)
    assert isinstance(data.train, StreamingDataset)
    assert data.num_labels is None  # integer labels of a stream: the model's head decides how many classes
    assert load_task_data("sequence-classification", _stream(), pad_token_id=0, num_labels=3).num_labels == 3

    def order(epoch: int) -> list[list[int]]:
        data.train.set_epoch(epoch)
        return [row["input_ids"] for row in data.train]

    first, second = order(0), order(1)
    assert len(first) == 24 and first != second and sorted(first) == sorted(second)
    assert order(0) == first  # the same pass, the same order


def test_a_stream_trains_for_max_steps_over_several_passes(tok: Any) -> None:
    raw = datasets.Dataset.from_list([{"sentence": s, "label": int("fine" in s)} for s in SENTENCES])
    config = tm.config("bert")
    config.vocab_size, config.num_labels = tok.vocab_size, 2
    torch.manual_seed(0)
    model = petl.wrap(tf.AutoModelForSequenceClassification.from_config(config), "lora", r=4)
    before = {n: p.clone() for n, p in trainable_state(model).items()}
    # 12 rows: 3 batches per pass, so 7 steps read the stream 3 times (and end inside the third pass).
    result = train(model, raw.to_iterable_dataset(), eval_data=raw, tokenizer=tok,
                   config=CONFIG.replace(max_steps=7, gradient_accumulation_steps=1))
    assert result.global_step == 7 and result.epoch == 2.0 and len(result.eval_history) == 1
    assert set(result.metrics) == {"eval_loss", "eval_accuracy", "eval_f1"}
    assert all(torch.isfinite(torch.tensor(result.step_losses)))
    assert any(not torch.equal(before[n], p) for n, p in trainable_state(model).items())


@pytest.mark.parametrize("save_steps, forwards", [(4, 13), (3, 9)])  # mid-pass, and exactly at a pass's end
def test_an_interrupted_stream_resumes_bit_for_bit(tmp_path: Path, save_steps: int, forwards: int) -> None:
    # 24 rows, batches of 4, 2 micro-batches per step: 3 steps per pass.
    config = CONFIG.replace(save_steps=save_steps, eval_steps=3)
    evaluation = datasets.Dataset.from_list(_examples("sequence-classification", 8, seed=2))
    straight = _model()
    expected = train(straight, _stream(), eval_data=evaluation, config=config.replace(output_dir=str(tmp_path / "a")))
    assert expected.global_step == 8 and expected.epoch == 2.0

    broken = _model()
    interrupt_after(broken, forwards=forwards)
    with pytest.raises(Interrupt):
        train(broken, _stream(), eval_data=evaluation, config=config.replace(output_dir=str(tmp_path / "b")))
    assert latest_checkpoint(tmp_path / "b").name == f"checkpoint-{save_steps}"

    resumed_model = _model()
    resumed = train(resumed_model, _stream(), eval_data=evaluation,
                    config=config.replace(output_dir=str(tmp_path / "b"), resume=True))
    assert resumed.step_losses == expected.step_losses  # exact float equality, every step
    assert resumed.eval_history == expected.eval_history and resumed.epoch == expected.epoch
    a, b = trainable_state(straight), trainable_state(resumed_model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_stream_needs_max_steps() -> None:
    with pytest.raises(ConfigError, match=r"stream .* pass TrainConfig\(max_steps=N\)"):
        train(_model(), _stream(), config=TrainConfig(progress_bar=False))


def test_unusable_streams_are_refused(tok: Any) -> None:
    empty = datasets.Dataset.from_list([{"input_ids": [5], "labels": 0}]).to_iterable_dataset().filter(lambda r: False)
    with pytest.raises(DataError, match="stream yields no rows"):
        load_task_data("sequence-classification", empty, pad_token_id=0)
    words = datasets.Dataset.from_list([{"sentence": s, "label": "pos" if "fine" in s else "neg"} for s in SENTENCES])
    with pytest.raises(LabelError, match="are strings .* Pass label_names"):
        load_task_data("sequence-classification", words.to_iterable_dataset(), tokenizer=tok)
    named = load_task_data("sequence-classification", words.to_iterable_dataset(), words, tokenizer=tok,
                           label_names=["neg", "pos"])
    assert [row["labels"] for row in named.train] == [e["labels"] for e in named.eval] == [
        int("fine" in s) for s in SENTENCES]
    with pytest.raises(DataError, match="evaluation data is a stream"):
        load_task_data("sequence-classification", words, words.to_iterable_dataset(), tokenizer=tok)
    bad = datasets.Dataset.from_list([{"input_ids": [5], "labels": 0}] * 1500 + [{"input_ids": [5], "labels": 9}])
    data = load_task_data("sequence-classification", bad.to_iterable_dataset(), pad_token_id=0, num_labels=3)
    with pytest.raises(LabelError, match="label 9, outside"):  # found when its batch is read
        list(data.train)


def test_a_prepared_stream_that_yields_nothing_stops_the_run() -> None:
    data = TaskData(train=StreamingDataset([]), eval=None, collator=Collator(0), task="sequence-classification",
                    num_labels=3, label_names=None)
    with pytest.raises(DataError, match="yielded no batch in pass 1, after 0 of 2 steps"):
        train(_model(), data, config=CONFIG.replace(max_steps=2))
