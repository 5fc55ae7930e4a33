"""Entity-level precision, recall and F1 over IOB tag sequences, as conlleval counts them.

A tag is ``O`` or ``<prefix>-<TYPE>`` with prefix ``B`` (begin), ``I`` (inside),
and, for IOBES data, ``E`` (end) or ``S`` (single); a bare tag ``TYPE`` reads as
``I-TYPE``. Chunking follows conlleval (CoNLL-2000 shared task), so IOB1 and IOB2
both work:

* ``B-X`` and ``S-X`` always start an entity;
* ``I-X`` / ``E-X`` start one after ``O``, after an entity of another type, or after
  an ``E``/``S`` tag (in IOB1 a run of ``I-X`` words is an entity);
* an entity ends before ``O``, ``B``, ``S``, a different type, or after ``E``/``S``.

With ``N_pred`` predicted entities, ``N_true`` reference entities and ``N_ok`` predicted
entities whose type, start and end match a reference entity exactly (micro-averaged
over all types and sentences):
``precision = N_ok / N_pred``, ``recall = N_ok / N_true``, ``F1 = 2 P R / (P + R)``
(each 0 when its denominator is 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from petl.errors import ConfigError

__all__ = ["entities", "entity_scores"]


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or not tag:
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if sep and prefix in ("B", "I", "E", "S"):
        return prefix, kind
    return "I", tag  # IO tagging: the tag is the type


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, start, end)`` with ``end`` exclusive.

    >>> entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"])
    [('PER', 0, 2), ('LOC', 3, 4), ('LOC', 4, 5)]
    """
    found: list[tuple[str, int, int]] = []
    start: int | None = None
    prev_prefix, prev_kind = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentinel closes a final entity
        prefix, kind = _split(tag)
        ends = start is not None and (prefix in ("O", "B", "S") or kind != prev_kind or prev_prefix in ("E", "S"))
        if ends:
            found.append((prev_kind, start, i))
            start = None
        begins = prefix != "O" and (
            prefix in ("B", "S") or prev_prefix in ("O", "E", "S") or kind != prev_kind or start is None
        )
        if begins:
            start = i
        prev_prefix, prev_kind = prefix, kind
    return found


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level scores over sentences of tags.

    Args:
        predictions: The predicted tags, one list per sentence.
        references: The true tags, aligned with ``predictions``.

    Returns:
        ``precision``, ``recall``, ``f1`` (micro-averaged over entities), ``accuracy``
        (over tags) and, under ``per_type``, a dict per entity type with its
        ``precision``, ``recall``, ``f1`` and ``number`` (reference entities).

    Raises:
        ConfigError: The sentence counts or a sentence's lengths differ.
    """
    if len(predictions) != len(references):
        raise ConfigError(f"Got {len(predictions)} predicted sentences but {len(references)} reference sentences.")
    n_pred: Counter[str] = Counter()
    n_true: Counter[str] = Counter()
    n_ok: Counter[str] = Counter()
    correct_tags = total_tags = 0
    for index, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ConfigError(f"Sentence {index} has {len(pred)} predicted tags but {len(ref)} reference tags.")
        predicted, true = set(entities(pred)), set(entities(ref))
        n_pred.update(kind for kind, _, _ in predicted)
        n_true.update(kind for kind, _, _ in true)
        n_ok.update(kind for kind, _, _ in predicted & true)
        correct_tags += sum(p == r for p, r in zip(pred, ref, strict=True))
        total_tags += len(ref)

    def prf(ok: int, pred: int, true: int) -> dict[str, float]:
        p = ok / pred if pred else 0.0
        r = ok / true if true else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}

    per_type = {
        kind: {**prf(n_ok[kind], n_pred[kind], n_true[kind]), "number": n_true[kind]}
        for kind in sorted(n_pred.keys() | n_true.keys())
    }
    overall = prf(sum(n_ok.values()), sum(n_pred.values()), sum(n_true.values()))
    return {**overall, "accuracy": correct_tags / total_tags if total_tags else 0.0, "per_type": per_type}
