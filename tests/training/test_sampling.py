"""Length-grouped training batches and length-ordered evaluation: seeded orders that pad less,
cut into the same batches by the data loader and by Accelerate's per-process shards, and
resumed bit for bit.

Run as a script (under ``torchrun --nproc_per_node 2``) this file is also the worker of
:func:`test_two_processes_read_whole_grouped_batches`: each rank writes the batches it read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models, tiny_data

LENGTHS_SEED = 7


def skewed_lengths(n: int, seed: int = LENGTHS_SEED) -> list[int]:
    """Mostly short examples and a long tail, as sentences are: 80% of 4-20 tokens, 20% of 20-128."""
    g = torch.Generator().manual_seed(seed)
    short = torch.randint(4, 21, (n,), generator=g)
    long = torch.randint(20, 129, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.8, short, long).tolist()


def _worker(report_dir: str) -> None:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from petl.training.sampling import LengthGroupedOrder

    accelerator = Accelerator(cpu=True)
    order = LengthGroupedOrder(skewed_lengths(103), seed=3, batch_size=4, step_size=8)  # as petl.train builds it
    loader = accelerator.prepare(DataLoader(list(range(103)), sampler=order, batch_size=4, collate_fn=list,
                                            generator=torch.Generator().manual_seed(0)))  # as petl's setup builds it
    epochs = []
    for epoch in (0, 1):
        order.set_order(epoch)
        epochs.append([list(batch) for batch in loader])
    Path(report_dir, f"rank{accelerator.process_index}.json").write_text(json.dumps(epochs), encoding="utf-8")


if __name__ == "__main__":
    _worker(sys.argv[1])
    sys.exit(0)

import pytest  # noqa: E402
import tiny_models as tm  # noqa: E402
from tiny_data import Interrupt, interrupt_after, task_data  # noqa: E402

import petl  # noqa: E402
from petl.data import Collator, TaskData, TokenizedDataset  # noqa: E402
from petl.errors import CheckpointError, ConfigError  # noqa: E402
from petl.training import TrainConfig, train  # noqa: E402
from petl.training.checkpoint import trainable_state  # noqa: E402
from petl.training.data import EpochOrder  # noqa: E402
from petl.training.sampling import (  # noqa: E402
    LengthGroupedOrder,
    LengthOrder,
    eval_order,
    example_lengths,
    grouped_steps,
    training_order,
)


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    """The padding a batch of each list costs: its size times its longest example, less its tokens."""
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


# -- the order ----------------------------------------------------------------------------------


def test_the_order_depends_only_on_seed_epoch_and_lengths() -> None:
    lengths = skewed_lengths(500)
    first, again = LengthGroupedOrder(lengths, seed=1, batch_size=8), LengthGroupedOrder(lengths, seed=1, batch_size=8)
    first.set_order(2)
    again.set_order(2)
    assert list(first) == list(again)
    other_epoch, other_seed = LengthGroupedOrder(lengths, 1, 8), LengthGroupedOrder(lengths, 2, 8)
    other_epoch.set_order(3)
    other_seed.set_order(2)
    assert list(other_epoch) != list(first) and list(other_seed) != list(first)


@pytest.mark.parametrize("n, batch_size, step_size", [(500, 8, 8), (103, 4, 8), (3, 8, 8), (1, 1, 1),
                                                     (64, 16, 64), (2000, 32, 96)])
def test_every_epoch_is_a_permutation_cut_into_whole_steps(n: int, batch_size: int, step_size: int) -> None:
    lengths = skewed_lengths(n)
    order = LengthGroupedOrder(lengths, seed=0, batch_size=batch_size, step_size=step_size)
    for epoch in range(3):
        order.set_order(epoch)
        indices = list(order)
        assert sorted(indices) == list(range(n))
        steps = grouped_steps(lengths, step_size, order.epoch_generator())
        assert [i for step in steps for i in step] == indices
        assert all(len(step) == step_size for step in steps[:-1])  # so micro-batches never straddle two steps
        assert all([lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True) for step in steps)
        assert all(len(b) == batch_size for b in order.batches()[:-1])
        assert lengths[indices[0]] == max(lengths)  # the longest step comes first, longest example first


def test_an_optimizer_step_sees_the_same_examples_however_it_is_split() -> None:
    # batch 8, or batch 4 with 2 accumulation steps, or batch 2 on 2 processes with 2 accumulation steps
    lengths = skewed_lengths(700)
    orders = [list(LengthGroupedOrder(lengths, 0, batch_size, step_size=8)) for batch_size in (8, 4, 2)]
    assert orders[0] == orders[1] == orders[2]


def test_grouped_batches_pad_far_less_than_random_ones() -> None:
    lengths, batch_size = skewed_lengths(4000), 32
    grouped, random = LengthGroupedOrder(lengths, 0, batch_size, step_size=2 * batch_size), EpochOrder(4000, 0)
    real = sum(lengths)
    grouped_pad = padded_tokens(chunks(list(grouped), batch_size), lengths)
    random_pad = padded_tokens(chunks(list(random), batch_size), lengths)
    # Measured: random order pads 3.6 tokens per real token, grouped 0.11 (33 times less).
    assert random_pad > 3 * real and grouped_pad < 0.15 * real and grouped_pad < random_pad / 20


def test_batches_change_from_epoch_to_epoch() -> None:
    lengths = skewed_lengths(2000)
    order = LengthGroupedOrder(lengths, 0, 16)
    epochs = []
    for epoch in range(2):
        order.set_order(epoch)
        epochs.append({frozenset(b) for b in order.batches()})  # step_size None: one batch per step
    assert len(epochs[0] & epochs[1]) < len(epochs[0]) // 10


def test_without_grouping_the_order_is_the_random_one_of_earlier_releases() -> None:
    data = task_data("sequence-classification", n_train=40)
    order = training_order(data.train, TrainConfig(group_by_length=False))
    assert type(order) is EpochOrder and order.grouping is None
    for epoch in range(3):
        order.set_order(epoch)
        expected = torch.randperm(40, generator=torch.Generator().manual_seed(0 * 1_000_003 + epoch)).tolist()
        assert list(order) == expected


def test_which_data_is_grouped() -> None:
    data = task_data("sequence-classification", n_train=40)
    # Off unless asked for, for every task: grouping changes which examples share a step.
    for task in ("sequence-classification", "token-classification", "causal-lm", "seq2seq"):
        rows = task_data(task, n_train=40).train
        assert type(training_order(rows, TrainConfig())) is EpochOrder
        assert isinstance(training_order(rows, TrainConfig(group_by_length=True)), LengthGroupedOrder)
    grouped = TrainConfig(group_by_length=True)
    assert type(training_order(data.train, grouped.replace(packing=True))) is EpochOrder  # packing removes the padding
    with pytest.raises(ConfigError, match="group_by_length must be True or False"):
        TrainConfig(group_by_length="yes")
    unmeasurable = [{"features": [1.0, 2.0], "labels": 0}] * 5
    assert example_lengths(unmeasurable) is None and type(training_order(unmeasurable, grouped)) is EpochOrder
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter([{"input_ids": [1, 2]}])

    assert training_order(Stream(), grouped) is None  # a stream has no lengths to sort by


def test_evaluation_reads_its_set_longest_first() -> None:
    lengths = [3, 9, 5, 9, 1]
    order = LengthOrder(lengths)
    assert list(order) == [1, 3, 2, 0, 4] and len(order) == 5
    data = TokenizedDataset([{"input_ids": [1] * n} for n in lengths])
    assert list(eval_order(data)) == [1, 3, 2, 0, 4]


def test_two_processes_read_whole_grouped_batches(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    order = LengthGroupedOrder(skewed_lengths(103), seed=3, batch_size=4, step_size=8)
    for epoch in (0, 1):
        order.set_order(epoch)
        batches = order.batches()  # 26 micro-batches, the last of 3 examples
        # Batch i goes whole to process i % 2; both take 13 steps. Accelerate completes the short last
        # batch with the epoch's first example (even_batches), as it did with random order.
        assert ranks[0][epoch] == batches[0::2] and ranks[1][epoch][:-1] == batches[1:-1:2]
        assert ranks[1][epoch][-1] == batches[-1] + batches[0][:1]


# -- training -----------------------------------------------------------------------------------


def _varied_data(n_train: int = 64) -> TaskData:
    """Sequence classification with lengths 2-24, so that grouping forms other batches than random order."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(n_train + 8):
        ids = torch.randint(3, tm.VOCAB, (int(torch.randint(2, 25, (1,), generator=g)),), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids[0] % tm.NUM_LABELS})
    return TaskData(train=TokenizedDataset(rows[:n_train]), eval=TokenizedDataset(rows[n_train:]),
                    collator=Collator(0), task="sequence-classification", num_labels=tm.NUM_LABELS,
                    label_names=None)


def _model() -> torch.nn.Module:
    model = tm.build("bert", "seq-cls")  # dropout 0.1: the resumed run must replay the same masks
    torch.manual_seed(0)
    return petl.wrap(model, "lora", r=4, dropout=0.1)


def test_a_grouped_run_resumes_mid_epoch_bit_for_bit(tmp_path: Path) -> None:
    # 64 examples in batches of 4: megabatches of 16, 16 batches and 8 steps (2 micro-batches each) per epoch.
    # A checkpoint every 5 steps lands inside the first epoch; the interruption inside step 7's accumulation.
    data = _varied_data()
    config = TrainConfig(max_steps=12, batch_size=4, gradient_accumulation_steps=2, eval_steps=4, save_steps=5,
                         learning_rate=1e-2, progress_bar=False, group_by_length=True)
    straight = _model()
    expected = train(straight, data, config=config.replace(output_dir=str(tmp_path / "straight")))
    random_order = train(_model(), data, config=config.replace(group_by_length=False))
    assert random_order.step_losses != expected.step_losses  # grouping formed other batches

    broken = _model()
    interrupt_after(broken, forwards=13)
    with pytest.raises(Interrupt):
        train(broken, data, config=config.replace(output_dir=str(tmp_path / "resumed")))
    state = json.loads((tmp_path / "resumed" / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["fingerprint"]["data_order"] == "length-grouped" and state["batches_in_epoch"] == 10
    resumed_model = _model()
    resumed = train(resumed_model, data, config=config.replace(output_dir=str(tmp_path / "resumed"), resume=True))
    assert resumed.step_losses == expected.step_losses  # exact float equality, every step
    assert resumed.eval_history == expected.eval_history
    a, b = trainable_state(straight), trainable_state(resumed_model)
    assert all(torch.equal(a[n], b[n]) for n in a)

    with pytest.raises(CheckpointError, match="data_order: checkpoint 'length-grouped', now None"):
        train(_model(), data, config=config.replace(output_dir=str(tmp_path / "resumed"), resume=True,
                                                    group_by_length=False))


def test_sorted_evaluation_gives_the_metrics_of_the_natural_order() -> None:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from petl.metrics import evaluator_for
    from petl.training.evaluation import evaluate

    data = task_data("token-classification", n_train=4, n_eval=30)
    model = tm.build("bert", "token-cls")
    accelerator = Accelerator(cpu=True)
    results = []
    for sampler in (None, eval_order(data.eval)):
        loader = accelerator.prepare(DataLoader(data.eval, batch_size=4, sampler=sampler, collate_fn=data.collator))
        results.append(evaluate(model, loader, task=data.task, accelerator=accelerator,
                                evaluator=evaluator_for(data.task, data.label_names)))
    natural, ordered = results
    assert natural.keys() == ordered.keys() and set(natural) >= {"eval_loss", "eval_f1", "eval_accuracy"}
    assert all(ordered[k] == pytest.approx(natural[k], rel=1e-6) for k in natural)


def test_token_weighted_loss_weighs_each_batch_by_its_labelled_tokens() -> None:
    import torch.nn.functional as F

    from petl.training.setup import prepare_run
    from petl.training.step import training_loss

    data = task_data("token-classification", n_train=12, n_eval=0)
    mean = sum(len(e["labels"]) for e in data.train.examples) / 12  # every token is labelled here
    model = petl.wrap(tm.build("bert", "token-cls"), "lora", r=4)
    run = prepare_run(model, data, TrainConfig(token_weighted_loss=True, batch_size=4), None, None)
    try:
        assert run.token_scale == pytest.approx(mean)
        batch = data.collator(data.train.examples[:3])
        batch["labels"][0, 1] = -100  # one position without a label
        model.eval()  # no dropout: both forwards below see the same model
        weighed = training_loss(model, batch, None, model, run.token_scale, "token-classification")
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        total = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum", ignore_index=-100)
        # the sum of the batch's token losses over the labelled tokens of an average batch of 3 examples
        assert float(weighed.detach()) == pytest.approx(float(total.detach()) / (mean * 3), rel=1e-5)
    finally:
        run.close()
    # a causal LM's first position predicts nothing: it is not counted even where it has a label
    from petl.training.sampling import labelled_tokens, mean_labelled_tokens

    assert labelled_tokens([5, 6, -100, 7], "causal-lm") == 2 and labelled_tokens([5, 6, -100, 7], "seq2seq") == 3
    rows = TokenizedDataset([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [1, 2], "labels": [-100, 2]}])
    assert mean_labelled_tokens(rows, "causal-lm") == pytest.approx(1.5)


def test_token_weighted_loss_is_refused_where_the_loss_weighs_examples() -> None:
    from petl.training.setup import prepare_run

    model = tm.build("bert", "seq-cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="token_weighted_loss"):
        prepare_run(model, task_data("sequence-classification"), TrainConfig(token_weighted_loss=True), None, None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="token_weighted_loss"):
        TrainConfig(token_weighted_loss=1)
