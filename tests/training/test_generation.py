"""Generative evaluation: batched, left-padded, cached decoding equals a plain greedy loop, on plain,
LoRA- and prefix-wrapped tiny Llamas; prompts and references come from the labels; the trainer reports ROUGE."""

from __future__ import annotations

import datasets
import pytest
import tiny_models as T
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import petl
from petl.errors import ConfigError
from petl.tasks import IGNORE_INDEX
from petl.training.generation import generate_texts, prompts_and_references


class IdTokenizer:
    """Decodes ids as their numbers: the texts show exactly which tokens were generated."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == self.pad_token_id))


def greedy_without_cache(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """The reference: one full forward pass per new token, no batching, no padding, no KV cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


PROMPTS = [[5, 9, 17], [40, 41], [7, 8, 9, 10, 11, 12, 13], [99, 3, 4, 5, 6]]


@pytest.mark.parametrize("strategy", [None, "lora", "prefix"])
def test_batched_left_padded_decoding_matches_plain_greedy_decoding(strategy: str | None) -> None:
    model = T.build("llama", "causal-lm")
    model.generation_config.eos_token_id = None  # decode the full budget
    if strategy is not None:
        options = {"num_virtual_tokens": 4} if strategy == "prefix" else {"r": 4}
        model = petl.wrap(model, strategy, **options)
        torch.manual_seed(3)
        with torch.no_grad():  # an adapter that changes the output (LoRA starts as the identity)
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)
    model.eval()
    texts = generate_texts(model, IdTokenizer(), PROMPTS, max_new_tokens=5, batch_size=3)
    expected = [" ".join(map(str, greedy_without_cache(model, p, 5))) for p in PROMPTS]
    assert texts == expected
    assert generate_texts(model, IdTokenizer(), PROMPTS[:1], max_new_tokens=5) == expected[:1]


def test_prompts_and_references_come_from_the_last_labelled_run() -> None:
    chat = {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "labels": [-100, -100, 3, 4, -100, -100, 7, 8]}
    plain = {"input_ids": [1, 2], "labels": [1, 2]}
    assert prompts_and_references("causal-lm", [chat, plain]) == [([1, 2, 3, 4, 5, 6], [7, 8])]
    source = {"input_ids": [4, 5], "labels": [6, IGNORE_INDEX]}
    assert prompts_and_references("seq2seq", [source]) == [([4, 5], [6])]


WORDS = ["[PAD]", "[UNK]", "<end>", "summarize", "alice", "meets", "bob", "they", "talk", "about", "work"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="<end>")


def test_training_on_a_summary_column_reports_rouge_and_exact_match() -> None:
    rows = [{"prompt": "summarize alice meets bob", "summary": "they talk about work"}] * 4
    data = datasets.Dataset.from_list(rows)
    model = petl.wrap(T.build("llama", "causal-lm"), "lora", r=2)
    config = petl.TrainConfig(max_steps=1, batch_size=2, progress_bar=False, max_new_tokens=4,
                              eval_generate_examples=3, metric_for_best="rougeL")
    result = petl.train(model, data, data, tokenizer=word_tokenizer(), task="causal-lm", config=config,
                        data_options={"target_column": "summary", "max_length": 16})
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert "eval_exact_match" not in result.metrics and "eval_loss" in result.metrics
    result = petl.train(model, data, data, tokenizer=word_tokenizer(), task="causal-lm",
                        config=config.replace(generation_metrics=["exact_match"], metric_for_best=None),
                        data_options={"target_column": "summary", "max_length": 16})
    assert 0.0 <= result.metrics["eval_exact_match"] <= 1.0 and "eval_rouge1" not in result.metrics
    result = petl.train(model, data, data, tokenizer=word_tokenizer(), task="causal-lm",
                        config=config.replace(generation_metrics=(), metric_for_best=None),
                        data_options={"target_column": "summary", "max_length": 16})
    assert "eval_rouge1" not in result.metrics


def test_generation_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="generation_metrics"):
        petl.TrainConfig(generation_metrics=("bleu",))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        petl.TrainConfig(max_new_tokens=0)
    assert petl.TrainConfig(generation_metrics="rouge").generation_metrics == ("rouge",)


def test_seq2seq_batches_are_right_padded_and_put_back_in_order() -> None:
    model = T.build("t5", "seq2seq-lm")
    one_by_one = []
    for prompt in PROMPTS:
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=4, do_sample=False)
        one_by_one.append(IdTokenizer().decode(out[0].tolist()))
    assert generate_texts(model, IdTokenizer(), PROMPTS, max_new_tokens=4, batch_size=3) == one_by_one


def test_the_cli_flag_reads_a_list_or_none() -> None:
    from petl.cli.train import _generation_metrics

    assert _generation_metrics(None) is None
    assert _generation_metrics("none") == ()
    assert _generation_metrics("rouge, exact_match") == ("rouge", "exact_match")
