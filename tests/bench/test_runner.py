"""The harness end to end on a tiny model: every field of the results, checked against
what it must equal, and the files that report them."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import transformers as tf

import petl
from petl.bench import run_benchmark, runner, worker
from petl.bench.config import BenchConfig, StrategySpec
from petl.bench.measure import saved_size
from petl.bench.results import BenchResult

from .bench_tiny import tiny_config


def _in_process(job: dict[str, Any], work: Path, name: str, device: str) -> dict[str, Any]:
    """What the worker process does, run in this process (a fresh interpreter per run costs
    seconds of imports; the subprocess path itself is tested separately below)."""
    try:
        return json.loads(json.dumps(worker.run_job(job)))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


ROWS = (
    StrategySpec(name="full", learning_rate=1e-4),
    StrategySpec(name="lora", options={"r": 4}, learning_rate=1e-3),
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


def test_parameter_counts_and_ratios(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    full, lora = result.row("full"), result.row("lora")
    for row in (full, lora):
        count = petl.count_parameters(_fresh(config, row.label))
        assert (row.trainable_params, row.total_params) == (count.trainable, count.total)
        assert row.trainable_share == count.trainable / count.total
        assert row.ratio_to_full == count.trainable / full.trainable_params
    assert full.trainable_params == full.total_params and full.ratio_to_full == 1.0
    assert 0 < lora.trainable_share < 0.1


def test_every_field_of_a_successful_row_is_filled(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    for row in (result.row("full"), result.row("lora")):
        empty = [name for name, value in row.to_dict().items() if value is None and name != "error"]
        assert empty == [], (row.label, empty)
        spec, settings = config.row(row.label), config.resolved(config.row(row.label))
        assert (row.strategy, row.options) == (spec.name, spec.options)
        assert (row.learning_rate, row.mixed_precision, row.optimizer, row.load_in_8bit) == (
            settings["learning_rate"], settings["mixed_precision"], settings["optimizer"], settings["load_in_8bit"])


def test_memory_fields(bench: tuple[BenchConfig, BenchResult]) -> None:
    _, result = bench
    for row in (result.row("full"), result.row("lora")):
        assert row.memory_kind == "cpu-rss"
        assert 0 < row.memory_after_load_mib <= row.peak_memory_mib
        assert row.train_memory_mib == row.peak_memory_mib - row.memory_after_load_mib


def test_step_times_come_from_the_interleaved_loop(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    full, lora = result.row("full"), result.row("lora")
    for row in (full, lora):
        assert row.timed_steps == config.timing.steps
        assert 0 < row.step_time_ms_min <= row.step_time_ms <= row.step_time_ms_max
        assert math.isclose(row.throughput, config.train.batch_size / (row.step_time_ms / 1000))
        assert math.isclose(row.step_time_ratio, row.step_time_ms / full.step_time_ms)
    assert full.step_time_ratio == 1.0
    assert result.timing["batch_size"] == config.train.batch_size
    assert len(result.timing["batch_shapes"]) == config.timing.batches


def test_task_metric_over_seeds(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    for row in (result.row("full"), result.row("lora")):
        assert row.metric == "eval_accuracy"
        assert row.seeds == [0, 1] and len(row.metric_values) == 2
        assert all(0.0 <= v <= 1.0 for v in row.metric_values)
        assert row.metric_mean == statistics.fmean(row.metric_values)
        assert row.metric_std == statistics.stdev(row.metric_values)
        assert (row.metric_min, row.metric_max) == (min(row.metric_values), max(row.metric_values))
        assert row.eval_loss_mean > 0
        assert row.global_steps == config.train.max_steps
        assert 0 < row.train_time_s < row.wall_time_s


def test_saved_sizes_are_what_petl_save_and_save_pretrained_write(bench: tuple[BenchConfig, BenchResult]) -> None:
    config, result = bench
    assert result.row("lora").adapter_bytes == saved_size(_fresh(config, "lora"), full=False)
    assert result.row("full").adapter_bytes == saved_size(_fresh(config, "full"), full=True)
    assert result.row("full").adapter_bytes > 4 * result.row("full").total_params  # fp32 weights and a header


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


def test_worker_env_keeps_cpu_rows_off_the_gpu() -> None:
    env = runner._worker_env("cpu")
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_WAIT_POLICY"] == runner.os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


def test_a_real_worker_process_reports_errors(tmp_path: Path) -> None:
    job = {"mode": "nonsense", "config": {}, "device": "cpu"}
    result = runner._spawn(job, tmp_path, "bad", "cpu")  # a fresh interpreter: python -m petl.bench.worker
    assert result["error"].splitlines()[0] == "ValueError: Unknown worker mode 'nonsense'."
    assert json.loads((tmp_path / "bad.result.json").read_text()) == result


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
    assert petl.wrapping.is_wrapped(model)
    assert not petl.wrapping.is_wrapped(_fresh(config, "full"))


def test_timing_gives_scheduled_strategies_the_real_runs_length(tiny_model_dir: Path) -> None:
    # AdaLoRA refuses a schedule shorter than tinit + tfinal: the timing loop must plan for the
    # training run's 10 steps, not for its own 1 + 2.
    row = StrategySpec(name="adalora", options={"init_r": 4, "target_r": 2, "tinit": 3, "tfinal": 3})
    config = tiny_config(tiny_model_dir, row)
    config = config.replace(train=config.train.__class__(max_steps=10, batch_size=4))
    measured = worker.run_job({"mode": "time", "config": config.to_dict(), "device": "cpu", "progress": False})
    assert measured["errors"] == {}
    assert measured["timings"]["adalora"]["steps"] == config.timing.steps
