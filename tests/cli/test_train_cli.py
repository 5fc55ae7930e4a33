"""The ``petl train`` command on tiny models and tiny files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny_models as tm
import torch
import transformers as tf

import petl
from petl.cli import build_parser, main, parse_set
from petl.modeling.demo import minilm_path

SENTENCES = ["a fine film", "a dull film", "fine acting and a fine plot", "dull acting", "fine", "dull"] * 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT with MiniLM's vocabulary (so MiniLM's tokenizer fits it) and tiny data files."""
    root = tmp_path_factory.mktemp("cli")
    config = tm.config("bert")
    config.vocab_size = tf.AutoTokenizer.from_pretrained(minilm_path()).vocab_size
    torch.manual_seed(0)
    tf.BertModel(config).save_pretrained(root / "tiny-bert")
    rows = "".join(f"{s}\t{int('fine' in s)}\n" for s in SENTENCES)
    (root / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (root / "no_label.tsv").write_text("sentence\tstars\n" + rows)
    conll = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\nBRUSSELS B-LOC\n1996 O\n\n"
    (root / "ner.txt").write_text(conll * 3)
    return {"root": root, "model": root / "tiny-bert", "train": root / "train.tsv",
            "no_label": root / "no_label.tsv", "ner": root / "ner.txt"}


def _args(files: dict[str, Path], output: Path, *extra: str, task: str = "sequence-classification",
          data: str = "train") -> list[str]:
    return ["train", "--model", str(files["model"]), "--tokenizer", str(minilm_path()), "--task", task,
            "--train", str(files[data]), "--validation", str(files[data]), "--max-length", "16",
            "--batch-size", "4", "--max-steps", "3", "--output", str(output), "--no-progress", *extra]


def test_set_values_parse_as_json_where_possible() -> None:
    assert parse_set("r=8") == ("r", 8)
    assert parse_set("alpha=16.5") == ("alpha", 16.5)
    assert parse_set('target_modules=["query","value"]') == ("target_modules", ["query", "value"])
    assert parse_set("use_rslora=true") == ("use_rslora", True)
    assert parse_set("use_rslora=False") == ("use_rslora", False)
    assert parse_set("target_modules=all-linear") == ("target_modules", "all-linear")
    assert parse_set("name=a=b") == ("name", "a=b")
    with pytest.raises(petl.PetlError, match="key=value"):
        parse_set("r8")


def test_the_command_has_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "--model", "m", "--task", "causal-lm", "--train", "t",
                              "--output", "o"]).command == "train"
    assert main([]) == 2  # no subcommand: the help, on stderr
    assert "train" in capsys.readouterr().err


def test_train_writes_metrics_the_best_adapter_and_a_log(files: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run"
    code = main(_args(files, output, "--strategy", "lora", "--set", "r=4", "--set", "alpha=8",
                      "--learning-rate", "1e-2", "--eval-steps", "3", "--logging-steps", "1"))
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"eval_loss", "eval_accuracy", "eval_f1"}
    assert json.loads(capsys.readouterr().out)["metrics"] == metrics
    saved = json.loads((output / "best" / "petl_config.json").read_text())
    assert saved["strategy"] == "lora" and saved["config"]["r"] == 4 and saved["config"]["alpha"] == 8
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    base = tf.AutoModelForSequenceClassification.from_pretrained(files["model"], num_labels=2)
    petl.load(base, output / "best")  # the adapter fits the base it was trained on


def test_full_fine_tuning_in_8bit_is_refused_and_full_saves_the_model(files: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(files, tmp_path / "x", "--strategy", "full", "--load-in-8bit")) == 2
    assert "--strategy full cannot" in capsys.readouterr().err
    output = tmp_path / "full"
    assert main(_args(files, output, "--strategy", "full")) == 0
    assert (output / "best" / "model.safetensors").is_file()
    reloaded = tf.AutoModelForSequenceClassification.from_pretrained(output / "best")
    assert reloaded.config.num_labels == 2


def test_token_classification_in_8bit_with_the_8bit_optimizer(files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "ner"
    code = main(_args(files, output, "--load-in-8bit", "--optimizer", "adamw8bit", "--set", "r=4",
                      task="token-classification", data="ner"))
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_accuracy"} <= set(metrics)
    config = json.loads((output / "best" / "petl_config.json").read_text())
    assert config["model"]["class"] == "BertForTokenClassification"


def test_split_limits(files: dict[str, Path], tmp_path: Path) -> None:
    from petl.cli.train import _load_data

    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    args = build_parser().parse_args(_args(files, tmp_path, "--train-limit", "4", task="token-classification",
                                           data="ner"))
    data = _load_data(args, tokenizer)
    assert (len(data.train), len(data.eval)) == (4, 9)
    assert data.label_names == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    args = build_parser().parse_args(_args(files, tmp_path, "--limit", "5", "--eval-limit", "2"))
    data = _load_data(args, tokenizer)
    assert (len(data.train), len(data.eval), data.num_labels) == (5, 2, 2)


@pytest.mark.parametrize(
    "extra, data, message",
    [
        ((), "no_label", "stars"),  # the missing label column: the message lists the columns found
        (("--strategy", "lroa"), "train", "Did you mean 'lora'"),
        (("--set", "alpah=8"), "train", "Did you mean 'alpha'"),
        (("--strategy", "full", "--set", "r=4"), "train", "no meaning with --strategy full"),
        (("--mixed-precision", "fp8"), "train", "mixed_precision"),
    ],
)
def test_bad_input_is_one_message_and_exit_code_2(files: dict[str, Path], tmp_path: Path, extra: tuple[str, ...],
                                                   data: str, message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(files, tmp_path / "run", *extra, data=data)) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("petl train: error:") and message in last and "Traceback" not in err


def test_the_installed_command_reports_errors_without_a_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "petl"
    command: list[Any] = [str(script)] if script.is_file() else [sys.executable, "-m", "petl.cli"]
    done = subprocess.run([*command, *_args(files, tmp_path / "run", data="no_label")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "petl train: error:" in done.stderr and "label" in done.stderr and "Traceback" not in done.stderr


def test_unwritable_output_is_reported_before_loading(files: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(files, files["train"] / "run")) == 2  # a folder inside a file
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("petl train: error: The output folder") and "not writable" in last
