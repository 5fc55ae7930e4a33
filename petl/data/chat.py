"""Multi-turn chat data for causal LM: the tokenizer's chat template, the loss on assistant turns only.

Each row holds one conversation, a list of ``{"role": ..., "content": ...}`` messages
(the ``messages`` format; the column is found by :func:`petl.data.columns.find_messages_column`).
The whole conversation is rendered once with ``tokenizer.apply_chat_template`` and tokenised
once (so the tokens are exactly those the model sees at inference), and a token is labelled
when it starts inside an assistant turn:

    turn i = [ len(render(messages[:i], add_generation_prompt=True)),
               len(render(messages[:i + 1]).rstrip()) )

that is, from the end of the assistant header the template writes before the reply to the
end of the reply's end-of-turn marker (``<|im_end|>`` in ChatML), so the model learns
to stop; the white space after it is not labelled. The system prompt, the user turns and
the headers get ``IGNORE_INDEX``. A template that renders earlier turns differently once
later turns follow (one that drops past reasoning, say) breaks the prefix property these
boundaries rest on, and is refused with a :class:`~petl.errors.DataError`.

Truncation cuts ``input_ids`` and ``labels`` at the same ``max_length`` position, so a cut
reply keeps the labels of its first tokens; a conversation with no labelled token left
is dropped, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from petl.errors import ColumnNotFoundError, DataError
from petl.tasks import IGNORE_INDEX

__all__ = ["assistant_spans", "chat_examples", "prepare_chat"]

logger = logging.getLogger(__name__)


def _check_conversation(messages: Any, index: int, split: str, column: str) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"Row {index} of the {split} data has {messages!r} in the chat column {column!r}; each row "
                        'needs a non-empty list of messages, e.g. [{"role": "user", "content": "Hi"}, ...].')
    for turn, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"Message {turn} of row {index} of the {split} data ({column!r}) is {message!r}; every "
                            "message needs a string role and a string content.")
    return [dict(m) for m in messages]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant reply (see the module docstring).

    Raises:
        DataError: The template does not render the conversation's prefixes as prefixes of the whole.
    """
    full = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1]).rstrip()
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                f"The chat template renders the first {i + 1} messages differently once later turns follow, so the "
                "assistant turns cannot be located in the rendered text. Use a template that renders every turn "
                "the same way, or tokenise the data yourself (input_ids and labels columns)."
            )
        spans.append((len(before), len(through)))
    return full, spans


def chat_examples(
    tokenizer: Any, conversations: Sequence[Any], *, max_length: int, desc: str, split: str = "training",
    column: str = "messages", offset: int = 0,
) -> list[dict[str, Any]]:
    """Tokenise conversations with the chat template, labels on the assistant turns only.

    Raises:
        DataError: No chat template or no fast tokenizer (offsets are needed), a malformed
            conversation (the message names the row), or a template without the prefix property.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"The {split} data holds conversations ({column!r}) but the tokenizer has no chat template. "
                        "Load the instruct model's tokenizer, or set tokenizer.chat_template to a Jinja template.")
    if not getattr(tokenizer, "is_fast", True):
        raise DataError(f"Chat data needs a fast tokenizer (for character offsets), got {type(tokenizer).__name__}. "
                        "Load it with AutoTokenizer.from_pretrained(..., use_fast=True).")
    examples, dropped = [], 0
    for index, raw in enumerate(conversations, start=offset):
        messages = _check_conversation(raw, index, split, column)
        text, spans = assistant_spans(tokenizer, messages)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])[:max_length]
        starts = [start for start, _ in encoding["offset_mapping"]][:max_length]
        labels = [t if any(a <= s < b for a, b in spans) else IGNORE_INDEX for t, s in zip(ids, starts, strict=True)]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if dropped:
        logger.warning("Dropped %d of %d %s conversations with no assistant token within max_length=%d (or no "
                       "assistant turn); raise max_length to keep them.", dropped, len(conversations), desc,
                       max_length)
    return examples


def prepare_chat(splits: Mapping[str, Any], tokenizer: Any, max_length: int, *, column: str, offset: int = 0,
                 **_: Any) -> tuple[dict[str, list[dict[str, Any]]], None, dict[str, str | None]]:
    """The causal-LM examples of every split's ``column`` of conversations (``prepare_splits``' result form).

    Raises:
        ColumnNotFoundError: A split lacks the chat column.
    """
    examples = {}
    for name, dataset in splits.items():
        if column not in dataset.column_names:
            found = ", ".join(map(repr, dataset.column_names))
            raise ColumnNotFoundError(f"The {name} data has no chat column {column!r}; its columns are {found}. "
                                      "Give both splits the same columns.")
        examples[name] = chat_examples(tokenizer, list(dataset[column]), max_length=max_length,
                                       desc=f"{name} data", split=name, column=column, offset=offset)
    return examples, None, {"text_column": column, "text_pair_column": None, "label_column": None,
                            "target_column": None}
