"""Metrics against hand-counted values: accuracy, macro F1, conlleval-style entity F1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from petl.errors import ConfigError, PetlError
from petl.metrics import (
    EVALUATE_MODULES,
    TaskEvaluator,
    accuracy,
    entities,
    entity_scores,
    evaluate_module_path,
    evaluator_for,
    f1_score,
    perplexity,
)

# 3 classes: class 0: tp 2, fp 1, fn 0 -> F1 4/5; class 1: tp 1, fp 1, fn 2 -> 2/5; class 2: tp 0, fp 1, fn 1 -> 0.
PREDS = [0, 0, 1, 0, 2, 1]
REFS = [0, 0, 1, 1, 1, 2]


def test_accuracy_and_f1_by_hand():
    assert accuracy(PREDS, REFS) == pytest.approx(3 / 6)
    assert f1_score(PREDS, REFS) == pytest.approx((4 / 5 + 2 / 5 + 0) / 3)
    assert f1_score(PREDS, REFS, average="micro") == pytest.approx(3 / 6)
    assert f1_score(PREDS, REFS, average="weighted") == pytest.approx((4 / 5 * 2 + 2 / 5 * 3 + 0 * 1) / 6)
    assert f1_score(PREDS, REFS, average="binary", pos_label=1) == pytest.approx(2 / 5)
    assert f1_score([1, 1], [1, 1]) == 1.0
    with pytest.raises(ConfigError, match="average"):
        f1_score(PREDS, REFS, average="samples")
    with pytest.raises(ConfigError, match="2 predictions but 3 references"):
        accuracy([0, 1], [0, 1, 1])


def test_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed: parity check skipped")
    generator = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 4, (200,), generator=generator).tolist()
    refs = torch.randint(0, 4, (200,), generator=generator).tolist()
    for average in ("macro", "micro", "weighted"):
        assert f1_score(preds, refs, average=average) == pytest.approx(metrics.f1_score(refs, preds, average=average))


def test_entities_iob2_and_iob1_chunking():
    # IOB2: B- starts every entity.
    assert entities(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)]
    # IOB1: a run of I- is one entity; B- only separates two adjacent entities of one type.
    assert entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    # I- after a different type starts a new entity; I- after O too.
    assert entities(["I-PER", "I-LOC", "O", "I-ORG", "I-ORG"]) == [("PER", 0, 1), ("LOC", 1, 2), ("ORG", 3, 5)]
    # An entity at the very end is closed.
    assert entities(["O", "B-MISC"]) == [("MISC", 1, 2)]
    assert entities(["O", "O"]) == []
    # IOBES: E- closes, S- is a one-word entity.
    assert entities(["B-PER", "E-PER", "S-LOC", "I-ORG", "E-ORG"]) == [("PER", 0, 2), ("LOC", 2, 3), ("ORG", 3, 5)]


def test_entity_scores_iob2_by_hand():
    references = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"], ["O", "B-MISC"]]
    predictions = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O"], ["O", "B-MISC"]]
    # reference entities: PER(0,2) LOC(3,4) ORG(5,7) MISC; predicted: PER(0,2) ORG(3,4) ORG(5,6) MISC.
    # correct: PER, MISC -> 2 of 4 predicted, 2 of 4 true. Tags equal at 7 of 9 positions.
    scores = entity_scores(predictions, references)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["accuracy"] == pytest.approx(7 / 9)
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert scores["per_type"]["LOC"]["number"] == 1


def test_entity_scores_iob1_by_hand():
    references = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]  # PER(0,2) PER(2,3) LOC(4,5)
    predictions = [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]]  # PER(0,3) LOC(4,5)
    scores = entity_scores(predictions, references)
    precision, recall = 1 / 2, 1 / 3
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(2 * precision * recall / (precision + recall))  # 0.4
    assert scores["accuracy"] == pytest.approx(4 / 5)


def test_entity_scores_edge_cases():
    assert entity_scores([["O"]], [["O"]])["f1"] == 0.0  # no entities anywhere: 0, not a division error
    with pytest.raises(ConfigError, match="Sentence 0 has 1 predicted tags but 2"):
        entity_scores([["O"]], [["O", "O"]])


def test_classification_evaluator_from_logits():
    evaluator = evaluator_for("sequence-classification")
    assert isinstance(evaluator, TaskEvaluator)
    logits = torch.nn.functional.one_hot(torch.tensor(PREDS), 3).float() * 5 - 1
    evaluator.add_batch(logits=logits[:4], labels=torch.tensor(REFS[:4]))
    evaluator.add_batch(logits=logits[4:], labels=torch.tensor(REFS[4:]))
    evaluator.add_batch(logits=torch.zeros(1, 3), labels=torch.tensor([-100]))  # ignored
    assert evaluator.compute() == pytest.approx({"accuracy": 0.5, "f1": (4 / 5 + 2 / 5) / 3})
    assert evaluator.compute() == {}  # compute starts afresh, like evaluate


def test_token_classification_evaluator_ignores_minus_100():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    evaluator = evaluator_for("token-classification", names)
    # Sentence 1 (words): B-PER I-PER O B-LOC, predicted B-PER O O B-LOC.
    # Sentence 2: B-LOC I-LOC, predicted B-LOC I-LOC. Positions labelled -100 hold wrong predictions.
    labels = torch.tensor([[-100, 1, 2, -100, 0, 3, -100], [-100, 3, 4, -100, -100, -100, -100]])
    predicted = torch.tensor([[4, 1, 0, 3, 0, 3, 2], [1, 3, 4, 2, 2, 2, 2]])
    evaluator.add_batch(logits=torch.nn.functional.one_hot(predicted, 5).float(), labels=labels)
    scores = evaluator.compute()
    # true: PER(0,2) LOC(3,4) | LOC(0,2); predicted: PER(0,1) LOC(3,4) | LOC(0,2) -> 2 correct of 3 / 3.
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "accuracy": 5 / 6})


def test_generative_tasks_have_no_metrics_and_bad_input_is_explained():
    for task in ("causal-lm", "seq2seq"):
        evaluator = evaluator_for(task)
        evaluator.add_batch(logits=torch.zeros(1, 2, 5), labels=torch.zeros(1, 2, dtype=torch.long))
        assert evaluator.compute() == {}
    with pytest.raises(PetlError, match="Did you mean 'token-classification'"):
        evaluator_for("token-clasification")
    with pytest.raises(ConfigError, match="label_names"):
        evaluator_for("token-classification")
    assert perplexity(0.0) == 1.0
    assert perplexity(2.0) == pytest.approx(7.38905609893065)
    assert perplexity(1e6) == float("inf")


def test_evaluate_module_paths():
    for name in EVALUATE_MODULES:
        path = evaluate_module_path(name)
        assert (path / f"{name}.py").is_file()
    with pytest.raises(ConfigError, match="Did you mean 'accuracy'"):
        evaluate_module_path("acuracy")


_OFFLINE_SCRIPT = """
import socket

def _no_network(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = _no_network  # any attempt to reach the Hub fails loudly
socket.create_connection = _no_network

import json, evaluate
from petl.metrics import evaluate_module_path
out = {}
m = evaluate.load(str(evaluate_module_path("accuracy")))
out["accuracy"] = m.compute(predictions=%(preds)s, references=%(refs)s)
m = evaluate.load(str(evaluate_module_path("f1")))
m.add_batch(predictions=%(preds)s[:3], references=%(refs)s[:3])
m.add_batch(predictions=%(preds)s[3:], references=%(refs)s[3:])
out["f1"] = m.compute()
m = evaluate.load(str(evaluate_module_path("seqeval")))
out["seqeval"] = m.compute(predictions=[["I-PER", "I-PER", "I-PER", "O", "I-LOC"]],
                           references=[["I-PER", "I-PER", "B-PER", "O", "I-LOC"]])
print("RESULT" + json.dumps(out))
"""


def test_evaluate_modules_load_offline(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache: nothing can come from an earlier download
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    script = _OFFLINE_SCRIPT % {"preds": PREDS, "refs": REFS}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT", 1)[1])
    assert out["accuracy"] == {"accuracy": pytest.approx(0.5)}
    assert out["f1"] == {"f1": pytest.approx((4 / 5 + 2 / 5) / 3)}
    seqeval = out["seqeval"]
    assert seqeval["overall_precision"] == pytest.approx(1 / 2)
    assert seqeval["overall_recall"] == pytest.approx(1 / 3)
    assert seqeval["overall_f1"] == pytest.approx(0.4)
    assert seqeval["overall_accuracy"] == pytest.approx(4 / 5)
    assert seqeval["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 2}
    assert seqeval["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
