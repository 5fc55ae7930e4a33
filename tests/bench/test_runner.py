"""The harness end to end on a tiny model: every field of the results, checked against
numbers known without the harness (parameter counts worked out from BERT's shapes, file
sizes measured here, hand-made inputs to the aggregation with known outputs), and the
files that report them. One test runs real worker processes on their success path."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import transformers as tf

import petl
from petl.bench import run_benchmark, runner, worker
from petl.bench.config import BenchConfig
from petl.bench.results import BenchResult, StrategyResult, add_ratios, add_timing, aggregate
from petl.bench.schema import StrategySpec

from .bench_tiny import tiny_config

MIB = 1024 * 1024
LORA_R = 4


def _in_process(job: dict[str, Any], work: Path, name: str, device: str) -> dict[str, Any]:
    """What the worker process does, run in this process (a fresh interpreter per run costs
    seconds of imports; the subprocess path itself is tested separately below)."""
    try:
        return json.loads(json.dumps(worker.run_job(job)))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


ROWS = (
    StrategySpec(name="full", learning_rate=1e-4),
    StrategySpec(name="lora", options={"r": LORA_R}, learning_rate=1e-3),
    StrategySpec(name="lora", label="broken", options={"target_modules": ["no_such_layer"]}),
)


@pytest.fixture(scope="module")
def bench(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchConfig, BenchResult]:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(runner, "_spawn", _in_process)
    config = tiny_config(tiny_model_dir, *ROWS, seeds=(0, 1))
    try:
        result = run_benchmark(config, tmp_path_factory.mktemp("bench"), progress=False)
    finally:
        monkeypatch.undo()
    return config, result


def _fresh(config: BenchConfig, label: str) -> Any:
    from petl.bench.loading import build_row_model, load_data, load_tokenizer

    tokenizer = load_tokenizer(config)
    return build_row_model(config, config.row(label), load_data(config, tokenizer), tokenizer, seed=0)


def _tree_bytes(folder: Path) -> int:
    """The size of every file under ``folder``, measured here (not with petl.bench.measure)."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def _physical_memory_mib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB


def _bert_counts(model_dir: Path, num_labels: int) -> dict[str, int]:
    """Parameters of the tiny BertForSequenceClassification, and of LoRA r=4 on it, worked out
    from the shapes in its config.json (not counted by petl)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]

    def linear(d_in: int, d_out: int) -> int:
        return d_in * d_out + d_out

    embeddings = (cfg["vocab_size"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"]) * h + 2 * h
    layer = 4 * linear(h, h) + 2 * h + linear(h, i) + linear(i, h) + 2 * h  # q k v o, LayerNorm, FFN, LayerNorm
    head = linear(h, num_labels)
    base = embeddings + layers * layer + linear(h, h) + head  # ... then the pooler and the classifier
    adapters = layers * 2 * LORA_R * (h + h)  # peft's BERT default, query and value: r * (d_in + d_out) each
    # LoRA trains the adapters and a copy of the fresh classifier (modules_to_save), kept beside the original.
    return {"base": base, "lora_trainable": adapters + head, "lora_total": base + adapters + head}


# -- the benchmark run (workers in this process) ------------------------------------------------


def test_parameter_counts_and_ratios(bench: tuple[BenchConfig, BenchResult], tiny_model_dir: Path) -> None:
    _, result = bench
    full, lora = result.row("full"), result.row("lora")
    known = _bert_counts(tiny_model_dir, num_labels=2)
    assert (known["base"], known["lora_trainable"], known["lora_total"]) == (997_090, 1_090, 998_180)
    assert (full.trainable_params, full.total_params) == (known["base"], known["base"])
    assert (lora.trainable_params, lora.total_params) == (known["lora_trainable"], known["lora_total"])
    assert (full.trainable_share, full.ratio_to_full) == (1.0, 1.0)
    assert lora.trainable_share == pytest.approx(1_090 / 998_180, rel=1e-12)
    assert lora.ratio_to_full == pytest.approx(1_090 / 997_090, rel=1e-12)


def test_every_field_of_a_successful_row_is_filled(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    for row in (result.row("full"), result.row("lora")):
        paired = {"diff_to_full", "diff_ci", "indistinguishable"}  # full fine-tuning is not compared with itself
        unset = {"error", "search"} | (paired if row.strategy == "full" else set())
        empty = [name for name, value in row.to_dict().items() if value is None and name not in unset]
        assert empty == [], (row.label, empty)
        spec, settings = config.row(row.label), config.resolved(config.row(row.label))
        assert (row.strategy, row.options) == (spec.name, spec.options)
        assert (row.learning_rate, row.mixed_precision, row.optimizer, row.load_in_8bit) == (
            settings["learning_rate"], settings["mixed_precision"], settings["optimizer"], settings["load_in_8bit"])


def test_memory_fields(bench: tuple[BenchConfig, BenchResult]) -> None:
    # These runs share the test process, whose peak RSS is the process's own high-water mark:
    # only units and signs mean something here. The readings of real workers are tested below.
    _, result = bench
    for row in (result.row("full"), result.row("lora")):
        assert row.memory_kind == "cpu-rss"
        assert row.memory_after_load_mib > 0 and row.train_memory_mib >= 0
        assert row.peak_memory_mib < _physical_memory_mib()


def test_step_times_come_from_the_interleaved_loop(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    full, lora = result.row("full"), result.row("lora")
    measured = result.timing["timings"]  # what the timing process reported
    assert set(measured) == {"full", "lora"} and "broken" in result.timing["errors"]
    for row in (full, lora):
        assert row.timed_steps == config.timing.steps == measured[row.label]["steps"]
        assert row.step_time_ms == measured[row.label]["step_time_ms"]
        assert 0 < row.step_time_ms_min <= row.step_time_ms <= row.step_time_ms_max
        assert row.throughput > 0 and row.step_time_ratio > 0
    assert full.step_time_ratio == 1.0
    assert result.timing["batch_size"] == config.train.batch_size
    assert len(result.timing["batch_shapes"]) == config.timing.batches


def test_task_metric_over_seeds(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    for row in (result.row("full"), result.row("lora")):
        assert row.metric == "eval_accuracy"
        assert row.seeds == [0, 1] and len(row.metric_values) == 2
        for value in row.metric_values:  # an accuracy on 16 examples is a multiple of 1/16
            assert 0.0 <= value <= 1.0 and (value * config.data.eval_examples).is_integer(), value
        assert (row.metric_min, row.metric_max) == (min(row.metric_values), max(row.metric_values))
        assert row.metric_min <= row.metric_mean <= row.metric_max and row.metric_std >= 0
        assert row.eval_loss_mean > 0
        assert row.global_steps == config.train.max_steps
        assert 0 < row.train_time_s < row.wall_time_s
    from petl.bench.loading import load_data, load_tokenizer

    held_out = load_data(config, load_tokenizer(config)).eval
    counts = Counter(held_out[i]["labels"] for i in range(len(held_out)))
    majority = max(counts.values()) / len(held_out)  # what predicting one class everywhere scores
    for row in (result.row("full"), result.row("lora")):
        assert row.constant_metric == majority
        assert row.stalled_seeds == [s for s, v in zip(row.seeds, row.metric_values, strict=True)
                                     if v <= majority + 0.5 / len(held_out)]


def test_saved_sizes_are_what_petl_save_and_safetensors_write(
    bench: tuple[BenchConfig, BenchResult], tmp_path: Path
) -> None:
    from safetensors.torch import save_model

    config, result = bench
    full, lora = result.row("full"), result.row("lora")
    petl.save(_fresh(config, "lora"), tmp_path / "lora")  # the row's shapes and options, untrained
    assert {p.name for p in (tmp_path / "lora").iterdir()} == {
        "adapter_model.safetensors", "petl_config.json", "adapter_config.json"}
    assert lora.adapter_bytes == _tree_bytes(tmp_path / "lora")
    save_model(_fresh(config, "full"), str(tmp_path / "full.safetensors"))
    assert full.adapter_bytes == os.path.getsize(tmp_path / "full.safetensors")
    # fp32 tensors plus a header (and, for the adapter, two small JSON files)
    assert 4 * full.total_params < full.adapter_bytes < 4 * full.total_params + MIB
    assert 4 * lora.trainable_params < lora.adapter_bytes < 4 * lora.trainable_params + 64 * 1024


def test_a_failing_row_keeps_its_error_and_the_others_run(bench: tuple[BenchConfig, BenchResult]) -> None:
    _, result = bench
    broken = result.row("broken")
    assert "TargetNotFoundError" in broken.error and "timing:" in broken.error
    assert broken.metric_mean is None and broken.step_time_ms is None
    assert result.row("lora").error is None and result.row("full").error is None


def test_run_records_environment_and_data(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    env = result.environment
    for package in ("torch", "transformers", "peft", "accelerate", "petl"):
        assert env["versions"][package], package
    assert env["python"] and env["cpu"] and env["cpu_count"] >= 1 and env["date"]
    assert "git_commit" in env and "gpu" in env
    assert env["worker_env"]["OMP_WAIT_POLICY"]
    assert result.data["train_examples"] == config.data.train_examples
    assert result.data["eval_examples"] == config.data.eval_examples
    assert 0.3 < result.data["bag_of_words_accuracy"] < 0.95
    assert result.device == "cpu" and result.wall_time_s > 0
    assert BenchConfig.from_dict(result.config) == config


def test_files_agree_with_the_result(bench: tuple[BenchConfig, BenchResult]) -> None:
    _, result = bench
    folder = result.output_dir
    saved = json.loads((folder / "results.json").read_text())
    assert saved["results"] == [row.to_dict() for row in result.rows]
    assert saved["environment"] == result.environment and saved["wall_time_s"] == result.wall_time_s
    assert not (folder / runner.WORK_DIR).exists()
    for name in ("results.csv", "results.md", "metric_vs_params.png", "memory.png", "step_time.png"):
        assert (folder / name).stat().st_size > 0, name


# -- combining results: hand-made inputs, known outputs -----------------------------------------


def _run(seed: int, accuracy: float, loss: float, peak: float, after_load: float, **extra: Any) -> dict[str, Any]:
    """A worker result, shaped as ``petl.bench.worker`` writes it."""
    return {"trainable_params": 25, "total_params": 100, "memory_kind": "cpu-rss", "memory_after_load_mib": after_load,
            "peak_memory_mib": peak, "metrics": {"eval_accuracy": accuracy, "eval_loss": loss},
            "saved_bytes": 4_321, "global_step": 7, "train_time_s": 1.0 + seed, "wall_time_s": 3.0 + seed, **extra}


def _row(label: str, strategy: str) -> StrategyResult:
    return StrategyResult(label=label, strategy=strategy, options={}, learning_rate=None, mixed_precision="no",
                          optimizer="adamw", load_in_8bit=False)


def test_aggregate_combines_seeds_into_known_numbers() -> None:
    row = _row("lora", "lora")
    runs = [_run(0, 0.5, 0.25, peak=600.0, after_load=500.0), _run(1, 0.7, 0.75, peak=650.0, after_load=520.0)]
    aggregate(row, runs, [0, 1], "eval_accuracy")
    assert row.error is None and row.seeds == [0, 1] and row.metric_values == [0.5, 0.7]
    assert row.metric_mean == pytest.approx(0.6, abs=1e-15)
    assert row.metric_std == pytest.approx(0.1414213562373095, abs=1e-15)  # sample std: sqrt(0.02 / (2 - 1))
    assert (row.metric_min, row.metric_max, row.eval_loss_mean) == (0.5, 0.7, 0.5)
    assert (row.trainable_params, row.total_params, row.trainable_share) == (25, 100, 0.25)
    # the memory of the seed that peaked highest, both readings from that seed
    assert (row.memory_after_load_mib, row.peak_memory_mib, row.train_memory_mib) == (520.0, 650.0, 130.0)
    assert (row.adapter_bytes, row.global_steps, row.train_time_s, row.wall_time_s) == (4_321, 7, 1.5, 3.5)


def test_aggregate_keeps_the_seeds_that_ran_and_says_which_failed() -> None:
    row = _row("lora", "lora")
    runs = [_run(0, 0.75, 0.5, peak=600.0, after_load=500.0, notes=["saving failed: OSError: disk full"]),
            {"error": "RuntimeError: boom"}]
    aggregate(row, runs, [3, 4], "eval_accuracy")
    assert row.seeds == [3] and row.metric_values == [0.75]
    assert (row.metric_mean, row.metric_std) == (0.75, None)  # no spread from one seed
    assert row.error == "seed 4: RuntimeError: boom; saving failed: OSError: disk full"

    missing = _row("other", "lora")
    no_metric = {**_run(1, 0.5, 0.5, 1.0, 1.0), "metrics": {"eval_loss": 0.5}}
    aggregate(missing, [_run(0, 0.5, 0.5, 1.0, 1.0), no_metric], [0, 1], "eval_accuracy")
    assert missing.metric_values == [0.5] and "metric 'eval_accuracy' missing for seeds [1]" in missing.error

    nothing = _row("none", "lora")
    aggregate(nothing, [{"error": "a"}, {"error": "b"}], [0, 1], "eval_accuracy")
    assert nothing.error == "seed 0: a; seed 1: b" and nothing.trainable_params is None and nothing.seeds == []


def test_timing_and_ratios_from_known_step_times() -> None:
    full, lora, slow, broken = _row("full", "full"), _row("lora", "lora"), _row("slow", "lora"), _row("x", "lora")
    for row, trainable in ((full, 400), (lora, 100), (slow, 40)):
        row.trainable_params = trainable
    timing = {"timings": {
        "full": {"step_time_ms": 10.0, "step_time_ms_min": 9.0, "step_time_ms_max": 12.0, "steps": 5},
        "lora": {"step_time_ms": 5.0, "step_time_ms_min": 4.0, "step_time_ms_max": 6.0, "steps": 5},
        "slow": {"step_time_ms": 20.0, "step_time_ms_min": 19.0, "step_time_ms_max": 22.0, "steps": 5},
    }, "errors": {"x": "TargetNotFoundError: nope"}}
    rows = [full, lora, slow, broken]
    add_timing(rows, timing, batch_size=8)
    add_ratios(rows)
    assert [r.throughput for r in rows[:3]] == [pytest.approx(800.0), pytest.approx(1600.0), pytest.approx(400.0)]
    assert [r.step_time_ratio for r in rows[:3]] == [1.0, 0.5, 2.0]
    assert [r.ratio_to_full for r in rows[:3]] == [1.0, 0.25, 0.1]
    assert (slow.step_time_ms_min, slow.step_time_ms_max, slow.timed_steps) == (19.0, 22.0, 5)
    assert broken.step_time_ms is None and broken.throughput is None
    assert broken.error == "timing: TargetNotFoundError: nope"
    alone = _row("lora", "lora")
    alone.trainable_params = 1
    add_ratios([alone])  # without a full row there is nothing to compare with
    assert alone.ratio_to_full is None and alone.step_time_ratio is None


# -- the worker process -------------------------------------------------------------------------


def test_worker_env_keeps_cpu_rows_off_the_gpu() -> None:
    env = runner._worker_env("cpu")
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_WAIT_POLICY"] == runner.os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


def test_a_real_worker_process_reports_errors(tmp_path: Path) -> None:
    job = {"mode": "nonsense", "config": {}, "device": "cpu"}
    result = runner._spawn(job, tmp_path, "bad", "cpu")  # a fresh interpreter: python -m petl.bench.worker
    assert result["error"].splitlines()[0] == "ValueError: Unknown worker mode 'nonsense'."
    assert json.loads((tmp_path / "bad.result.json").read_text()) == result


PARENT_PEAK_MIB = 1536
"""Resident memory this test holds while the workers run; a worker's own peak is far below it."""


def test_real_worker_processes_train_measure_and_save(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The success path in fresh interpreters (runner._spawn: python -m petl.bench.worker), one LoRA
    # and one full run, started from this (large) pytest process: the workers' memory readings must be
    # their own, not this process's high-water mark (which ru_maxrss would report: it survives exec).
    config = tiny_config(tiny_model_dir, *ROWS[:2])
    ballast = bytearray(PARENT_PEAK_MIB * MIB)  # make this process's peak far above any worker's
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page, so it is resident
    try:
        runs = {label: runner._spawn({"mode": "train", "config": config.to_dict(), "device": "cpu", "label": label,
                                      "seed": 0, "progress": False}, tmp_path, label, "cpu")
                for label in ("lora", "full")}
    finally:
        del ballast
    for label, run in runs.items():
        assert "error" not in run, run["error"]
        assert json.loads((tmp_path / f"{label}.result.json").read_text()) == run
    lora, full = runs["lora"], runs["full"]

    fresh = _fresh(config, "lora")
    count = petl.count_parameters(fresh)
    assert (lora["trainable_params"], lora["total_params"]) == (count.trainable, count.total)
    assert full["trainable_params"] == full["total_params"] == petl.count_parameters(_fresh(config, "full")).total
    petl.save(fresh, tmp_path / "adapter")
    assert lora["saved_bytes"] == _tree_bytes(tmp_path / "adapter")
    for run in (lora, full):
        accuracy = run["metrics"]["eval_accuracy"]
        assert math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0
        assert math.isfinite(run["metrics"]["eval_loss"]) and run["metrics"]["eval_loss"] > 0
        assert run["global_step"] == config.train.max_steps
        assert (run["train_examples"], run["eval_examples"]) == (config.data.train_examples, config.data.eval_examples)
        assert run["memory_kind"] == "cpu-rss" and run["saved_bytes"] > 0
        # the process holds the model's fp32 weights, and reads MiB (not KiB or bytes): below the machine's memory
        assert 4 * run["total_params"] / MIB < run["memory_after_load_mib"]
        assert run["peak_memory_mib"] < min(_physical_memory_mib(), PARENT_PEAK_MIB)  # the worker's own peak
        assert 0 < run["train_time_s"] < run["wall_time_s"]
    # Full fine-tuning keeps a gradient and two AdamW moments for each of ~1M weights, 11.4 MiB more
    # than LoRA's ~1k; its training increment measured ~40 MiB here against LoRA's ~22 MiB.
    extra_states_mib = 3 * 4 * (full["trainable_params"] - lora["trainable_params"]) / MIB
    increment = {label: run["peak_memory_mib"] - run["memory_after_load_mib"] for label, run in runs.items()}
    assert increment["lora"] > 0
    assert increment["full"] - increment["lora"] > extra_states_mib / 2, (increment, extra_states_mib)


# -- configuration and loading ------------------------------------------------------------------


def test_the_gpu_config_fails_before_running_anything_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    config = BenchConfig(device="cuda", strategies=(StrategySpec(name="lora"),))
    with pytest.raises(petl.PetlError, match="no CUDA device"):
        run_benchmark(config, tmp_path / "gpu")
    assert not (tmp_path / "gpu").exists()


def test_the_loaded_model_is_the_configured_one(tiny_model_dir: Path) -> None:
    config = tiny_config(tiny_model_dir)
    model = _fresh(config, "lora")
    assert isinstance(model, tf.BertForSequenceClassification) and model.config.hidden_size == 32
    assert petl.core.wrapping.is_wrapped(model)
    assert not petl.core.wrapping.is_wrapped(_fresh(config, "full"))


def test_timing_gives_scheduled_strategies_the_real_runs_length(tiny_model_dir: Path) -> None:
    # AdaLoRA refuses a schedule shorter than tinit + tfinal: the timing loop must plan for the
    # training run's 10 steps, not for its own 1 + 2.
    row = StrategySpec(name="adalora", options={"init_r": 4, "target_r": 2, "tinit": 3, "tfinal": 3})
    config = tiny_config(tiny_model_dir, row)
    config = config.replace(train=config.train.__class__(max_steps=10, batch_size=4))
    measured = worker.run_job({"mode": "time", "config": config.to_dict(), "device": "cpu", "progress": False})
    assert measured["errors"] == {}
    assert measured["timings"]["adalora"]["steps"] == config.timing.steps
