"""petl's generated sentiment data: deterministic, labelled by its stated rules, not
solvable by a bag of words."""

from __future__ import annotations

import collections

from petl.bench import synthetic as syn


def _clause_score(clause: str) -> float:
    """An independent reading of one clause: polarity of the last word, scaled by its modifiers."""
    words = clause.split()
    polarity = 1 if words[-1] in syn.POSITIVE else -1 if words[-1] in syn.NEGATIVE else 0
    assert polarity, f"no adjective at the end of {clause!r}"
    text = f" {clause} "
    negated = any(f" {n} " in text for n in syn.NEGATORS)
    intensified = any(f" {w} " in text for w in syn.INTENSIFIERS)
    diminished = any(f" {w} " in text for w in syn.DIMINISHERS)
    if negated:
        return -polarity * (0.5 if intensified else 1.0)
    return polarity * (2.0 if intensified else 0.5 if diminished else 1.0)


def _label(sentence: str) -> int:
    """The label the module docstring's rules give ``sentence``."""
    s = sentence.rstrip(".")
    if s.startswith("although "):
        main = s.split(", ", 1)[1]
    elif ", although " in s:
        main = s.split(", although ")[0]
    elif ", but " in s:
        main = s.split(", but ")[1]
    elif " and " in s:
        a, b = s.split(" and ")
        total = _clause_score(a) + _clause_score(b)
        assert total != 0, sentence
        return int(total > 0)
    else:
        main = s
    return int(_clause_score(main) > 0)


def test_the_same_seed_gives_the_same_examples_and_another_seed_others() -> None:
    assert syn.generate(50, seed=3) == syn.generate(50, seed=3)
    assert syn.generate(50, seed=3) != syn.generate(50, seed=4)


def test_every_label_follows_the_stated_rules() -> None:
    train, held_out = syn.make_splits(600, 200, seed=0)
    for example in train + held_out:
        assert example.label == _label(example.sentence), example


def test_splits_are_disjoint_balanced_and_cover_every_construction() -> None:
    train, held_out = syn.make_splits(1000, 300, seed=0)
    assert len({e.sentence for e in train}) == 1000
    assert not {e.sentence for e in train} & {e.sentence for e in held_out}
    assert 0.4 < sum(e.label for e in train) / len(train) < 0.6
    kinds = collections.Counter(e.kind for e in train)
    assert set(kinds) == {"single", "negated", "but", "although", "and"}
    assert min(kinds.values()) > 50


def test_word_order_decides_contrasts() -> None:
    """The two orders of "A, but B" hold the same words and have opposite labels."""
    assert _label("the plot was good, but the acting was dull.") == 0
    assert _label("the acting was dull, but the plot was good.") == 1
    assert _label("the plot was not good.") == 0
    assert _label("the plot was not bad.") == 1
    assert _label("the plot was extremely good and the acting was slightly dull.") == 1
    assert _label("the plot was slightly good and the acting was extremely dull.") == 0


def test_a_bag_of_words_model_cannot_solve_it() -> None:
    train, held_out = syn.make_splits(1000, 300, seed=0)
    accuracy = syn.bag_of_words_accuracy(train, held_out)
    assert 0.5 < accuracy < 0.75
    # It does learn the words: on single, unnegated clauses it is nearly perfect.
    single = [e for e in held_out if e.kind == "single"]
    assert syn.bag_of_words_accuracy(train, single) > 0.75


def test_prompt_completion_form() -> None:
    example = syn.Example("the plot was good.", 1, "single")
    assert syn.to_prompt_completion(example) == {
        "prompt": "Review: the plot was good.\nSentiment:",
        "completion": " positive",
    }
