"""Exact match and F1 of extractive question answering, offline: SQuAD v1.1 and CMRC 2018.

A prediction is scored against every reference answer of its question and keeps the
best score (``max`` over references); a data set's score is the mean over questions,
as a fraction in [0, 1] like petl's other metrics (the official scripts print 100x).

SQuAD v1.1 (Rajpurkar et al. 2016, the official ``evaluate-v1.1.py``): both strings are
normalised (lower case, ASCII punctuation removed, the articles a / an / the removed,
whitespace collapsed) and split on whitespace; then

    EM = [norm(pred) == norm(ref)]
    F1 = 2 P R / (P + R),  P = |pred tokens & ref tokens| / |pred tokens|,  R = ... / |ref tokens|

with ``&`` the multiset intersection (F1 = 0 when nothing is shared or either side is empty).

CMRC 2018 (Cui et al. 2019, the official ``cmrc2018_evaluate.py``): Chinese has no spaces,
so the text is segmented into single CJK characters (U+4E00-U+9FA5) with runs of other
characters kept as words and numbers (split like a word tokenizer: ``\\w+`` runs and single
symbols); the official script's punctuation list (Chinese punctuation and ``- : _ * ^ / \\ ~
` + =``) is removed, then

    EM = [strip_punct(lower(pred)) == strip_punct(lower(ref))]
    F1 = 2 P R / (P + R),  P = LCS / |pred segments|,  R = LCS / |ref segments|

where LCS is the length of the longest common *contiguous* run of segments (the official
script's ``find_lcs``). The one difference from the official script: it splits non-CJK runs
with NLTK's ``word_tokenize`` (not installed here), this uses ``\\w+|[^\\w\\s]``, which agrees
on words, numbers and punctuation but not on English contractions ("don't").

:func:`qa_scores` picks the scoring: ``"squad"``, ``"cmrc2018"``, or ``"auto"``, which picks
CMRC 2018 when most of the contexts contain a CJK character (:func:`choose_scoring`).
:class:`QuestionAnsweringEvaluator` turns a model's start / end logits over the windows of
each question into the answer text (:func:`best_span`) and scores it.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from petl.errors import ConfigError, PetlError

__all__ = [
    "SCORINGS",
    "QuestionAnsweringEvaluator",
    "best_span",
    "choose_scoring",
    "cmrc_exact_match",
    "cmrc_f1",
    "cmrc_segments",
    "has_cjk",
    "qa_scores",
    "squad_exact_match",
    "squad_f1",
    "squad_normalize",
]

SCORINGS = ("auto", "squad", "cmrc2018")
"""How answers are compared: SQuAD v1.1 (English), CMRC 2018 (Chinese), or chosen from the contexts."""

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u4e00-\u9fa5]")
# The official CMRC 2018 script's sp_char list ("……" is two characters, each listed here).
_CMRC_PUNCTUATION = set("-:_*^/\\~`+=，。：？！“”；’《》…·、「」（）－～『』")
_WORD = re.compile(r"\w+|[^\w\s]")


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0."""
    normalized = squad_normalize(prediction)
    return float(any(normalized == squad_normalize(ref) for ref in references))


def _overlap_f1(predicted: Sequence[str], reference: Sequence[str], common: int) -> float:
    if common == 0 or not predicted or not reference:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, references: Sequence[str]) -> float:
    """The best token-overlap F1 of the prediction against any reference (SQuAD v1.1)."""
    predicted = squad_normalize(prediction).split()
    best = 0.0
    for ref in references:
        reference = squad_normalize(ref).split()
        common = sum((Counter(predicted) & Counter(reference)).values())
        best = max(best, _overlap_f1(predicted, reference, common))
    return best


def cmrc_segments(text: str) -> list[str]:
    """CMRC 2018's mixed segmentation with its punctuation removed: one segment per CJK
    character, other runs split into words / numbers / symbols, all lower case."""
    segments: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if ch in _CMRC_PUNCTUATION:
            segments += _WORD.findall(run)
            run = ""
        elif _CJK.match(ch):
            segments += _WORD.findall(run)
            run = ""
            segments.append(ch)
        else:
            run += ch
    return segments + _WORD.findall(run)


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest contiguous run shared by ``a`` and ``b`` (dynamic programming)."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(prediction: str, references: Sequence[str]) -> float:
    """The best CMRC 2018 F1 (longest common run of segments) against any reference."""
    predicted = cmrc_segments(prediction)
    return max((_overlap_f1(predicted, ref_segments, _longest_common_run(ref_segments, predicted))
                for ref_segments in map(cmrc_segments, references)), default=0.0)


def _strip_cmrc_punctuation(text: str) -> str:
    return "".join(ch for ch in text.lower().strip() if ch not in _CMRC_PUNCTUATION)


def cmrc_exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the prediction equals a reference after lower-casing and removing CMRC's punctuation."""
    predicted = _strip_cmrc_punctuation(prediction)
    return float(any(predicted == _strip_cmrc_punctuation(ref) for ref in references))


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK unified ideograph (U+4E00-U+9FA5, CMRC 2018's range)."""
    return _CJK.search(text) is not None


def choose_scoring(scoring: str, contexts: Sequence[str]) -> str:
    """``"squad"`` or ``"cmrc2018"``: ``scoring`` itself, or for ``"auto"`` CMRC 2018 when more
    than half of the ``contexts`` contain a CJK character.

    Raises:
        ConfigError: ``scoring`` is not one of :data:`SCORINGS`.
    """
    if scoring not in SCORINGS:
        raise ConfigError(f"qa_scoring={scoring!r} (--qa-scoring) is not known; choose one of {', '.join(SCORINGS)}.")
    if scoring != "auto":
        return scoring
    chinese = sum(has_cjk(c) for c in contexts)
    return "cmrc2018" if contexts and chinese * 2 > len(contexts) else "squad"


def qa_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, scoring: str = "squad",
    contexts: Sequence[str] = (),
) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` (fractions) of ``predictions`` against their references.

    Args:
        predictions: One answer text per question ("" for no answer).
        references: The reference answers of each question (any number; the best counts).
        scoring: ``"squad"``, ``"cmrc2018"`` or ``"auto"`` (chosen from ``contexts``).
        contexts: The questions' contexts, for ``scoring="auto"``.

    Raises:
        ConfigError: Unknown ``scoring``, or predictions and references of different lengths.
    """
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions but {len(references)} reference lists: give one each.")
    chosen = choose_scoring(scoring, contexts)
    em, f1 = (cmrc_exact_match, cmrc_f1) if chosen == "cmrc2018" else (squad_exact_match, squad_f1)
    if not predictions:
        return {}
    n = len(predictions)
    return {
        "exact_match": sum(em(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "f1": sum(f1(p, r) for p, r in zip(predictions, references, strict=True)) / n,
    }


Offsets = Sequence[tuple[int, int] | None]


def best_span(
    start_logits: Sequence[float] | torch.Tensor, end_logits: Sequence[float] | torch.Tensor, offsets: Offsets,
    *, n_best: int = 20, max_answer_length: int = 30,
) -> tuple[float, int, int] | None:
    """The best answer span of one window: ``(score, start_char, end_char)`` or ``None``.

    Candidates pair one of the ``n_best`` highest start logits with one of the ``n_best``
    highest end logits, both on context tokens (``offsets[i]`` not ``None``), with
    ``start <= end < start + max_answer_length``; the score is ``start + end`` logit (the
    log-probability of the span up to a constant per window). The span maps back to the
    characters ``context[start_char:end_char]``.
    """
    starts = torch.as_tensor(start_logits, dtype=torch.float32)[: len(offsets)]
    ends = torch.as_tensor(end_logits, dtype=torch.float32)[: len(offsets)]
    allowed = torch.tensor([o is not None for o in offsets[: len(starts)]], dtype=torch.bool)
    if not bool(allowed.any()):
        return None
    k = min(n_best, int(allowed.sum()))
    top_starts = starts.masked_fill(~allowed, float("-inf")).topk(k).indices.tolist()
    top_ends = ends.masked_fill(~allowed, float("-inf")).topk(k).indices.tolist()
    best: tuple[float, int, int] | None = None
    for s in top_starts:
        for e in top_ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = float(starts[s] + ends[e])
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])  # type: ignore[index]
    return best


class QuestionAnsweringEvaluator:
    """Exact match and F1 of the best span over each question's windows.

    ``add_batch`` receives ``logits`` of shape ``(batch, length, 2)`` (start and end logits
    stacked) for the windows in the evaluation set's order; ``compute`` picks each question's
    best span over all its windows (:func:`best_span`), cuts it from the context and scores it.

    Args:
        windows: For each window, in order: the index of its question and the character
            offsets of each token (``None`` for question, special and padding tokens).
        contexts: Each question's context.
        references: Each question's reference answers.
        scoring: ``"squad"``, ``"cmrc2018"`` or ``"auto"`` (see :func:`choose_scoring`).
        n_best: How many top start and end positions each window tries.
        max_answer_length: The longest answer, in tokens.
    """

    def __init__(
        self, windows: Sequence[tuple[int, Offsets]], contexts: Sequence[str], references: Sequence[Sequence[str]],
        *, scoring: str = "auto", n_best: int = 20, max_answer_length: int = 30,
    ) -> None:
        if len(contexts) != len(references):
            raise ConfigError(f"{len(contexts)} contexts but {len(references)} reference lists: give one each.")
        self.windows, self.contexts, self.references = list(windows), list(contexts), list(references)
        self.scoring = choose_scoring(scoring, self.contexts)
        self.n_best, self.max_answer_length = n_best, max_answer_length
        self._logits: list[torch.Tensor] = []
        self.predictions: list[str] = []
        """The answer text of each question at the last :meth:`compute`."""

    @classmethod
    def for_dataset(cls, dataset: Any, **options: Any) -> QuestionAnsweringEvaluator:
        """The evaluator of a question-answering evaluation set as ``petl.data`` builds it
        (it carries ``windows``, ``contexts``, ``references`` and ``scoring``).

        Raises:
            ConfigError: ``dataset`` lacks the windows (e.g. pre-tokenized data).
        """
        if not all(hasattr(dataset, name) for name in ("windows", "contexts", "references")):
            raise ConfigError(
                "Question-answering evaluation maps each window's best span back to its context, so it needs the "
                "evaluation set as petl.data tokenises it (SQuAD-format question/context/answers data), not "
                f"{type(dataset).__name__} rows. Pass raw SQuAD-format data, or an evaluator= of your own."
            )
        options.setdefault("scoring", getattr(dataset, "scoring", "auto"))
        return cls(dataset.windows, dataset.contexts, dataset.references, **options)

    def add_batch(self, *, logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Store the start / end logits (``batch x length x 2``) of the next windows."""
        if logits.dim() != 3 or logits.shape[-1] != 2:
            raise PetlError(f"Question answering needs start and end logits stacked as (batch, length, 2), got "
                            f"shape {tuple(logits.shape)}.")
        self._logits += list(logits.detach().float().cpu().unbind(0))

    def compute(self) -> dict[str, float]:
        """``exact_match`` and ``f1`` over every question ({} when nothing was added); then reset."""
        logits, self._logits = self._logits, []
        if not logits:
            return {}
        if len(logits) != len(self.windows):
            raise PetlError(
                f"The evaluation gave logits for {len(logits)} windows, but the evaluation set has "
                f"{len(self.windows)}: evaluate the whole set, in order (no shuffling, no drop_last)."
            )
        best: list[tuple[float, int, int] | None] = [None] * len(self.contexts)
        for (question, offsets), window in zip(self.windows, logits, strict=True):
            span = best_span(window[:, 0], window[:, 1], offsets, n_best=self.n_best,
                             max_answer_length=self.max_answer_length)
            if span is not None and (best[question] is None or span[0] > best[question][0]):  # type: ignore[index]
                best[question] = span
        self.predictions = [self.contexts[i][span[1]:span[2]] if span is not None else ""
                            for i, span in enumerate(best)]
        return qa_scores(self.predictions, self.references, scoring=self.scoring)
