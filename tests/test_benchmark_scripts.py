"""The step-time scripts in benchmarks/ run end to end on a tiny budget and write
their JSON and Markdown with the shared environment record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _check_environment(result: dict, markdown: str) -> None:
    env = result["environment"]
    assert env["versions"]["torch"] and env["cpu_count"] >= 1 and "load_average_end" in env
    assert "## Environment" in markdown and f"petl commit {env['git_commit'] or 'unknown'}" in markdown


def test_prefix_step_time_script(tmp_path: Path) -> None:
    _run("prefix_step_time.py", "--model", "llama-tiny", "--warmup", "1", "--steps", "2", "--out", str(tmp_path))
    result = json.loads((tmp_path / "prefix_step_time.json").read_text())
    assert set(result["variants"]) == {"full fine-tuning", "petl prefix", "peft prefix"}
    flat = result["variants"]["petl prefix"]
    assert len(flat["samples_s"]) == 2 and flat["trainable"] == result["variants"]["peft prefix"]["trainable"]
    assert flat["ratio_to_peft"] == pytest.approx(flat["median_s"] / result["variants"]["peft prefix"]["median_s"])
    _check_environment(result, (tmp_path / "prefix_step_time.md").read_text())


@pytest.mark.real_data
def test_bottleneck_step_time_script(tmp_path: Path) -> None:
    _run("bottleneck_step_time.py", "--batch-size", "4", "--max-length", "16", "--warmup", "1", "--rounds", "2",
         "--threads", "1", "--out", str(tmp_path))
    result = json.loads((tmp_path / "bottleneck_step_time.json").read_text())
    assert set(result["variants"]) >= {"full fine-tuning", "lora (r 8)", "pfeiffer (rf 16)"}
    assert result["variants"]["full fine-tuning"]["ratio_to_full"] == 1.0
    assert result["target"]["met"] == (result["target"]["measured_ratio"] <= 0.85)
    _check_environment(result, (tmp_path / "bottleneck_step_time.md").read_text())


def test_import_time_script(tmp_path: Path) -> None:
    _run("import_time.py", "--runs", "1", "--out", str(tmp_path))
    result = json.loads((tmp_path / "import_time.json").read_text())
    (mine,) = result["checkouts"]
    assert set(mine) >= {"python -c pass", "import petl", "petl --help", "slowest_imports"}
    assert all(mine[c]["median_s"] > 0 for c in ("python -c pass", "import petl", "petl --help"))
    assert not any(row["module"].startswith(("torch", "transformers", "peft")) for row in mine["slowest_imports"])
    _check_environment(result, (tmp_path / "import_time.md").read_text())


def test_shared_cpu_script(tmp_path: Path) -> None:
    _run("shared_cpu.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "shared_cpu.json").read_text())
    settings = ("default", "petl", "petl-auto")
    assert set(result["cells"]) == {f"{load}/{setting}" for load in (0, 1) for setting in settings}
    assert all(cell["median_s"] > 0 and cell["steps"] == 2 for cell in result["cells"].values())
    assert result["cells"]["0/petl"]["ratio_to_idle"] == 1.0
    runs = {(r["load"], r["setting"]): r for r in result["runs"]}
    assert runs[1, "petl"]["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert runs[1, "default"]["env"]["OMP_WAIT_POLICY"] is None
    auto = runs[1, "petl-auto"]["env"]
    assert auto["OMP_WAIT_POLICY"] == "PASSIVE" and auto["OMP_NUM_THREADS"]
    target = result["target"]
    assert target["measured_ratio"] == result["cells"]["1/petl-auto"]["ratio_to_idle"]
    assert target["met"] == (target["measured_ratio"] <= 1.5) and result["load_at_start"]["load_average"]
    _check_environment(result, (tmp_path / "shared_cpu.md").read_text())


def test_lora_step_time_script(tmp_path: Path) -> None:
    _run("lora_step_time.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "lora_step_time.json").read_text())
    v = result["variants"]
    assert set(v) == {"full fine-tuning", "petl lora", "peft lora"}
    assert v["petl lora"]["trainable"] == v["peft lora"]["trainable"] < v["full fine-tuning"]["trainable"]
    assert result["petl_over_peft"] == v["petl lora"]["median_s"] / v["peft lora"]["median_s"]
    low, high = result["paired_petl_over_peft_iqr"]
    assert 0 < low <= result["paired_petl_over_peft"] <= high
    assert result["targets"]["lora_at_most_0.72_of_full"] == (result["lora_over_full"] <= 0.72)
    _check_environment(result, (tmp_path / "lora_step_time.md").read_text())


def test_token_weighted_loss_script(tmp_path: Path) -> None:
    _run("token_weighted_loss.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "token_weighted_loss.json").read_text())
    variants = result["case"]["variants"]
    assert list(variants) == ["random order", "length-grouped", "length-grouped, token-weighted"]
    assert {r["variant"] for r in result["runs"]} == set(variants) and len(result["runs"]) == 3
    weighted, grouped = variants["length-grouped, token-weighted"], variants["length-grouped"]
    # the same batches (same seed, both grouped), trained with other loss weights
    assert weighted["padded_fraction"] == grouped["padded_fraction"] < variants["random order"]["padded_fraction"]
    for v in (weighted, grouped):
        assert v["difference_by_seed"] == [v["metric_runs"]["0"] - variants["random order"]["metric_runs"]["0"]]
    _check_environment(result, (tmp_path / "token_weighted_loss.md").read_text())


def test_padding_script(tmp_path: Path) -> None:
    _run("padding.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "padding.json").read_text())
    assert set(result["cases"]) == {"sst2", "conll2003", "causal"}
    for case in result["cases"].values():
        assert all(v["tokens_per_second"] > 0 and 0 <= v["padded_fraction"] < 1 for v in case["variants"].values())
    grouped, random = (result["cases"]["sst2"]["variants"][v] for v in ("length-grouped", "random order"))
    assert grouped["padded_fraction"] < random["padded_fraction"]
    packed, padded = (result["cases"]["causal"]["variants"][v] for v in ("packed", "padded"))
    assert packed["padded_fraction"] < padded["padded_fraction"]
    assert packed["metric_mean"] == pytest.approx(padded["metric_mean"], rel=1e-4)  # the same batches, packed
    assert result["target"]["met"] == all(s >= 1.3 for s in result["target"]["speedups"].values())
    _check_environment(result, (tmp_path / "padding.md").read_text())


def test_estimate_accuracy_script(tmp_path: Path) -> None:
    _run("estimate_accuracy.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "estimate_accuracy.json").read_text())
    assert result["quick"] and len(result["cases"]) == 2
    for case in result["cases"]:
        parts = case["estimate"]
        assert parts["total_mib"] > parts["activations_mib"] > 0 and parts["weights_mib"] > 0
        assert abs(case["mmap_64k"]["error_pct"]) <= result["summary"]["target_pct"]
        assert case["glibc_default"]["measured_mib"] > 0
    _check_environment(result, (tmp_path / "estimate_accuracy.md").read_text())


def test_paired_rows_script_matches_the_difference_a_run_computes_itself(tmp_path: Path) -> None:
    tuned = ROOT / "benchmarks" / "results" / "sst2_minilm_tuned"
    rerun = json.loads((tuned / "results.json").read_text())
    rerun["timing"]["timings"] = {"lora": {"step_time_ms": 1.0}}  # a rerun of one row times only that row
    rerun["timing"]["wall_time_s"] = 1.0
    (tmp_path / "results.json").write_text(json.dumps(rerun))
    _run("paired_rows.py", str(tuned), "full", str(tmp_path), "lora")
    record = json.loads((tmp_path / "paired_lora_vs_full.json").read_text())
    lora = next(r for r in json.loads((tuned / "results.json").read_text())["results"] if r["label"] == "lora")
    assert record["difference"]["mean"] == pytest.approx(lora["diff_to_full"])
    assert [record["difference"]["low"], record["difference"]["high"]] == pytest.approx(lora["diff_ci"])
    assert record["indistinguishable"] == lora["indistinguishable"]
    # runs on other data are refused
    other = json.loads((tmp_path / "results.json").read_text())
    other["data"]["max_length"] = 128
    (tmp_path / "results.json").write_text(json.dumps(other))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_rows.py"), str(tuned), "full",
                           str(tmp_path), "lora"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "differ in data" in done.stderr
    # and so are runs timed on other batches
    other["data"]["max_length"] = rerun["data"]["max_length"]
    other["timing"]["batch_size"] = 16
    (tmp_path / "results.json").write_text(json.dumps(other))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_rows.py"), str(tuned), "full",
                           str(tmp_path), "lora"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "differ in their timing setup" in done.stderr
