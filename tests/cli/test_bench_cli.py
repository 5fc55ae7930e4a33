"""The ``bench`` and ``estimate`` subcommands, through a parser built with ``add_bench_parsers``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from petl.bench import runner, worker
from petl.cli import add_subcommand
from petl.cli import bench as bench_cli
from petl.cli import estimate as estimate_cli
from petl.errors import ConfigError, DeviceError

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petl")
    subparsers = parser.add_subparsers(dest="command")
    add_subcommand(subparsers, bench_cli)
    add_subcommand(subparsers, estimate_cli)
    return parser


def _tiny_toml(folder: Path, model_dir: Path) -> Path:
    """A one-row (LoRA r=2) benchmark config on the tiny model, one step per run."""
    path = folder / "tiny.toml"
    path.write_text(f'name = "tiny"\ndevice = "cpu"\n[model]\nname = "{model_dir}"\n'
                    '[data]\ntrain_examples = 16\neval_examples = 8\nmax_length = 24\n'
                    '[train]\nmax_steps = 1\nbatch_size = 4\n[timing]\nwarmup_steps = 1\nsteps = 1\nbatches = 1\n'
                    '[[strategies]]\nname = "lora"\noptions = { r = 2 }\n', encoding="utf-8")
    return path


def test_bench_arguments() -> None:
    args = _parser().parse_args(["bench"])
    assert args.config is None and args.handler is bench_cli.run
    assert (args.output, args.strategies, args.seeds, args.quick, args.device) == (None, None, None, False, None)
    args = _parser().parse_args(["bench", "b.toml", "--strategies", "lora, full", "--seeds", "0,1,2", "--quick",
                                 "--output", "out", "--device", "cpu", "--no-plots", "--no-progress"])
    assert (args.config, args.strategies, args.seeds, args.output) == ("b.toml", ["lora", "full"], [0, 1, 2], "out")
    assert args.quick and args.no_plots and args.no_progress and args.device == "cpu"


@pytest.mark.parametrize("argv", [["bench", "--seeds", "a,b"], ["bench", "--seeds", "-1"],
                                  ["bench", "--strategies", ","], ["bench", "--device", "tpu"], ["estimate"]])
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(argv)
    assert info.value.code == 2


def test_bench_config_from_arguments() -> None:
    args = _parser().parse_args(["bench", "--strategies", "lora,full", "--seeds", "3,4", "--device", "cpu"])
    config = bench_cli._bench_config(args)
    assert [r.display for r in config.strategies] == ["full", "lora"]
    assert config.seeds == (3, 4) and config.device == "cpu"
    quick = bench_cli._bench_config(_parser().parse_args(["bench", "--quick"]))
    assert quick.train.max_steps == 4 and len(quick.strategies) == 5


def test_estimate_sets_belong_to_the_strategy_before_them() -> None:
    args = _parser().parse_args(["estimate", "llama-7b", "--strategy", "lora", "--set", "r=16", "--set", "alpha=32",
                                 "--strategy", "prefix", "--set", "num_virtual_tokens=4", "--strategy", "full"])
    assert args.handler is estimate_cli.run
    assert estimate_cli.strategies_from_items(args.items) == [
        ("lora", "lora", {"r": 16, "alpha": 32}), ("prefix", "prefix", {"num_virtual_tokens": 4}), ("full", "full", {}),
    ]
    twice = _parser().parse_args(["estimate", "x", "--strategy", "lora", "--strategy", "lora", "--set", "r=2"])
    assert estimate_cli.strategies_from_items(twice.items) == [("lora-1", "lora", {}), ("lora-2", "lora", {"r": 2})]
    assert estimate_cli.strategies_from_items(_parser().parse_args(["estimate", "x"]).items) is None
    early = _parser().parse_args(["estimate", "x", "--set", "r=2", "--strategy", "lora"])
    with pytest.raises(ConfigError, match="--set r=2 comes before any --strategy"):
        estimate_cli.strategies_from_items(early.items)


def test_estimate_command_prints_json_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["estimate", "llama-7b", "--strategy", "lora", "--set", "r=8", "--precision", "bf16",
                                 "--json"])
    assert estimate_cli.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "causal-lm" and report["rows"][0]["trainable"] == 4_194_304
    assert [m["precision"] for m in report["rows"][0]["memory"]] == ["bf16"]
    args = _parser().parse_args(["estimate", "minilm", "--strategy", "full", "--strategy", "lora"])
    assert estimate_cli.run(args) == 0
    text = capsys.readouterr().out
    assert "22,713,986" in text and "full int8: n/a" in text and "activations not included" in text


def test_estimate_reads_a_benchmark_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.toml"
    path.write_text('task = "sequence-classification"\n[model]\nname = "minilm"\n[[strategies]]\nname = "lora"\n'
                    'label = "lora-r2"\noptions = { r = 2 }\n', encoding="utf-8")
    args = _parser().parse_args(["estimate", str(path), "--json", "--precision", "fp32"])
    assert estimate_cli.run(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["label"], r["options"]) for r in rows] == [("lora-r2", {"r": 2})]
    assert rows[0]["trainable"] == 6 * 2 * 2 * (384 + 384) + 384 * 2 + 2  # q and v of 6 layers, the classifier


def test_bench_command_refuses_a_gpu_config_without_cuda(shared_data: Path) -> None:
    import torch

    if torch.cuda.is_available() or not shared_data.is_dir():
        pytest.skip("needs a machine without CUDA and with the shared data")
    args = _parser().parse_args(["bench", str(ROOT / "benchmarks" / "gpu_bf16_8bit.toml")])
    with pytest.raises(DeviceError, match="no CUDA device"):
        bench_cli.run(args)


def test_bench_command_runs_and_writes_files(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def in_process(job: dict, work: Path, name: str, device: str) -> dict:
        return json.loads(json.dumps(worker.run_job(job)))

    monkeypatch.setattr(runner, "_spawn", in_process)
    path = _tiny_toml(tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    args = _parser().parse_args(["bench", str(path), "--output", str(out), "--no-progress", "--no-plots"])
    assert bench_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["strategy", "trainable", "share"]
    assert f"Results in {out}/" in printed
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md"]


def test_bench_records_strategies_bridged_from_peft(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--strategies` may name any registered strategy, not only the config's rows: each gets a row
    # with its defaults and is measured and saved like LoRA.
    monkeypatch.setattr(runner, "_spawn", lambda job, work, name, device: json.loads(json.dumps(worker.run_job(job))))
    path = _tiny_toml(tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    args = _parser().parse_args(["bench", str(path), "--output", str(out), "--no-progress", "--no-plots",
                                 "--strategies", "full,lora,loha,ia3,vera"])
    assert bench_cli.run(args) == 0
    rows = {row["label"]: row for row in json.loads((out / "results.json").read_text())["results"]}
    assert set(rows) == {"full", "lora", "loha", "ia3", "vera"}
    full = rows["full"]
    for label in ("loha", "ia3", "vera"):
        row = rows[label]
        assert row.get("error") is None, row["error"]
        assert 0 < row["trainable_params"] < full["trainable_params"]
        assert row["adapter_bytes"] > 0 and row["step_time_ms"] > 0 and row["metric_values"]
