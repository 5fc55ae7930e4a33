"""The report files: JSON, CSV, Markdown and PNG exist and say the same thing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from petl.bench.report import CSV_COLUMNS, PLOTS, TABLE_HEADERS, format_table, write_reports
from petl.bench.results import BenchResult, StrategyResult, add_ratios, add_timing, aggregate


def _run(trainable: int, accuracy: float, peak: float, seed_shift: float = 0.0) -> dict:
    return {
        "memory_kind": "cpu-rss", "memory_after_load_mib": 500.0, "peak_memory_mib": peak,
        "trainable_params": trainable, "total_params": 1_000_000 + (0 if trainable == 1_000_000 else trainable),
        "metrics": {"eval_accuracy": accuracy + seed_shift, "eval_loss": 0.4, "eval_f1": 0.8},
        "global_step": 10, "train_time_s": 12.0, "wall_time_s": 15.0, "saved_bytes": 4096,
    }


@pytest.fixture
def result(tmp_path: Path) -> BenchResult:
    rows = [
        StrategyResult(label=label, strategy=name, options=opts, learning_rate=lr, mixed_precision="no",
                       optimizer="adamw", load_in_8bit=False)
        for label, name, opts, lr in (("full", "full", {}, 5e-5), ("lora", "lora", {"r": 8}, 1e-3),
                                      ("prefix", "prefix", {"num_virtual_tokens": 4}, None))
    ]
    aggregate(rows[0], [_run(1_000_000, 0.9, 900.0), _run(1_000_000, 0.9, 950.0, 0.02)], [0, 1], "eval_accuracy")
    aggregate(rows[1], [_run(5_000, 0.88, 600.0), _run(5_000, 0.88, 610.0, -0.04)], [0, 1], "eval_accuracy")
    aggregate(rows[2], [{"error": "PetlError: it broke"}, {"error": "PetlError: it broke"}], [0, 1], "eval_accuracy")
    timing = {"timings": {"full": {"step_time_ms": 200.0, "step_time_ms_min": 150.0, "step_time_ms_max": 260.0,
                                   "steps": 5},
                          "lora": {"step_time_ms": 120.0, "step_time_ms_min": 100.0, "step_time_ms_max": 130.0,
                                   "steps": 5}},
              "errors": {"prefix": "PetlError: it broke"}}
    add_timing(rows, timing, batch_size=16)
    add_ratios(rows)
    env = {"date": "2026-01-01T00:00:00+00:00", "python": "3.11", "versions": {"torch": "2"}, "cpu": "x",
           "cpu_count": 2, "cpus_available": 2, "torch_threads": 2, "gpu": None, "git_commit": "abc"}
    return BenchResult(name="unit", rows=rows, config={"seeds": [0, 1]}, environment=env, wall_time_s=42.0,
                       device="cpu", data={"train": "synthetic", "bag_of_words_accuracy": 0.6, "train_examples": 10,
                                           "eval_examples": 5},
                       timing={"warmup_steps": 1, "steps": 5, "batches": 2, "batch_size": 16}, output_dir=tmp_path)


def test_aggregation(result: BenchResult) -> None:
    full, lora, prefix = result.rows
    assert full.metric_values == [0.9, 0.92] and full.metric_mean == pytest.approx(0.91)
    assert full.metric_std == pytest.approx(0.0141421356, rel=1e-6)
    assert (lora.metric_min, lora.metric_max) == (pytest.approx(0.84), 0.88)
    assert full.peak_memory_mib == 950.0 and full.train_memory_mib == 450.0  # the seed that peaked highest
    assert lora.ratio_to_full == 5_000 / 1_000_000 and lora.trainable_share == 5_000 / 1_005_000
    assert lora.step_time_ratio == 0.6 and lora.throughput == 16 / 0.12
    assert prefix.error == "seed 0: PetlError: it broke; seed 1: PetlError: it broke; timing: PetlError: it broke"
    assert prefix.trainable_params is None and prefix.step_time_ms is None


def test_json_csv_and_markdown_agree(result: BenchResult, tmp_path: Path) -> None:
    written = write_reports(result, tmp_path)
    assert sorted(p.name for p in written) == sorted(["results.json", "results.csv", "results.md", *PLOTS])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"] == [row.to_dict() for row in result.rows]
    assert saved["wall_time_s"] == 42.0 and saved["environment"]["git_commit"] == "abc"
    assert BenchResult.from_dict(saved).to_dict() == saved  # reports can be redrawn from results.json

    with (tmp_path / "results.csv").open(newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["label"] for line in lines] == ["full", "lora", "prefix"]
    assert tuple(lines[0]) == CSV_COLUMNS
    for line, row in zip(lines, saved["results"], strict=True):
        for column in CSV_COLUMNS:
            value = row[column]
            if value is None:
                assert line[column] == "", column
            elif isinstance(value, (dict, list)):
                assert json.loads(line[column]) == value, column
            elif isinstance(value, bool):
                assert line[column] == str(value), column
            elif isinstance(value, (int, float)):
                assert float(line[column]) == pytest.approx(value, rel=1e-12), column
            else:
                assert line[column] == value, column

    md = (tmp_path / "results.md").read_text()
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = [line for line in lines[start:lines.index("", start)] if line.startswith("| ")]  # the first table
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == list(TABLE_HEADERS)
    split = ([x.strip() for x in line.strip("|").split("|")] for line in table[1:])
    cells = {c[0]: dict(zip(header, c, strict=True)) for c in split}
    for row in saved["results"]:
        md_row = cells[row["label"]]
        if row["trainable_params"] is None:
            assert md_row["trainable"] == "-" and md_row["step ms"] == "-"
            continue
        assert int(md_row["trainable"].replace(",", "")) == row["trainable_params"]
        assert float(md_row["share %"]) == pytest.approx(100 * row["trainable_share"], abs=5e-4)
        assert float(md_row["step ms"].replace(",", "")) == pytest.approx(row["step_time_ms"], abs=0.05)
        mean, std = (float(x) for x in md_row["metric"].split(" ± "))
        assert mean == pytest.approx(100 * row["metric_mean"], abs=0.005)
        assert std == pytest.approx(100 * row["metric_std"], abs=0.005)
        assert float(md_row["peak MiB"].replace(",", "")) == pytest.approx(row["peak_memory_mib"], abs=0.5)
    assert "prefix failed: seed 0: PetlError: it broke" in md
    assert "bag-of-words logistic regression reaches 60.0%" in md
    assert "petl commit abc" in md
    assert "| lora | lora | r=8 | 0.001 | no | adamw | no | 10 |" in md  # the rows' settings
    assert "| prefix | prefix | num_virtual_tokens=4 | trainer default | no | adamw | no | - |" in md


def test_plots_are_png_images(result: BenchResult, tmp_path: Path) -> None:
    import matplotlib.image

    write_reports(result, tmp_path)
    for name in PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_terminal_table(result: BenchResult) -> None:
    text = format_table(result)
    lines = text.splitlines()
    assert lines[0].split()[0] == "strategy"
    assert any(line.startswith("lora ") and "5,000" in line and "0.60" in line for line in lines)
    assert "prefix: ERROR seed 0: PetlError: it broke" in text
    assert "eval_accuracy (%), mean ± std over 2 seed(s)" in text


def test_a_seed_that_did_not_learn_is_named_in_every_report(result: BenchResult, tmp_path: Path) -> None:
    stuck = StrategyResult(label="lora-hot", strategy="lora", options={}, learning_rate=5e-3, mixed_precision="no",
                           optimizer="adamw", load_in_8bit=False)
    runs = [_run(5_000, 0.88, 600.0), _run(5_000, 0.6, 600.0)]  # seed 1 scores what the majority class scores
    for run in runs:
        run.update(constant_metric=0.6, eval_examples=10)
    aggregate(stuck, runs, [0, 1], "eval_accuracy")
    assert stuck.constant_metric == 0.6 and stuck.stalled_seeds == [1]
    result.rows.append(stuck)
    result.verdict = None  # no verdict sentence: the table notes and results.md say it themselves
    note = "lora-hot: seed 1 did not learn (60.00; always predicting the most frequent label scores 60.00)"
    assert note in format_table(result)
    write_reports(result, tmp_path, plots=False)
    assert f"* {note}." in (tmp_path / "results.md").read_text()
    rows = {r["label"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert rows["lora-hot"]["stalled_seeds"] == "[1]" and rows["lora"]["stalled_seeds"] == "[]"
