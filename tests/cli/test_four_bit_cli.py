"""``petl train --load-in-4bit`` and its ``--bnb-4bit-*`` flags on a tiny local model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models as tm
import torch
import transformers as tf

import petl
from petl.cli import main
from petl.modeling.demo import minilm_path

bnb = pytest.importorskip("bitsandbytes")

SENTENCES = ["a fine film", "a dull film", "fine acting and a fine plot", "dull acting", "fine", "dull"] * 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT with MiniLM's vocabulary (so MiniLM's tokenizer fits it) and a tiny data file."""
    root = tmp_path_factory.mktemp("cli4")
    config = tm.config("bert")
    config.vocab_size = tf.AutoTokenizer.from_pretrained(minilm_path()).vocab_size
    torch.manual_seed(0)
    tf.BertModel(config).save_pretrained(root / "tiny-bert")
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{int('fine' in s)}\n" for s in SENTENCES))
    return {"model": root / "tiny-bert", "train": root / "train.tsv"}


def _args(files: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(files["model"]), "--tokenizer", str(minilm_path()),
            "--task", "sequence-classification", "--train", str(files["train"]), "--validation", str(files["train"]),
            "--max-length", "16", "--batch-size", "4", "--max-steps", "2", "--output", str(output), "--no-progress",
            "--set", "r=4", *extra]


def test_train_in_4bit_fp4_with_double_quant(files: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from petl.modeling import loading

    loaded = []
    real = loading.load_model

    def spy(*args, **kwargs):  # the model the command trains, to look at its layers
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(loading, "load_model", spy)
    output = tmp_path / "run"
    code = main(_args(files, output, "--load-in-4bit", "--bnb-4bit-quant-type", "fp4", "--bnb-4bit-double-quant",
                      "--bnb-4bit-compute-dtype", "float32"))
    assert code == 0
    assert set(json.loads((output / "metrics.json").read_text())) >= {"eval_loss", "eval_accuracy"}
    query = loaded[0].bert.encoder.layer[0].attention.self.query.base_layer
    assert isinstance(query, bnb.nn.Linear4bit)
    assert query.weight.quant_type == "fp4" and query.weight.quant_state.nested
    # the adapter fits the same base loaded in 4-bit again
    from petl.modeling.quantization import Quantization

    base = real(str(files["model"]), "sequence-classification", num_labels=2,
                quantization=Quantization(quant_type="fp4", double_quant=True))
    petl.load(base, output / "best")


@pytest.mark.parametrize("extra, message", [
    (["--load-in-8bit", "--load-in-4bit"], "--load-in-8bit and --load-in-4bit were both given"),
    (["--bnb-4bit-quant-type", "fp4"], "--bnb-4bit-quant-type describe 4-bit loading, which is off"),
    (["--load-in-4bit", "--bnb-4bit-quant-type", "int4"], "--bnb-4bit-quant-type must be one of 'nf4', 'fp4'"),
    (["--load-in-4bit", "--bnb-4bit-compute-dtype", "fp64"], "--bnb-4bit-compute-dtype must be one of"),
    (["--load-in-4bit", "--strategy", "full"], "--load-in-4bit freezes the base weights in 4-bit, so --strategy full"),
])
def test_bad_4bit_flags_are_one_line_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             extra: list[str], message: str) -> None:
    args = _args(files, tmp_path / "x", *extra)
    if "full" in extra:
        args.remove("--set"), args.remove("r=4")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before anything was loaded or written
