"""Extractive question answering data: SQuAD-format rows, overlapping windows, span labels.

Rows have a ``question``, a ``context`` and ``answers`` (SQuAD's ``{"text": [...],
"answer_start": [...]}``, or a list of ``{"text", "answer_start"}``); a SQuAD JSON file
(``data -> paragraphs -> context, qas``) is flattened to such rows by :func:`squad_rows`.

A context longer than the model's window is cut into overlapping windows, as BERT did for
SQuAD (Devlin et al. 2019, Section 4.2)::

    [CLS] question [SEP] context tokens t_a .. t_b [SEP]      window k
                 consecutive windows share ``doc_stride`` context tokens

(``tokenizer(question, context, truncation="only_second", stride=doc_stride,
return_overflowing_tokens=True, return_offsets_mapping=True)``). The training labels are the
token positions of the first answer's first and last character, ``start_positions`` /
``end_positions``; a window that does not hold the whole answer points both at position 0
(``[CLS]``), the standard "no answer here" target. At evaluation each window keeps the
character offsets of its context tokens, so the best span over all windows of a question
(:class:`petl.metrics.qa.QuestionAnsweringEvaluator`) is cut from the original context.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from petl.data.collate import TokenizedDataset
from petl.data.columns import pick_column, text_values
from petl.errors import ColumnNotFoundError, ConfigError, DataError

__all__ = ["QADataset", "is_squad_file", "prepare_question_answering", "squad_rows", "tokenize_windows"]

logger = logging.getLogger(__name__)

_BATCH = 1000


class QADataset(TokenizedDataset):
    """Tokenised windows and what evaluation needs to map their spans back to the text.

    Attributes:
        windows: For each window: the index of its question and each token's character
            offsets in the context (``None`` off the context).
        contexts: Each question's context.
        references: Each question's reference answer texts.
        ids: Each question's id.
        scoring: How answers are scored: ``"auto"``, ``"squad"`` or ``"cmrc2018"``.
        in_order_evaluation: Always true: the evaluator reads the n-th window's logits with the
            n-th window's offsets, so evaluation batches keep the set's order (no length sort).
    """

    in_order_evaluation = True

    def __init__(self, examples: Sequence[dict[str, Any]], *, windows: Sequence[tuple[int, list]],
                 contexts: Sequence[str], references: Sequence[list[str]], ids: Sequence[str],
                 scoring: str = "auto") -> None:
        super().__init__(examples)
        self.windows, self.contexts, self.references = list(windows), list(contexts), list(references)
        self.ids, self.scoring = list(ids), scoring


def is_squad_file(records: Any) -> bool:
    """Whether parsed JSON is SQuAD's nested form: ``{"data": [{"paragraphs": [...]}, ...]}``."""
    data = records.get("data") if isinstance(records, dict) else None
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "paragraphs" in data[0]


def squad_rows(records: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per question of a SQuAD-format file: ``id``, ``title``, ``context``, ``question``
    and ``answers`` = ``{"text": [...], "answer_start": [...]}`` (the ``datasets`` squad layout).

    Raises:
        DataError: A paragraph without ``context`` / ``qas`` or a question without ``question``.
    """
    rows = []
    for article in records["data"]:
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            if "context" not in paragraph or "qas" not in paragraph:
                raise DataError(f"Paragraph {p} of article {article.get('title', '?')!r} has no 'context' or 'qas'; "
                                "SQuAD format is data -> paragraphs -> {context, qas: [{id, question, answers}]}.")
            for q, qa in enumerate(paragraph["qas"]):
                if "question" not in qa:
                    raise DataError(f"Question {q} of a paragraph of {article.get('title', '?')!r} has no 'question'.")
                answers = qa.get("answers", [])
                rows.append({
                    "id": str(qa.get("id", len(rows))), "title": str(article.get("title", "")),
                    "context": paragraph["context"], "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    return rows


def _answers(value: Any, row: int, split: str) -> tuple[list[str], list[int]]:
    """Texts and starts from ``{"text": [...], "answer_start": [...]}`` or ``[{"text", "answer_start"}]``."""
    if isinstance(value, Mapping):
        texts, starts = value.get("text", []), value.get("answer_start", [])
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
    elif isinstance(value, (list, tuple)) and all(isinstance(a, Mapping) for a in value):
        texts, starts = [a.get("text") for a in value], [a.get("answer_start") for a in value]
    else:
        texts, starts = None, None
    if texts is None or len(texts) != len(starts) or not all(isinstance(t, str) for t in texts):
        raise DataError(
            f"Row {row} of the {split} data has answers {value!r}; write them as "
            '{"text": ["..."], "answer_start": [17]} or [{"text": "...", "answer_start": 17}].'
        )
    return list(texts), [int(s) for s in starts]


def _locate(context: str, text: str, start: int) -> int | None:
    """The answer's start in ``context``: ``start`` if the text is there, else its nearest occurrence."""
    if context[start:start + len(text)] == text:
        return start
    found, at = [], context.find(text)
    while at != -1:
        found.append(at)
        at = context.find(text, at + 1)
    return min(found, key=lambda i: abs(i - start)) if found else None


def tokenize_windows(
    tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], answers: Sequence[tuple[list[str], list[int]]],
    *, max_length: int, doc_stride: int, desc: str,
) -> tuple[list[dict[str, Any]], list[tuple[int, list]]]:
    """Cut each (question, context) into windows with span labels and context offsets.

    Returns:
        The windows as examples (``input_ids``, ``attention_mask``, [``token_type_ids``],
        ``start_positions``, ``end_positions``) and, per window, its question index and the
        character offsets of its tokens (``None`` off the context).

    Raises:
        ConfigError: ``doc_stride`` does not leave room for new context in each window.
        DataError: The tokenizer is not a fast one, or a question leaves no room for context.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"Question answering needs a fast tokenizer (for offset mappings), got "
                        f"{type(tokenizer).__name__}. Load it with AutoTokenizer.from_pretrained(..., use_fast=True).")
    if not 0 <= doc_stride < max_length // 2:
        raise ConfigError(f"doc_stride={doc_stride} (--doc-stride) must be at least 0 and below half of "
                          f"max_length={max_length}, so every window adds new context; try {max_length // 4}.")
    examples: list[dict[str, Any]] = []
    windows: list[tuple[int, list]] = []
    for begin in range(0, len(questions), _BATCH):
        rows = range(begin, min(begin + _BATCH, len(questions)))
        try:
            encoding = tokenizer(
                [questions[i].lstrip() for i in rows], [contexts[i] for i in rows],
                truncation="only_second", max_length=max_length, stride=doc_stride,
                return_overflowing_tokens=True, return_offsets_mapping=True,
            )
        except Exception as exc:  # tokenizers: "the stride is too large" / a question longer than the window
            raise DataError(f"Cannot cut the {desc} into windows of max_length={max_length} with "
                            f"doc_stride={doc_stride}: {exc}. Raise max_length or lower doc_stride.") from exc
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
        for w, sample in enumerate(encoding["overflow_to_sample_mapping"]):
            question = begin + sample
            sequence = encoding.sequence_ids(w)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(encoding["offset_mapping"][w], sequence,
                                                                    strict=True)]
            example = {k: list(encoding[k][w]) for k in keys}
            example["start_positions"], example["end_positions"] = _span_labels(offsets, answers[question])
            examples.append(example)
            windows.append((question, offsets))
    return examples, windows


def _span_labels(offsets: Sequence[tuple[int, int] | None], answers: tuple[list[str], list[int]]) -> tuple[int, int]:
    """The token positions of the first answer in this window, or (0, 0) (``[CLS]``) when it is not inside."""
    texts, starts = answers
    if not texts:
        return 0, 0
    first, last = starts[0], starts[0] + len(texts[0])
    context = [i for i, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > first or offsets[context[-1]][1] < last:  # type: ignore[index]
        return 0, 0
    start = next(i for i in context if offsets[i][1] > first)  # type: ignore[index]
    end = next(i for i in reversed(context) if offsets[i][0] < last)  # type: ignore[index]
    return start, max(start, end)


_QUESTION, _CONTEXT, _ANSWERS = ("question", "query"), ("context", "passage", "paragraph"), ("answers", "answer")


def prepare_question_answering(
    splits: Mapping[str, Any], tokenizer: Any, max_length: int, *, offset: int = 0, text_column: str | None = None,
    text_pair_column: str | None = None, label_column: str | None = None, doc_stride: int = 128,
    qa_scoring: str = "auto", **_: Any,
) -> tuple[dict[str, QADataset], None, dict[str, str | None]]:
    """Tokenise the splits of question-answering data into windows (see the module docstring).

    ``text_column`` / ``text_pair_column`` / ``label_column`` choose the question, context and
    answers columns ("question", "context", "answers" by default). Training answers whose
    ``answer_start`` does not match the context are moved to the nearest occurrence of their
    text; those whose text is not in the context at all are dropped (logged).
    """
    question_col = _column(splits, text_column, _QUESTION, "question", "text_column")
    context_col = _column(splits, text_pair_column, _CONTEXT, "context", "text_pair_column")
    answer_col = _column(splits, label_column, _ANSWERS, "answers", "label_column")
    result: dict[str, QADataset] = {}
    for name, dataset in splits.items():
        questions = text_values(dataset, question_col, split=name, offset=offset)
        contexts = text_values(dataset, context_col, split=name, offset=offset)
        answers = [_answers(v, i, name) for i, v in enumerate(dataset[answer_col], start=offset)]
        ids = [str(v) for v in dataset["id"]] if "id" in dataset.column_names else [
            str(i) for i in range(offset, offset + len(questions))]
        if name == "training":
            keep, fixed = [], []
            for i, (texts, starts) in enumerate(answers):
                located = [_locate(contexts[i], t, s) for t, s in zip(texts, starts, strict=True)]
                pairs = [(t, s) for t, s in zip(texts, located, strict=True) if s is not None]
                if texts and not pairs:
                    continue
                keep.append(i)
                fixed.append(([t for t, _ in pairs], [s for _, s in pairs]))
            if len(keep) < len(questions):
                logger.warning("Dropped %d of %d training questions whose answer text is not in their context.",
                               len(questions) - len(keep), len(questions))
            questions, contexts, ids = ([v[i] for i in keep] for v in (questions, contexts, ids))
            answers = fixed
        rows, windows = tokenize_windows(tokenizer, questions, contexts, answers, max_length=max_length,
                                         doc_stride=doc_stride, desc=f"{name} data")
        result[name] = QADataset(rows, windows=windows, contexts=contexts, references=[a[0] for a in answers],
                                 ids=ids, scoring=qa_scoring)
    used = {"text_column": question_col, "text_pair_column": context_col, "label_column": answer_col,
            "target_column": None}
    return result, None, used


def _column(splits: Mapping[str, Any], chosen: str | None, candidates: Sequence[str], role: str, option: str) -> str:
    first_name, first = next(iter(splits.items()))
    column = pick_column(first, chosen, candidates, split=first_name, role=role, option=option)
    for name, dataset in splits.items():
        if column not in dataset.column_names:
            raise ColumnNotFoundError(
                f"The {name} data has no {role} column {column!r}; its columns are "
                f"{', '.join(map(repr, dataset.column_names))}. Question answering needs question, context and "
                f"answers columns (SQuAD format); choose the {role} column with --{option.replace('_', '-')} NAME."
            )
    return column
