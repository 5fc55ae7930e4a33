"""The task vocabulary: one list of tasks, and heads, metrics and classes that agree with it."""

from __future__ import annotations

import pytest
import tiny_models as T
import transformers

from petl.errors import ConfigError, UnknownTaskError
from petl.tasks import (
    AUTO_CLASSES,
    CLASSIFICATION_TASKS,
    DEFAULT_METRIC,
    LM_TASKS,
    REPORTED_METRICS,
    TASKS,
    auto_class_name,
    check_task,
    task_of_model,
)


def test_every_table_covers_every_task() -> None:
    for table in (AUTO_CLASSES, REPORTED_METRICS, DEFAULT_METRIC):
        assert tuple(table) == TASKS
    assert set(CLASSIFICATION_TASKS) | set(LM_TASKS) | {"question-answering"} == set(TASKS)
    for task in TASKS:
        assert DEFAULT_METRIC[task] in REPORTED_METRICS[task]


@pytest.mark.parametrize("task", TASKS)
def test_auto_classes_exist_and_build_models_of_that_task(task: str) -> None:
    auto = getattr(transformers, auto_class_name(task))
    arch = "t5" if task == "seq2seq" else "llama"
    assert task_of_model(auto.from_config(T.config(arch))) == task


def test_check_task_suggests_the_nearest() -> None:
    assert check_task("causal-lm") == "causal-lm"
    with pytest.raises(UnknownTaskError, match=r"Unknown task 'causal_lm'\. Did you mean 'causal-lm'\?") as info:
        check_task("causal_lm")
    assert isinstance(info.value, ConfigError)
    with pytest.raises(UnknownTaskError):
        check_task(None)


def test_task_of_model_on_the_tiny_models() -> None:
    heads = {"seq-cls": "sequence-classification", "token-cls": "token-classification", "causal-lm": "causal-lm",
             "seq2seq-lm": "seq2seq", "qa": "question-answering"}
    for arch, head in T.CASES:
        assert task_of_model(T.build(arch, head)) == heads[head], (arch, head)
    assert task_of_model(T.build("bert", "seq-cls").bert) is None  # a bare body has no task
