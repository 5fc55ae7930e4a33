"""ROUGE and exact match against hand-computed values (and ``rouge_score`` where it is installed)."""

from __future__ import annotations

import pytest

from petl.metrics.rouge import exact_match, lcs_length, rouge, rouge_scores, rouge_tokens


def test_tokens_split_cjk_characters_and_lower_case_words() -> None:
    assert rouge_tokens("Hello, 世界! It's 2024_x") == ["hello", "世", "界", "it", "s", "2024", "x"]
    assert rouge_tokens("今天天气很好。") == ["今", "天", "天", "气", "很", "好"]


def test_english_scores_by_hand() -> None:
    # unigrams: the x2, cat, on, mat overlap = 5 of 6 each side; bigrams: the-cat, on-the, the-mat = 3 of 5;
    # LCS "the cat on the mat" = 5 of 6.
    s = rouge_scores("The cat sat on the mat.", "the cat is on the mat")
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)


def test_unequal_lengths_use_the_f_measure() -> None:
    # prediction 2 tokens, reference 4, overlap 2: P = 1, R = 1/2, F = 2/3; LCS "a b" = 2 -> 2/3; bigram a-b: 1 of 1 / 3
    s = rouge_scores("a b", "a x b y")
    assert s["rouge1"] == pytest.approx(2 / 3)
    assert s["rouge2"] == pytest.approx(0.0)  # a-b is no bigram of the reference
    assert s["rougeL"] == pytest.approx(2 / 3)
    s = rouge_scores("a b", "a b x y")
    assert s["rouge2"] == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))


def test_chinese_scores_by_hand() -> None:
    # 我 爱 北 京 / 我 爱 上 海: unigrams 2 of 4 -> 0.5; bigrams 我爱 1 of 3 -> 1/3; LCS 2 -> 0.5
    s = rouge_scores("我爱北京", "我爱上海")
    assert (s["rouge1"], s["rouge2"], s["rougeL"]) == pytest.approx((0.5, 1 / 3, 0.5))


def test_best_reference_empty_text_and_the_corpus_mean() -> None:
    assert rouge_scores("a b c", ["x y", "a b c"])["rougeL"] == 1.0
    assert rouge_scores("", "a b") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    corpus = rouge(["a b c", "x"], ["a b c", "y"])
    assert corpus["rouge1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one each"):
        rouge(["a"], [])


def test_lcs_and_exact_match() -> None:
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (CLRS 15.4)
    assert exact_match(["Paris ", "london", "x"], ["paris", ["Rome", "London"], "y"]) == pytest.approx(2 / 3)


def test_agrees_with_rouge_score_on_ascii_text() -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge_score is not installed")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    pairs = [("The cat sat on the mat.", "the cat is on the mat"),
             ("#Person1# asks about the weather; it's 30 degrees.", "Person1 and Person2 talk about the weather"),
             ("nothing in common", "entirely different words")]
    for prediction, reference in pairs:
        theirs = scorer.score(reference, prediction)
        ours = rouge_scores(prediction, reference)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert ours[key] == pytest.approx(theirs[key].fmeasure)
