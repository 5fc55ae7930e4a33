"""ROUGE-1/2/L F-measures (Lin 2004) and exact match, for generated text.

Both texts are cut into tokens first: every CJK character (ideographs, kana) is a
token of its own, since Chinese and Japanese are written without spaces; any other
run of letters and digits is a lower-cased word (punctuation and ``_`` separate words).
On ASCII text this is the tokenisation of Google's ``rouge_score`` package without
stemming, so the scores agree with it there.

For n-grams of the prediction ``P`` and the reference ``R`` (as multisets):

    overlap_n = sum_g min(count_P(g), count_R(g))
    precision = overlap_n / |ngrams(P)|,  recall = overlap_n / |ngrams(R)|
    F = 2 * precision * recall / (precision + recall)   (0 when the overlap is 0)

ROUGE-L takes the longest common subsequence of the two token lists instead of the
overlap (Lin 2004, Section 3.1, with beta = 1). With several references an example
scores its best reference (by F, per measure); a corpus score is the mean over examples.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["ROUGE_KEYS", "exact_match", "lcs_length", "rouge", "rouge_scores", "rouge_tokens"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
"""The measures :func:`rouge` reports."""

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def rouge_tokens(text: str) -> list[str]:
    """``text`` as ROUGE tokens: single CJK characters and lower-cased words."""
    return _TOKEN.findall(text.lower())


def _f_measure(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(|a| |b|))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _scores(prediction: list[str], reference: list[str]) -> dict[str, float]:
    scores = {}
    for n in (1, 2):
        p, r = _ngrams(prediction, n), _ngrams(reference, n)
        scores[f"rouge{n}"] = _f_measure(sum((p & r).values()), sum(p.values()), sum(r.values()))
    scores["rougeL"] = _f_measure(lcs_length(prediction, reference), len(prediction), len(reference))
    return scores


def rouge_scores(prediction: str, references: str | Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of one prediction against its reference(s), the best reference per measure.

    Args:
        prediction: The generated text.
        references: One reference text, or several.
    """
    refs = [references] if isinstance(references, str) else list(references)
    predicted = rouge_tokens(prediction)
    per_reference = [_scores(predicted, rouge_tokens(ref)) for ref in refs] or [dict.fromkeys(ROUGE_KEYS, 0.0)]
    return {key: max(s[key] for s in per_reference) for key in ROUGE_KEYS}


def rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """The mean ROUGE-1/2/L F-measures over examples (keys :data:`ROUGE_KEYS`), in [0, 1].

    Raises:
        ValueError: The two lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; give one each.")
    if not predictions:
        return dict.fromkeys(ROUGE_KEYS, 0.0)
    each = [rouge_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    return {key: sum(s[key] for s in each) / len(each) for key in ROUGE_KEYS}


def _normalise(text: str) -> str:
    return " ".join(text.split()).strip().lower()


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """The share of predictions equal to one of their references, ignoring case and runs of white space."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; give one each.")
    if not predictions:
        return 0.0
    hits = 0
    for prediction, refs in zip(predictions, references, strict=True):
        refs = [refs] if isinstance(refs, str) else refs
        hits += any(_normalise(prediction) == _normalise(r) for r in refs)
    return hits / len(predictions)
