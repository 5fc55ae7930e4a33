"""The task vocabulary every part of petl shares.

A *task* names what a model is fine-tuned for and so which head it carries, which
data it reads and which metrics it reports:

| task | head (``transformers`` auto class) | reported metrics |
| --- | --- | --- |
| ``sequence-classification`` | ``AutoModelForSequenceClassification`` | loss, accuracy, macro F1 |
| ``token-classification`` | ``AutoModelForTokenClassification`` | loss, entity precision / recall / F1, tag accuracy |
| ``causal-lm`` | ``AutoModelForCausalLM`` | loss, perplexity |
| ``seq2seq`` | ``AutoModelForSeq2SeqLM`` | loss, perplexity |
| ``question-answering`` | ``AutoModelForQuestionAnswering`` | loss, exact match, F1 (SQuAD / CMRC 2018) |

This module imports nothing heavy, so the command line can offer the task names
without loading torch.
"""

from __future__ import annotations

from typing import Any

from petl.errors import UnknownTaskError, suggest

__all__ = [
    "AUTO_CLASSES",
    "CLASSIFICATION_TASKS",
    "DEFAULT_METRIC",
    "IGNORE_INDEX",
    "LM_TASKS",
    "PEFT_TASK_TYPES",
    "REPORTED_METRICS",
    "TASKS",
    "auto_class_name",
    "check_task",
    "task_of_model",
]

TASKS = ("sequence-classification", "token-classification", "causal-lm", "seq2seq", "question-answering")
"""Every task petl trains, evaluates and benchmarks."""
CLASSIFICATION_TASKS = ("sequence-classification", "token-classification")
"""Tasks whose labels are class ids, checked against the head's ``num_labels``."""
LM_TASKS = ("causal-lm", "seq2seq")
"""Generative tasks: the evaluation reports perplexity instead of class metrics."""

IGNORE_INDEX = -100
"""The label value the loss of every Hugging Face model ignores (padding, prompts,
special tokens, later sub-tokens of a word)."""

AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "question-answering": "AutoModelForQuestionAnswering",
}
"""The ``transformers`` auto class that loads a model with each task's head."""

PEFT_TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "causal-lm": "CAUSAL_LM",
    "seq2seq": "SEQ_2_SEQ_LM",
    "question-answering": "QUESTION_ANS",
}
"""peft's ``TaskType`` for each task: the ``task_type`` of an ``adapter_config.json``, which
picks the ``PeftModelFor...`` class (and ``AutoPeftModelFor...``) that loads the adapter."""

_CLASS_SUFFIXES = {
    "sequence-classification": ("ForSequenceClassification",),
    "token-classification": ("ForTokenClassification",),
    "causal-lm": ("ForCausalLM", "LMHeadModel"),
    "seq2seq": ("ForConditionalGeneration", "ForSeq2SeqLM"),
    "question-answering": ("ForQuestionAnswering",),
}

REPORTED_METRICS = {
    "sequence-classification": ("eval_loss", "eval_accuracy", "eval_f1"),
    "token-classification": ("eval_loss", "eval_precision", "eval_recall", "eval_f1", "eval_accuracy"),
    "causal-lm": ("eval_loss", "eval_perplexity"),
    "seq2seq": ("eval_loss", "eval_perplexity"),
    "question-answering": ("eval_loss", "eval_exact_match", "eval_f1"),
}
"""The metrics the trainer's default evaluation reports for each task."""

DEFAULT_METRIC = {
    "sequence-classification": "eval_accuracy",
    "token-classification": "eval_f1",
    "causal-lm": "eval_perplexity",
    "seq2seq": "eval_perplexity",
    "question-answering": "eval_f1",
}
"""The metric a benchmark reports for each task unless told otherwise."""


def check_task(task: Any) -> str:
    """Return ``task`` if it is one of :data:`TASKS`.

    Raises:
        UnknownTaskError: It is not; the message suggests the nearest task.
    """
    if task not in TASKS:
        hint = suggest(task, TASKS) if isinstance(task, str) else ""
        raise UnknownTaskError(f"Unknown task {task!r}.{hint} Choose one of {', '.join(TASKS)} (--task / task=).")
    return task


def auto_class_name(task: str) -> str:
    """The name of the ``transformers`` auto class for ``task``, e.g. ``"AutoModelForCausalLM"``."""
    return AUTO_CLASSES[check_task(task)]


def task_of_model(model: Any) -> str | None:
    """The task a Hugging Face model's class is built for (``...ForSequenceClassification``
    and so on), or ``None`` for a class petl does not recognise."""
    name = type(model).__name__
    return next((task for task, ends in _CLASS_SUFFIXES.items() if name.endswith(ends)), None)
