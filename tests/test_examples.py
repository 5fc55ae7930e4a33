"""Every example runs, on a tiny budget, and says what it should.

The scripts take ``--quick``; the plugin example is really installed (into a
temporary folder) and then has to pass the conformance suite like a built-in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import tiny_models as T

from petl.bench.report import PLOTS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args: list[str], tmp_path: Path, timeout: int = 600, **env: str) -> str:
    environment = {**os.environ, "PETL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = _run([str(EXAMPLES / "quickstart.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "74,498 / 22,788,484 (0.33%)" in out
    assert "loaded: identical outputs" in out
    assert (tmp_path / "quickstart-lora" / "adapter_model.safetensors").is_file()


def test_text_classification(tmp_path: Path) -> None:
    out = _run([str(EXAMPLES / "text_classification.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "lora " in out and "adalora " in out and out.count("accuracy") == 2
    assert "AdaLoRA ranks after training" in out


def test_ner_bottleneck(tmp_path: Path) -> None:
    out = _run([str(EXAMPLES / "ner_bottleneck.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "entity F1" in out and "trainable / total" in out


def test_causal_lm_prefix_and_8bit(tmp_path: Path) -> None:
    out = _run([str(EXAMPLES / "causal_lm.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "prefix (fp32 base)" in out and "lora (8-bit base)" in out
    assert out.count("perplexity") == 2


def test_trl_sft_trainer_saves_an_adapter_that_peft_and_petl_reload_identically(tmp_path: Path) -> None:
    out = _run([str(EXAMPLES / "trl_sft.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "peft reload: identical outputs" in out and "petl reload: identical outputs" in out
    saved = tmp_path / "trl-sft-lora" / "adapter"
    assert (saved / "petl_config.json").is_file() and not (saved / "model.safetensors").exists()


def test_custom_strategy_plugin_installs_and_passes_conformance(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLES / "custom_strategy")],
        check=True, capture_output=True, timeout=300,
    )
    pythonpath = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    out = _run([str(EXAMPLES / "custom_strategy" / "demo.py")], tmp_path, PYTHONPATH=pythonpath)
    assert "ia3_hooks" in out.split("registered strategies:")[1].splitlines()[0]
    assert "merged back into a plain BertForSequenceClassification" in out
    report = tmp_path / "conformance.xml"
    conformance = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_conformance.py"), "-k", "ia3_hooks",
         f"--junitxml={report}"],
        tmp_path, PYTHONPATH=pythonpath,
    )
    # Every lifecycle and merge case of the table, and the check that some model is supported.
    expected = {f"{test}[ia3_hooks-{arch}-{head}]"
                for test in ("test_lifecycle", "test_merge") for arch, head in T.CASES}
    expected.add("test_every_strategy_supports_some_model[ia3_hooks]")
    assert len(expected) == 2 * len(T.CASES) + 1
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": len(expected), "failures": 0, "errors": 0, "skipped": 0}, conformance[-2000:]
    passed = {case.get("name") for case in suite.iter("testcase") if len(case) == 0 or
              all(child.tag in ("system-out", "system-err", "properties") for child in case)}
    assert passed == expected, (sorted(expected - passed), sorted(passed - expected))
    summary = conformance.strip().splitlines()[-1]
    assert f"{len(expected)} passed" in summary and "failed" not in summary and "error" not in summary, summary


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")))
def test_examples_are_short(script: str) -> None:
    assert len((EXAMPLES / script).read_text().splitlines()) <= 150


def test_compare_strategies_notebook_runs_headless(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(EXAMPLES / "compare_strategies.ipynb", as_version=4)
    os.environ["PETL_NOTEBOOK_QUICK"] = "1"
    os.environ["PETL_NOTEBOOK_OUTPUT"] = str(tmp_path / "bench")
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        os.environ.pop("PETL_NOTEBOOK_QUICK")
        os.environ.pop("PETL_NOTEBOOK_OUTPUT")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    table = next(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    for strategy in ("full", "lora", "adalora", "prefix", "bottleneck"):
        assert f"| {strategy} |" in table
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(PLOTS)


def test_committed_notebook_holds_a_real_run() -> None:
    import nbformat

    notebook = nbformat.read(EXAMPLES / "compare_strategies.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    table = next(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "800 training, 300 evaluation examples" in table, "the committed outputs must come from the full default"


def test_chinese_classification_runs_lora_on_a_tiny_gemma3(tmp_path: Path) -> None:
    out = _run([str(EXAMPLES / "chinese_classification.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "model: Gemma3TextForSequenceClassification" in out and "dev accuracy" in out and "after 3 steps" in out
    assert "predictions: [" in out and ("Positive" in out.split("predictions:")[1] or "Negative" in out)


def test_chat_smollm2_trains_on_assistant_turns_and_replies(tmp_path: Path) -> None:
    if not (ROOT.parent / "shared" / "data" / "oasst").is_dir():
        pytest.skip("the OpenAssistant data (../shared/data/oasst) is absent")
    out = _run([str(EXAMPLES / "chat_smollm2.py"), "--quick", "--output", str(tmp_path)], tmp_path)
    assert "split by tree id" in out and "held-out loss on assistant turns" in out
    assert out.count("before:") == 1 and out.count("after:") == 1
