"""``petl train --seed N`` is reproducible bit for bit, also across an interruption and
``--resume``; its user errors are one line on stderr with exit code 2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from petl.cli import main
from petl.training import loop

ROWS = ["a fine film", "a dull film", "fine acting and a fine plot", "dull acting", "fine", "dull", "so fine",
        "so dull"] * 2


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{int('fine' in s)}\n" for s in ROWS))
    return path


def _args(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", "sequence-classification", "--train", str(data),
            "--max-length", "16", "--batch-size", "4", "--max-steps", "5", "--save-steps", "2", "--logging-steps", "1",
            "--learning-rate", "1e-2", "--set", "r=4", "--set", "dropout=0.1", "--no-progress", "--output",
            str(output), *extra]


def _adapter(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "best" / "adapter_model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(output: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def seeded(tiny_model_dir: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output of ``petl train --seed 3`` (a fresh head and adapter on a base model without a head)."""
    output = tmp_path_factory.mktemp("seeded") / "run"
    assert main(_args(tiny_model_dir, data_file, output, "--seed", "3")) == 0
    return output


def test_the_same_seed_gives_the_same_adapter_and_another_seed_another(
        seeded: Path, tiny_model_dir: Path, data_file: Path, tmp_path: Path) -> None:
    torch.manual_seed(12345)  # whatever state the generators were left in, --seed decides
    assert main(_args(tiny_model_dir, data_file, tmp_path / "again", "--seed", "3")) == 0
    assert _same(_adapter(seeded), _adapter(tmp_path / "again"))
    assert main(_args(tiny_model_dir, data_file, tmp_path / "other", "--seed", "4")) == 0
    other = _adapter(tmp_path / "other")
    assert all(not torch.equal(other[k], v) for k, v in _adapter(seeded).items())  # the head and every LoRA matrix


def test_an_interrupted_run_resumed_gives_the_adapter_and_log_of_an_uninterrupted_one(
        seeded: Path, tiny_model_dir: Path, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    real = loop.finish_step

    def ctrl_c_in_step_4(optimizer: Any, strategy: Any, unwrapped: torch.nn.Module, step: int) -> None:
        if step == 4:  # steps 1-3 taken, checkpoint-2 written, step 3 logged
            raise KeyboardInterrupt
        real(optimizer, strategy, unwrapped, step)

    output = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "finish_step", ctrl_c_in_step_4)
        assert main(_args(tiny_model_dir, data_file, output, "--seed", "3")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _steps(output) == [1, 2, 3] and not (output / "best").exists()
    assert main(_args(tiny_model_dir, data_file, output, "--seed", "3", "--resume")) == 0
    assert _same(_adapter(output), _adapter(seeded))  # bit for bit
    assert _steps(output) == _steps(seeded) == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def classifier_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved classifier with a trained (here: random) 3-label head, next to its tokenizer."""
    folder = tmp_path_factory.mktemp("classifier")
    config = tf.AutoConfig.from_pretrained(tiny_model_dir, num_labels=3)
    torch.manual_seed(0)
    tf.BertForSequenceClassification(config).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--label-names", "a,b,c,d"), r"head has 3 labels \(LABEL_0, LABEL_1, LABEL_2\), but the data has 4\. "
                                       r"Train from a base model without a head"),
        ((), "head has 3 labels .*but the data has 2. Pass --label-names"),
    ],
)
def test_a_trained_head_with_other_labels_is_one_message(classifier_dir: Path, data_file: Path, tmp_path: Path,
                                                         extra: tuple[str, ...], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(classifier_dir, data_file, tmp_path / "run", *extra)
    if extra:  # labels given by name: the data's 0/1 are not among them, so give the file names
        data = tmp_path / "named.tsv"
        data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{'abcd'[int('fine' in s)]}\n" for s in ROWS))
        args[args.index("--train") + 1] = str(data)
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("petl train: error:") and "Traceback" not in err
    assert re.search(message, last), last


def test_a_trained_head_with_the_data_labels_trains(classifier_dir: Path, data_file: Path, tmp_path: Path) -> None:
    assert main(_args(classifier_dir, data_file, tmp_path / "run", "--label-names", "0,1,2", "--max-steps", "1")) == 0


def test_an_unknown_metric_is_refused_before_the_model_loads(data_file: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-model"  # never read: the option is checked first
    assert main(_args(missing, data_file, tmp_path / "run", "--metric-for-best", "acuracy")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("petl train: error: metric_for_best='acuracy'") and "Did you mean 'eval_accuracy'" in last


def test_a_resume_under_other_options_is_refused_before_the_model_loads(
        seeded: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run"
    shutil.copytree(seeded, output)
    files = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    missing = tmp_path / "no-such-model"  # never read: the checkpoint's options are checked first
    assert main(_args(missing, data_file, output, "--seed", "3", "--resume", "--batch-size", "8")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("petl train: error: Cannot resume") and "batch_size: checkpoint 4, now 8" in last
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == files
