"""SQuAD v1.1 and CMRC 2018 exact match / F1 against hand-computed values, and span decoding."""

from __future__ import annotations

import pytest
import torch

from petl.errors import ConfigError, PetlError
from petl.metrics.qa import (
    QuestionAnsweringEvaluator,
    best_span,
    choose_scoring,
    cmrc_exact_match,
    cmrc_f1,
    cmrc_segments,
    qa_scores,
    squad_exact_match,
    squad_f1,
    squad_normalize,
)


def test_squad_normalisation_drops_case_punctuation_articles_and_extra_spaces() -> None:
    assert squad_normalize("  The Denver  Broncos!") == "denver broncos"
    assert squad_normalize("an apple, a pear") == "apple pear"
    assert squad_normalize("Theatre") == "theatre"  # "the" only as a whole word


def test_squad_exact_match_and_f1_by_hand() -> None:
    assert squad_exact_match("The Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert squad_f1("The Denver Broncos!", ["Denver Broncos"]) == 1.0
    # 1 shared token; P = 1/1, R = 1/2 -> F1 = 2/3
    assert squad_exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert squad_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    # tokens are a multiset: dog dog cat vs dog cat cat share 2 -> P = R = 2/3
    assert squad_f1("dog dog cat", ["dog cat cat"]) == pytest.approx(2 / 3)
    assert squad_f1("nothing shared", ["Denver"]) == 0.0


def test_squad_takes_the_best_of_several_references() -> None:
    refs = ["Levi's Stadium", "Santa Clara"]
    # against "Santa Clara": 2 shared of 3 predicted, 2 of 2 -> P = 2/3, R = 1, F1 = 0.8
    assert squad_f1("Santa Clara, California", refs) == pytest.approx(0.8)
    assert squad_exact_match("Santa Clara, California", refs) == 0.0
    assert squad_exact_match("the Broncos team", ["Denver Broncos", "Broncos team"]) == 1.0


def test_an_empty_prediction_scores_zero() -> None:
    assert squad_exact_match("", ["Denver"]) == 0.0
    assert squad_f1("", ["Denver"]) == 0.0
    assert cmrc_exact_match("", ["北京"]) == 0.0
    assert cmrc_f1("", ["北京"]) == 0.0


def test_cmrc_segments_cjk_characters_and_keeps_words_and_numbers_whole() -> None:
    assert cmrc_segments("iPhone手机") == ["iphone", "手", "机"]
    assert cmrc_segments("1998年3月") == ["1998", "年", "3", "月"]
    assert cmrc_segments("《红楼梦》，") == ["红", "楼", "梦"]  # CMRC's punctuation is removed


def test_cmrc_f1_and_exact_match_by_hand() -> None:
    # LCS 2 of 4 predicted, 2 of 2 reference: P = 1/2, R = 1 -> F1 = 2/3
    assert cmrc_f1("北京大学", ["北京"]) == pytest.approx(2 / 3)
    assert cmrc_exact_match("北京大学", ["北京"]) == 0.0
    assert cmrc_exact_match("《红楼梦》", ["红楼梦"]) == 1.0
    assert cmrc_f1("《红楼梦》", ["红楼梦"]) == 1.0
    # a number is one segment: ["1998", "年"] vs ["1998", "年", "3", "月"] -> P = 1, R = 1/2
    assert cmrc_f1("1998年", ["1998年3月"]) == pytest.approx(2 / 3)
    # the longest common *contiguous* run (1 here), not the bag overlap (2): P = 1/3, R = 1/2 -> 0.4
    assert cmrc_f1("北大京", ["北京"]) == pytest.approx(0.4)
    # the best of several references (CMRC dev has three)
    assert cmrc_f1("北京大学", ["上海", "北京大学", "北京"]) == 1.0


def test_qa_scores_average_over_questions_and_choose_the_scoring() -> None:
    scores = qa_scores(["Denver Broncos", "Denver"], [["Denver Broncos"], ["Denver Broncos"]])
    assert scores == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})
    assert choose_scoring("auto", ["北京是中国的首都。", "上海"]) == "cmrc2018"
    assert choose_scoring("auto", ["Denver is a city.", "北京"]) == "squad"  # not a majority
    assert choose_scoring("squad", ["北京"]) == "squad"  # explicit wins
    chinese = qa_scores(["北京大学"], [["北京"]], scoring="auto", contexts=["北京大学在北京。"])
    assert chinese == pytest.approx({"exact_match": 0.0, "f1": 2 / 3})
    with pytest.raises(ConfigError, match="squad"):
        choose_scoring("bleu", [])


def test_best_span_keeps_to_context_tokens_order_and_length() -> None:
    # tokens: [CLS] q q [SEP] c0 c1 c2 [SEP]; offsets of c0..c2 in "ab cd ef"
    offsets = [None, None, None, None, (0, 2), (3, 5), (6, 8), None]
    start = torch.tensor([9.0, 8.0, 0.0, 0.0, 1.0, 3.0, 0.0, 9.0])  # the highest logits lie off the context
    end = torch.tensor([9.0, 0.0, 0.0, 0.0, 5.0, 0.0, 4.0, 9.0])
    score, first, last = best_span(start, end, offsets)
    assert (first, last) == (3, 8) and score == pytest.approx(3 + 4)  # c1..c2, not c1..c0 (end before start)
    assert best_span(start, end, offsets, max_answer_length=1)[1:] == (0, 2)  # c0 alone: 1 + 5
    assert best_span(start, end, [None] * 8) is None


def test_the_evaluator_takes_the_best_window_of_each_question() -> None:
    context = "ab cd ef gh"
    windows = [(0, [None, (0, 2), (3, 5), None]), (0, [None, (6, 8), (9, 11), None]), (1, [None, (0, 2), None])]
    low, high = torch.full((4, 2), -5.0), torch.full((4, 2), -5.0)
    low[1] = 1.0  # window 0: "ab", score 2
    high[2, 0], high[2, 1] = 4.0, 4.0  # window 1: "gh", score 8
    third = torch.full((4, 2), -5.0)
    third[1] = 2.0
    evaluator = QuestionAnsweringEvaluator(windows, [context, "zz"], [["ab cd"], ["yy", "zz"]], scoring="squad")
    evaluator.add_batch(logits=torch.stack([low, high]))
    evaluator.add_batch(logits=third[None])
    # "gh" vs "ab cd": nothing shared; "zz" is a reference of the second
    assert evaluator.compute() == {"exact_match": 0.5, "f1": 0.5}
    assert evaluator.predictions == ["gh", "zz"]  # the second question's only window is cut from its own context
    assert evaluator.compute() == {}  # reset
    evaluator.add_batch(logits=torch.stack([low, high]))
    with pytest.raises(PetlError, match="2 windows"):
        evaluator.compute()
