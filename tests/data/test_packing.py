"""Packed causal-LM batches: the exact equality of a packed batch with its examples run alone
(no attention across examples, positions restarting), the check that refuses models that
cannot keep packed examples apart, and training with packing against training without."""

from __future__ import annotations

from typing import Any

import pytest
import tiny_models as tm
import torch
import transformers as tf
from tiny_data import task_data

import petl
from petl.data import Collator, TaskData, TokenizedDataset
from petl.data.packing import PackingCollator, check_packing, pack_rows
from petl.errors import ConfigError, DataError
from petl.tasks import IGNORE_INDEX
from petl.training import TrainConfig, train
from petl.training.checkpoint import trainable_state


def examples(lengths: list[int], seed: int = 0) -> list[dict[str, Any]]:
    """Causal-LM examples of these lengths, a two-token prompt without loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, tm.VOCAB, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [IGNORE_INDEX] * 2 + ids[2:]})
    return out


def causal_model(arch: str = "llama", attention: str = "eager") -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(tm.config(arch), attn_implementation=attention)


def test_rows_are_filled_first_fit_longest_first() -> None:
    lengths = [5, 9, 2, 4, 9, 1, 3]
    rows = pack_rows(lengths, capacity=9)
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert all(sum(lengths[i] for i in row) <= 9 for row in rows)
    assert rows == [[1], [4], [0, 3], [6, 2, 5]]


def test_a_packed_batch_restarts_positions_and_masks_each_examples_first_label() -> None:
    batch_examples = examples([6, 3, 2, 8, 4])
    batch = PackingCollator(pad_token_id=0)(batch_examples)
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"} and batch["use_cache"] is False
    assert batch["input_ids"].shape == (3, 8)  # rows as long as the longest example: [8], [6, 2], [4, 3]
    assert batch["position_ids"].tolist() == [list(range(8)), [0, 1, 2, 3, 4, 5, 0, 1],
                                              [0, 1, 2, 3, 0, 1, 2, 3]]  # the padding continues the last example
    assert int((batch["position_ids"] == 0).sum()) == 5  # one start per example
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORE_INDEX).all()
    assert batch["labels"][2, 7] == IGNORE_INDEX and batch["input_ids"][2, 7] == 0  # padding: no loss
    # The same labelled tokens as the examples alone, where the first label is never predicted (the shift).
    alone = sum(sum(label != IGNORE_INDEX for label in e["labels"][1:]) for e in batch_examples)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == alone


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_packed_batch_computes_exactly_what_its_examples_compute_alone(arch: str, attention: str) -> None:
    model = causal_model(arch, attention).eval()  # no dropout; config.use_cache is on, as in training
    batch_examples = examples([7, 3, 5, 2, 6, 4], seed=1)
    batch = PackingCollator()(batch_examples)
    packed = model(**batch)
    lengths = [len(e["input_ids"]) for e in batch_examples]
    for r, members in enumerate(pack_rows(lengths, max(lengths))):  # where the collator put each example
        start = 0
        for index in members:
            n = lengths[index]
            assert batch["input_ids"][r, start:start + n].tolist() == batch_examples[index]["input_ids"]
            alone = model(input_ids=torch.tensor([batch_examples[index]["input_ids"]])).logits
            torch.testing.assert_close(packed.logits[r, start:start + n], alone[0], rtol=1e-5, atol=1e-5)
            start += n
    padded = model(**Collator(0)(batch_examples))
    torch.testing.assert_close(packed.loss, padded.loss, rtol=1e-6, atol=1e-6)  # the same labelled tokens


def test_without_use_cache_false_the_model_lets_packed_examples_mix() -> None:
    """Why the packed batch carries use_cache=False: a cache switches transformers' packed-sequence detection off."""
    model = causal_model().train()
    batch = PackingCollator()(examples([4, 2, 2]))  # rows [4] and [2, 2]
    with torch.no_grad():
        right = model(**batch).logits
        mixed = model(**{k: v for k, v in batch.items() if k != "use_cache"}).logits
    assert (right - mixed).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2", "gpt_neox"])
def test_models_that_keep_packed_examples_apart_pass_the_check(arch: str) -> None:
    model = petl.wrap(causal_model(arch), "lora", r=4)
    model.train()
    check_packing(model, "causal-lm")
    assert all(m.training for m in model.modules())  # the modes are put back


def test_models_that_cannot_are_refused() -> None:
    with pytest.raises(ConfigError, match="OPTForCausalLM .* lets packed examples see each other"):
        check_packing(causal_model("opt"), "causal-lm")
    with pytest.raises(ConfigError, match="causal-LM examples, but the task is 'sequence-classification'"):
        check_packing(tm.build("bert", "seq-cls"), "sequence-classification")
    data = task_data("token-classification")
    with pytest.raises(ConfigError, match="packing=True packs causal-LM examples"):
        train(petl.wrap(tm.build("bert", "token-cls"), "lora", r=4), data,
              config=TrainConfig(max_steps=1, packing=True, progress_bar=False))


def test_padded_examples_are_refused() -> None:
    rows = examples([4, 3])
    rows[1]["attention_mask"] = [1, 1, 0]
    with pytest.raises(DataError, match="Example 1 of a packed batch has padding"):
        PackingCollator()(rows)


def test_training_with_packing_follows_training_without() -> None:
    # The same random batches (packing draws them as group_by_length=False does), packed or padded:
    # the same examples, labelled tokens and loss per step, up to float rounding.
    lengths = torch.randint(3, 17, (48,), generator=torch.Generator().manual_seed(3)).tolist()
    data = TaskData(train=TokenizedDataset(examples(lengths, seed=4)), eval=TokenizedDataset(examples([5, 9, 4])),
                    collator=Collator(0), task="causal-lm", num_labels=None, label_names=None)
    config = TrainConfig(max_steps=6, batch_size=8, learning_rate=1e-2, eval_steps=3, progress_bar=False,
                         logging_steps=1)
    runs = []
    for packing in (False, True):
        model = petl.wrap(causal_model(), "lora", r=4)
        result = train(model, data, config=config.replace(packing=packing, group_by_length=False))
        runs.append((result, trainable_state(model)))
    (padded, padded_weights), (packed, packed_weights) = runs
    assert packed.step_losses == pytest.approx(padded.step_losses, rel=1e-5)
    assert packed.metrics["eval_loss"] == pytest.approx(padded.metrics["eval_loss"], rel=1e-5)
    for name, value in padded_weights.items():
        torch.testing.assert_close(packed_weights[name], value, rtol=1e-4, atol=1e-6)
