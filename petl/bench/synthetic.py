"""petl's built-in sentiment data: generated, deterministic from a seed, and not solvable
by counting words.

Every sentence is built from clauses "<subject> <verb> <modifier> <adjective>". A
clause has a score ``s = p * m``: the adjective's polarity ``p = +1 / -1`` times a
strength ``m`` (1 plain, 2 after an intensifier such as "extremely", 1/2 after a
diminisher such as "slightly"); negation ("not", "never") flips the sign and keeps
``m = 1`` ("not good" = -1), or ``1/2`` for "not very good". A sentence's label is

* one clause:                          ``sign(s)``
* "A, but B" (contrast):               ``sign(s_B)``, with ``sign(s_A) != sign(s_B)``
* "although A, B" / "B, although A":   ``sign(s_B)``: the main clause decides, wherever it stands
* "A and B":                           ``sign(s_A + s_B)``, opposite polarities of different
                                       strength, so the intensifier or diminisher decides

The two clause orders of a contrast hold the same words with opposite labels, and
"not good" holds "good", so a bag-of-words model cannot solve the task
(:func:`bag_of_words_accuracy` measures how far it gets); a model that reads word
order, negation scope and the strength of modifiers can.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "LABEL_NAMES",
    "Example",
    "bag_of_words_accuracy",
    "generate",
    "make_splits",
    "to_prompt_completion",
]

LABEL_NAMES = ("negative", "positive")

SUBJECTS = (
    "the movie", "the film", "the story", "the plot", "the acting", "the soundtrack", "the dialogue",
    "the script", "the ending", "the direction", "the pacing", "the camera work", "the humor", "the lead",
    "the cast", "the finale", "this sequel", "the premise",
)
VERBS = ("was", "is", "felt", "seemed")
POSITIVE = (
    "good", "great", "wonderful", "charming", "moving", "clever", "delightful", "brilliant", "enjoyable",
    "gripping", "funny", "beautiful", "fresh", "touching",
)
NEGATIVE = (
    "bad", "dull", "boring", "awful", "clumsy", "tedious", "weak", "predictable", "messy", "bland",
    "forgettable", "painful", "stale", "shallow",
)
INTENSIFIERS = ("very", "extremely", "truly", "incredibly", "really", "remarkably")
DIMINISHERS = ("slightly", "somewhat", "a bit", "mildly", "a little", "fairly")
NEGATORS = ("not", "never")

_KINDS = (("single", 0.40), ("but", 0.20), ("although", 0.15), ("and", 0.25))


@dataclass(frozen=True)
class Example:
    """One generated sentence and its label (0 negative, 1 positive)."""

    sentence: str
    label: int
    kind: str
    """How it was built: single, negated, but, although, and."""


@dataclass(frozen=True)
class _Clause:
    text: str
    score: float


def _clause(rng: random.Random, polarity: int | None = None, strength: float | None = None,
            allow_negation: bool = True) -> _Clause:
    """A clause with the given sign and strength (random when ``None``)."""
    subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
    if strength is None:
        strength = rng.choice((0.5, 1.0, 2.0))
    sign = polarity if polarity is not None else rng.choice((-1, 1))
    negate = allow_negation and strength != 2.0 and rng.random() < 0.4
    if negate:  # "not <adj>" has the opposite sign; "not very <adj>" is a mild opposite
        adjective = rng.choice(NEGATIVE if sign > 0 else POSITIVE)
        very = strength == 0.5
        words = [rng.choice(NEGATORS)] + ([rng.choice(INTENSIFIERS)] if very else []) + [adjective]
    else:
        adjective = rng.choice(POSITIVE if sign > 0 else NEGATIVE)
        modifier = {2.0: INTENSIFIERS, 0.5: DIMINISHERS}.get(strength)
        words = ([rng.choice(modifier)] if modifier else []) + [adjective]
    return _Clause(f"{subject} {verb} {' '.join(words)}", sign * strength)


def _sentence(rng: random.Random) -> Example:
    kind = rng.choices([k for k, _ in _KINDS], weights=[w for _, w in _KINDS])[0]
    if kind == "single":
        c = _clause(rng)
        label = int(c.score > 0)
        negated = any(f" {n} " in f" {c.text} " for n in NEGATORS)
        return Example(f"{c.text}.", label, "negated" if negated else "single")
    if kind in ("but", "although"):
        first = _clause(rng)
        second = _clause(rng, polarity=-1 if first.score > 0 else 1)
        label = int(second.score > 0)
        if kind == "but":
            return Example(f"{first.text}, but {second.text}.", label, kind)
        if rng.random() < 0.5:
            return Example(f"although {first.text}, {second.text}.", label, kind)
        return Example(f"{second.text}, although {first.text}.", label, kind)
    strong, weak = rng.sample((2.0, 1.0, 0.5), 2)
    if strong < weak:
        strong, weak = weak, strong
    sign = rng.choice((-1, 1))
    a = _clause(rng, polarity=sign, strength=strong, allow_negation=False)
    b = _clause(rng, polarity=-sign, strength=weak, allow_negation=False)
    if rng.random() < 0.5:
        a, b = b, a
    return Example(f"{a.text} and {b.text}.", int(a.score + b.score > 0), kind)


def generate(n: int, seed: int = 0, *, exclude: Sequence[str] = ()) -> list[Example]:
    """``n`` distinct examples, the same for the same ``seed``.

    Args:
        n: How many.
        seed: Seed of the generator.
        exclude: Sentences not to produce (another split's).
    """
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"Could not generate {n} distinct sentences; ask for fewer.")
        example = _sentence(rng)
        if example.sentence not in seen:
            seen.add(example.sentence)
            out.append(example)
    return out


def make_splits(train_size: int, eval_size: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A training and an evaluation split with no sentence in common."""
    train = generate(train_size, seed)
    return train, generate(eval_size, seed + 1_000_003, exclude=[e.sentence for e in train])


def to_prompt_completion(example: Example) -> dict[str, str]:
    """The causal-LM form: a prompt ending in "Sentiment:" and the label word as completion."""
    return {"prompt": f"Review: {example.sentence}\nSentiment:", "completion": f" {LABEL_NAMES[example.label]}"}


def bag_of_words_accuracy(train: Sequence[Example], eval: Sequence[Example], *, steps: int = 300) -> float:
    """Evaluation accuracy of a logistic regression on word counts (unigrams).

    A reference for the task's difficulty: whatever this model gets right needs no
    understanding of order or scope. Deterministic (full-batch training from zeros).
    """
    vocab: dict[str, int] = {}
    for example in train:
        for word in _words(example.sentence):
            vocab.setdefault(word, len(vocab))

    def features(rows: Sequence[Example]) -> torch.Tensor:
        index = [(i, vocab[w]) for i, row in enumerate(rows) for w in _words(row.sentence) if w in vocab]
        x = torch.zeros(len(rows), len(vocab) + 1)
        x[:, -1] = 1.0  # bias
        if index:
            at = torch.tensor(index).T
            x.index_put_((at[0], at[1]), torch.ones(len(index)), accumulate=True)
        return x

    x_train, x_eval = features(train), features(eval)
    y_train = torch.tensor([e.label for e in train], dtype=torch.float32)
    y_eval = torch.tensor([e.label for e in eval])
    weights = torch.zeros(x_train.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x_train @ weights, y_train)
        loss = loss + 1e-4 * weights[:-1].pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = (x_eval @ weights > 0).long()
    return float((predictions == y_eval).float().mean())


def _words(sentence: str) -> list[str]:
    return sentence.replace(",", " ").replace(".", " ").split()
