"""The trainer on tiny models: each task, full fine-tuning, strategy hooks, gradient
accumulation, bf16 and 8-bit on CPU, early stopping, logs, and bad input."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tiny_models as tm
import torch
import transformers as tf
from tiny_data import task_data

import petl
from petl.errors import ConfigError, PetlError
from petl.strategies.lora import LoraConfig, LoraStrategy
from petl.training import TrainConfig, TrainResult, train
from petl.training.checkpoint import latest_checkpoint, trainable_state
from petl.training.evaluation import BestTracker, example_losses
from petl.training.resume import read_checkpoint
from petl.training.step import build_optimizer

MODELS = {  # task -> (architecture, head) of tests/tiny_models.py
    "sequence-classification": ("bert", "seq-cls"),
    "token-classification": ("bert", "token-cls"),
    "causal-lm": ("gpt2", "causal-lm"),
    "seq2seq": ("t5", "seq2seq-lm"),
}


def wrapped(task: str = "sequence-classification", strategy: str = "lora", **options: Any) -> torch.nn.Module:
    model = tm.build(*MODELS[task])
    torch.manual_seed(0)
    return petl.wrap(model, strategy, **({"r": 4} if strategy == "lora" else {}) | options)


def quick(**changes: Any) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "max_steps": 4, "progress_bar": False, **changes})


def frozen(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainable_state(model).items()}


# -- configuration ------------------------------------------------------------------------------


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    config = TrainConfig(epochs=2, learning_rate=1e-3, output_dir=Path("runs/x"), mixed_precision="bf16")
    assert config.output_dir == "runs/x"
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="'learning_rate'"):
        TrainConfig.from_dict({"learnig_rate": 1e-3})
    with pytest.raises(ConfigError, match="'bf16'"):
        TrainConfig(mixed_precision="bf61")
    with pytest.raises(ConfigError, match="'adamw8bit'"):
        TrainConfig(optimizer="adamw8bt")
    for bad in ({"batch_size": 0}, {"warmup_ratio": 1.5}, {"learning_rate": -1.0}, {"resume": True},
                {"eval_steps": 2.5}, {"max_grad_norm": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(TypeError):
        TrainConfig(3)  # keyword-only
    with pytest.raises(AttributeError):
        config.epochs = 4  # frozen


def test_best_tracker_infers_direction_and_patience() -> None:
    loss = BestTracker("eval_loss", greater_is_better=False, patience=2)
    assert [loss.update({"eval_loss": v}, s) for s, v in enumerate([1.0, 0.5, 0.7, float("nan")])] == [
        True, True, False, False]
    assert loss.best_step == 1 and loss.should_stop
    accuracy = BestTracker("eval_accuracy", greater_is_better=True, patience=None)
    assert [accuracy.update({"eval_accuracy": v}, s) for s, v in enumerate([0.5, 0.4, 0.6])] == [True, False, True]
    assert not accuracy.should_stop


# -- every task ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(MODELS))
def test_each_task_trains_the_adapter_only(task: str) -> None:
    model = wrapped(task)
    data = task_data(task)
    before_frozen, before_trainable = frozen(model), trainable(model)
    result = train(model, data, config=quick(learning_rate=1e-2, eval_batch_size=64, load_best_at_end=False))
    assert isinstance(result, TrainResult) and result.global_step == 4 and len(result.step_losses) == 4
    assert all(math.isfinite(v) for v in result.step_losses)
    assert all(torch.equal(p, before_frozen[n]) for n, p in model.named_parameters() if n in before_frozen)
    after = trainable(model)
    assert any(not torch.equal(after[n], before_trainable[n]) for n in after)
    expected = {
        "sequence-classification": {"eval_loss", "eval_accuracy", "eval_f1"},
        "token-classification": {"eval_loss", "eval_precision", "eval_recall", "eval_f1", "eval_accuracy"},
        "causal-lm": {"eval_loss", "eval_perplexity"},
        "seq2seq": {"eval_loss", "eval_perplexity"},
    }[task]
    assert set(result.metrics) == expected
    # One evaluation batch holds the whole set, so the eval loss is the model's own loss on it.
    batch = data.collator([data.eval[i] for i in range(len(data.eval))])
    model.eval()
    with torch.no_grad():
        reference = model(**batch).loss.item()
    assert result.metrics["eval_loss"] == pytest.approx(reference, rel=1e-5)
    if "eval_perplexity" in expected:
        assert result.metrics["eval_perplexity"] == pytest.approx(math.exp(result.metrics["eval_loss"]))


def test_eval_loss_weighs_every_labelled_token_equally() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, -100, -100, -100], [3, 4, 5, 6, 0]])
    sums, counts = example_losses("token-classification", logits, labels)
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    assert counts.tolist() == [2.0, 5.0]
    assert (sums.sum() / counts.sum()).item() == pytest.approx(flat.item(), rel=1e-6)


def test_training_learns_a_learnable_rule() -> None:
    model = wrapped()
    result = train(model, task_data("sequence-classification", n_train=48, n_eval=24),
                   config=TrainConfig(epochs=4, batch_size=8, learning_rate=2e-2, progress_bar=False))
    losses = [e["eval_loss"] for e in result.eval_history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # by default the task's own metric (accuracy) picks the checkpoint: the first evaluation at its maximum
    accuracies = [e["eval_accuracy"] for e in result.eval_history]
    best = result.eval_history[accuracies.index(max(accuracies))]
    assert result.metric_for_best == "eval_accuracy" and result.best_step == best["step"]
    assert result.best_metric == max(accuracies) == best["eval_accuracy"]
    assert result.metrics == {k: v for k, v in best.items() if k != "step"}


def test_metric_for_best_loss_stays_an_option() -> None:
    result = train(wrapped(), task_data("sequence-classification", n_train=48, n_eval=24),
                   config=TrainConfig(epochs=3, batch_size=8, learning_rate=2e-2, progress_bar=False,
                                      metric_for_best="loss"))
    losses = [e["eval_loss"] for e in result.eval_history]
    best = result.eval_history[losses.index(min(losses))]
    assert result.metric_for_best == "eval_loss" and result.best_step == best["step"]
    assert result.best_metric == min(losses)


def test_full_fine_tuning_saves_the_whole_model(tmp_path: Path) -> None:
    model = tm.build("bert", "seq-cls")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, task_data("sequence-classification"),
                   config=quick(max_steps=None, epochs=1, output_dir=str(tmp_path)))
    assert result.global_step == 6
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("encoder.layer.0.attention.self.query.weight" in n for n in changed)
    reloaded = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "best")
    assert (tmp_path / "best" / "model.safetensors").is_file()
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())
    assert json.loads((tmp_path / "metrics.json").read_text()) == result.metrics


# -- strategy hooks -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CountingConfig(LoraConfig):
    """LoRA options under a test-only strategy name."""


class CountingLora(LoraStrategy):
    """LoRA that records every trainer hook call and what the model looked like then."""

    config_class: ClassVar[type] = CountingConfig
    REGULARIZER: ClassVar[float] = 10.0

    def __init__(self, config: CountingConfig) -> None:
        super().__init__(config)
        self.events: list[tuple[str, Any]] = []
        self.models: set[int] = set()
        self.last_values: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, model: torch.nn.Module, total_steps: int) -> None:
        self.models.add(id(model))
        self.events.append(("begin", total_steps))

    def regularization_loss(self, model: torch.nn.Module) -> torch.Tensor | None:
        self.models.add(id(model))
        self.events.append(("regularization", None))
        return torch.tensor(self.REGULARIZER)

    def on_step_end(self, model: torch.nn.Module, step: int) -> None:
        self.models.add(id(model))
        params = trainable_state(model)
        has_grads = all(p.grad is not None for p in params.values())  # before zero_grad
        values = {n: p.detach().clone() for n, p in params.items()}
        stepped = self.last_values is None or any(not torch.equal(values[n], self.last_values[n]) for n in values)
        self.last_values = values
        self.events.append(("step_end", (step, has_grads, stepped)))


@pytest.fixture
def counting_strategy():
    petl.register("counting-lora-test")(CountingLora)
    yield "counting-lora-test"
    petl.core.registry.unregister("counting-lora-test")


def test_strategy_hooks_are_called_through_the_protocol(counting_strategy: str) -> None:
    model = wrapped(strategy=counting_strategy, r=4)
    strategy = petl.core.wrapping.state_of(model).strategy
    config = TrainConfig(epochs=2, batch_size=4, gradient_accumulation_steps=2, warmup_ratio=0.0,
                         learning_rate=1e-2, progress_bar=False)
    result = train(model, task_data("sequence-classification", n_train=16), config=config)
    begin = [e for e in strategy.events if e[0] == "begin"]
    steps = [e[1] for e in strategy.events if e[0] == "step_end"]
    regularizations = [e for e in strategy.events if e[0] == "regularization"]
    assert begin == [("begin", 4)] and strategy.events[0][0] == "begin"  # 16 / 4 / 2 steps per epoch, 2 epochs
    assert [s for s, _, _ in steps] == [1, 2, 3, 4] == list(range(1, result.global_step + 1))
    assert all(has_grads and stepped for _, has_grads, stepped in steps)
    assert len(regularizations) == 8  # once per micro-batch
    assert strategy.models == {id(model)}  # the user's model, never an Accelerate wrapper
    assert all(v > CountingLora.REGULARIZER for v in result.step_losses)  # the term is in the loss


def test_adalora_reallocates_its_rank_budget_during_training() -> None:
    model = wrapped(strategy="adalora", init_r=6, target_r=2, tinit=2, tfinal=2, deltaT=1)
    strategy = petl.core.wrapping.state_of(model).strategy
    assert set(strategy.effective_ranks(model).values()) == {6}
    result = train(model, task_data("sequence-classification"), config=quick(max_steps=10, learning_rate=1e-2))
    ranks = strategy.effective_ranks(model)
    assert all(math.isfinite(v) for v in result.step_losses)
    assert sum(ranks.values()) == 2 * len(ranks)  # the target budget: target_r per layer on average ...
    assert len(set(ranks.values())) > 1 and max(ranks.values()) < 6  # ... spread unevenly, every layer pruned


# -- precision, accumulation, memory options ----------------------------------------------------


def _no_dropout_bert() -> torch.nn.Module:
    config = tm.config("bert")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_config(config)
    torch.manual_seed(0)
    return petl.wrap(model, "lora", r=4)


def test_gradient_accumulation_matches_one_large_batch() -> None:
    data = task_data("sequence-classification", n_train=16)
    big, small = _no_dropout_bert(), _no_dropout_bert()
    common = {"warmup_ratio": 0.0, "learning_rate": 1e-2, "progress_bar": False, "max_steps": 2}
    train(big, data, config=TrainConfig(batch_size=8, **common))
    train(small, data, config=TrainConfig(batch_size=4, gradient_accumulation_steps=2, **common))
    a, b = trainable(big), trainable(small)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert any(not torch.equal(a[n], wrapped_init) for n, wrapped_init in trainable(_no_dropout_bert()).items())


def test_bf16_mixed_precision_on_cpu_keeps_fp32_weights_and_restores_forward() -> None:
    model = wrapped()
    result = train(model, task_data("sequence-classification"), config=quick(mixed_precision="bf16"))
    reference = train(wrapped(), task_data("sequence-classification"), config=quick())
    assert all(math.isfinite(v) for v in result.step_losses)
    assert result.step_losses != reference.step_losses  # autocast really ran in bf16 ...
    assert result.step_losses == pytest.approx(reference.step_losses, rel=2e-2)  # ... and computed the same thing
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "forward" not in vars(model)  # Accelerate's autocast wrapper is gone
    assert tm.logits(model, tm.inputs("bert", "seq-cls")).dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_training() -> None:
    data = task_data("sequence-classification")
    plain, checkpointed = _no_dropout_bert(), _no_dropout_bert()
    calls = {"n": 0}

    def count(module: torch.nn.Module, args: Any, output: Any) -> None:
        calls["n"] += module.training

    checkpointed.bert.encoder.layer[0].attention.register_forward_hook(count)  # inside the checkpointed block
    a = train(plain, data, config=quick())
    b = train(checkpointed, data, config=quick(gradient_checkpointing=True))
    assert calls["n"] == 2 * 4  # every training forward of the block ran again in the backward pass
    assert a.step_losses == pytest.approx(b.step_losses, rel=1e-5)
    assert not checkpointed.is_gradient_checkpointing  # switched off again afterwards


def test_8bit_base_and_8bit_optimizer_on_cpu(tmp_path: Path) -> None:
    from petl.modeling.loading import load_model

    tm.build("bert", "seq-cls").save_pretrained(tmp_path / "base")
    model = load_model(str(tmp_path / "base"), "sequence-classification", num_labels=tm.NUM_LABELS,
                       load_in_8bit=True)
    int8 = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.int8}
    assert int8 and type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Linear8bitLt"
    assert model.classifier.weight.dtype == torch.float32  # the fresh head stays trainable
    petl.wrap(model, "lora", r=4)
    before = trainable(model)
    result = train(model, task_data("sequence-classification"), config=quick(optimizer="adamw8bit",
                                                                             learning_rate=1e-2))
    assert all(math.isfinite(v) for v in result.step_losses)
    assert all(torch.equal(p, int8[n]) for n, p in model.named_parameters() if n in int8)
    after = trainable(model)
    assert any(not torch.equal(after[n], before[n]) for n in after)


def test_quantized_model_cannot_train_in_full(tmp_path: Path) -> None:
    from petl.modeling.loading import load_model

    tm.build("bert", "seq-cls").save_pretrained(tmp_path / "base")
    model = load_model(str(tmp_path / "base"), "sequence-classification", num_labels=3, load_in_8bit=True)
    with pytest.raises(PetlError, match="cannot be trained in full"):
        train(model, task_data("sequence-classification"), config=quick())


# -- evaluation, early stopping, the best adapter, logs -----------------------------------------


class ScriptedAccuracy:
    """An evaluator reporting a fixed sequence of accuracies, one per evaluation."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def __call__(self) -> ScriptedAccuracy:
        return self

    def add_batch(self, *, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pass

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.values.pop(0)}


def test_early_stopping_keeps_and_restores_the_best_adapter(tmp_path: Path) -> None:
    model = wrapped()
    config = quick(max_steps=20, eval_steps=2, metric_for_best="accuracy", early_stopping_patience=2,
                   output_dir=str(tmp_path), learning_rate=1e-2)
    result = train(model, task_data("sequence-classification"), config=config,
                   evaluator=ScriptedAccuracy([0.5, 0.8, 0.7, 0.6, 0.9]))
    assert result.stopped_early and result.global_step == 8
    assert result.best_step == 4 and result.best_metric == 0.8 and result.metrics["eval_accuracy"] == 0.8
    assert json.loads((tmp_path / "metrics.json").read_text())["eval_accuracy"] == 0.8
    best = petl.load(tm.build("bert", "seq-cls"), tmp_path / "best")
    batch = tm.inputs("bert", "seq-cls")
    assert torch.equal(tm.logits(best, batch), tm.logits(model, batch))  # the model holds the best weights
    assert latest_checkpoint(tmp_path).name == "checkpoint-8"


def test_unknown_metric_for_best_is_refused_before_training() -> None:
    model = wrapped()
    before = trainable(model)
    with pytest.raises(ConfigError, match="'eval_accuracy'"):
        train(model, task_data("sequence-classification"), config=quick(metric_for_best="acuracy"))
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())


def test_jsonl_log_and_tensorboard(tmp_path: Path) -> None:
    model = wrapped()
    train(model, task_data("sequence-classification"),
          config=quick(output_dir=str(tmp_path), logging_steps=2, eval_steps=2, log_with="tensorboard"))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    training = [r for r in records if "loss" in r]
    evaluations = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in training] == [2, 4] and [r["step"] for r in evaluations] == [2, 4]
    assert all({"epoch", "learning_rate", "samples_per_second"} <= set(r) for r in training)
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    assert TrainConfig.from_dict(json.loads((tmp_path / "train_config.json").read_text())).log_with == "tensorboard"


# -- bad input ----------------------------------------------------------------------------------


def test_more_classes_than_the_head_is_refused() -> None:
    data = task_data("sequence-classification")
    data.num_labels, data.label_names = 5, ["a", "b", "c", "d", "e"]
    with pytest.raises(PetlError, match="num_labels=5"):
        train(wrapped(), data, config=quick())


def test_label_beyond_the_head_is_refused_before_any_step() -> None:
    data = task_data("sequence-classification")
    data.num_labels = None
    data.train.examples[1]["labels"] = 7
    model = wrapped()
    before = trainable(model)
    with pytest.raises(PetlError, match="label 7.*3 outputs"):
        train(model, data, config=quick(batch_size=32))
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    model = wrapped()
    calls = {"n": 0}

    def poison(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 4:
                return output * float("nan")
        return None

    model.classifier.register_forward_hook(poison)
    with pytest.raises(PetlError, match="at step 4 .*checkpoint-2"):
        train(model, task_data("sequence-classification"),
              config=quick(max_steps=6, save_steps=2, output_dir=str(tmp_path)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    fresh = wrapped()
    optimizer = build_optimizer(fresh, TrainConfig(), 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = read_checkpoint(tmp_path / "checkpoint-2", model=fresh, optimizer=optimizer, scheduler=scheduler,
                            scaler=None)
    assert state["global_step"] == 2 and all(math.isfinite(v) for v in state["step_losses"])


def test_unwritable_output_folder_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    model = wrapped()
    before = trainable(model)
    started = time.perf_counter()
    with pytest.raises(PetlError, match="not writable"):
        train(model, task_data("sequence-classification"), config=quick(output_dir=str(tmp_path / "a-file" / "out")))
    assert time.perf_counter() - started < 5
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    from petl.modeling.demo import minilm_path

    return tf.AutoTokenizer.from_pretrained(minilm_path())


def test_raw_files_and_a_missing_column(tmp_path: Path, minilm_tokenizer: Any) -> None:
    rows = ["a fine film", "a dull film", "fine acting", "dull acting"] * 3
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    (tmp_path / "bad.tsv").write_text("text_a\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    config = tm.config("bert")
    config.vocab_size, config.num_labels = minilm_tokenizer.vocab_size, 2
    model = petl.wrap(tf.AutoModelForSequenceClassification.from_config(config), "lora", r=4)
    result = train(model, tmp_path / "train.tsv", eval_data=tmp_path / "train.tsv", tokenizer=minilm_tokenizer,
                   task="sequence-classification", config=quick(), data_options={"max_length": 16})
    assert set(result.metrics) == {"eval_loss", "eval_accuracy", "eval_f1"}
    with pytest.raises(PetlError, match="text_a"):
        train(model, tmp_path / "bad.tsv", tokenizer=minilm_tokenizer, task="sequence-classification", config=quick())


# -- real data ----------------------------------------------------------------------------------

# Measured 0.735 validation accuracy with this exact setup (36 s on 2 shared cores); chance is about 0.5.
SST2_FLOOR = 0.65


@pytest.mark.real_data
def test_lora_on_a_slice_of_sst2_beats_a_floor(shared_data: Path, minilm_tokenizer: Any) -> None:
    """MiniLM + LoRA on the first 512 SST-2 training sentences for one epoch, scored on the first 400
    validation sentences: a quick guard against regressions of the whole pipeline on real text."""
    from petl.data import load_task_data
    from petl.modeling.demo import minilm_path

    sst2 = shared_data / "sst2"
    data = load_task_data("sequence-classification", sst2 / "train.tsv", sst2 / "validation.tsv",
                          tokenizer=minilm_tokenizer, max_length=64, limit=512)
    data.eval = torch.utils.data.Subset(data.eval, range(400))
    torch.manual_seed(0)  # the fresh head and LoRA's A matrices are drawn before petl.train seeds its own run
    model = tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    petl.wrap(model, "lora", r=8, alpha=16)
    result = train(model, data, config=TrainConfig(epochs=1, batch_size=32, learning_rate=1e-2, progress_bar=False))
    assert result.global_step == 16
    assert result.metrics["eval_accuracy"] >= SST2_FLOOR, result.metrics
