"""Chat data: the template renders, the labels cover the assistant turns, token by token."""

from __future__ import annotations

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from petl.data import load_task_data
from petl.data.chat import chat_examples
from petl.data.columns import find_messages_column
from petl.errors import DataError
from petl.tasks import IGNORE_INDEX

WORDS = ["[PAD]", "[UNK]", "<system>", "<user>", "<assistant>", "<end>", "be", "brief", "hi", "there", "hello",
         "how", "are", "you", "fine", "thanks", "bye", "see", "ya"]
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer (one id per word of WORDS) with a ChatML-like template, built offline."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="<end>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def ids(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.split()]


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "how are you"},
    {"role": "assistant", "content": "fine thanks"},
]


def test_labels_cover_exactly_the_assistant_replies_and_their_end_of_turn() -> None:
    tokenizer = chat_tokenizer()
    [example] = chat_examples(tokenizer, [CONVERSATION], max_length=64, desc="test")
    text = "<system> be brief <end> <user> hi there <end> <assistant> hello <end> <user> how are you <end> " \
           "<assistant> fine thanks <end>"
    assert example["input_ids"] == ids(text)
    labelled = {"hello", "fine", "thanks"}
    expected, turn_end = [], False
    for word in text.split():  # hand rule: reply words, and the <end> right after a reply
        expected.append(WORDS.index(word) if word in labelled or (word == "<end>" and turn_end) else IGNORE_INDEX)
        turn_end = word in labelled
    assert example["labels"] == expected
    assert [WORDS[t] for t in example["labels"] if t != IGNORE_INDEX] == ["hello", "<end>", "fine", "thanks", "<end>"]
    assert example["attention_mask"] == [1] * len(expected)


def test_truncation_keeps_labels_aligned_and_drops_conversations_without_a_reply_token() -> None:
    tokenizer = chat_tokenizer()
    # 20 tokens in all; cut after "fine" (token 17): the second reply keeps its first word only.
    [cut] = chat_examples(tokenizer, [CONVERSATION], max_length=18, desc="test")
    assert len(cut["input_ids"]) == len(cut["labels"]) == 18
    assert [WORDS[t] for t in cut["labels"] if t != IGNORE_INDEX] == ["hello", "<end>", "fine"]
    assert chat_examples(tokenizer, [CONVERSATION], max_length=9, desc="test") == []  # the reply starts at token 9


def test_the_messages_column_is_found_and_trained_as_chat() -> None:
    rows = [{"messages": CONVERSATION, "id": 1}, {"messages": CONVERSATION[1:3], "id": 2}]
    dataset = datasets.Dataset.from_list(rows)
    assert find_messages_column(dataset) == "messages"
    assert find_messages_column(datasets.Dataset.from_list([{"messages": "plain text"}])) is None
    data = load_task_data("causal-lm", dataset, dataset, tokenizer=chat_tokenizer(), max_length=64)
    second = data.eval[1]
    assert second["input_ids"] == ids("<user> hi there <end> <assistant> hello <end>")
    assert second["labels"] == [IGNORE_INDEX] * 5 + ids("hello <end>")


def test_bad_conversations_and_tokenizers_are_refused() -> None:
    tokenizer = chat_tokenizer()
    with pytest.raises(DataError, match="Message 0 of row 0"):
        chat_examples(tokenizer, [[{"role": "user", "content": 3}]], max_length=8, desc="test")
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        chat_examples(tokenizer, [CONVERSATION], max_length=8, desc="test")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if loop.last %} <end>{% endif %} "
                               "{% endfor %}")
    with pytest.raises(DataError, match="renders the first"):
        chat_examples(tokenizer, [CONVERSATION], max_length=64, desc="test")
