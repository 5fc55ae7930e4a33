"""Tiny random Hugging Face models built from configs: no downloads, fast on CPU.

``build(arch, head)`` returns a model in eval mode, seeded, and ``inputs(arch, head)``
a batch it accepts. ``CASES`` lists every (architecture, head) pair the suites run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf
from torch import nn

VOCAB = 128
HIDDEN = 32
NUM_LABELS = 3
BART_EOS = 2  # token ids below 3 never occur at random, so special tokens stay special

_COMMON: dict[str, Any] = {"vocab_size": VOCAB}


def _configs() -> dict[str, Callable[[], Any]]:
    return {
        "bert": lambda: tf.BertConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **_COMMON
        ),
        "roberta": lambda: tf.RobertaConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            pad_token_id=1, **_COMMON
        ),
        "distilbert": lambda: tf.DistilBertConfig(dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=64, **_COMMON),
        "gpt2": lambda: tf.GPT2Config(
            n_embd=HIDDEN, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
            **_COMMON
        ),
        "llama": lambda: tf.LlamaConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, pad_token_id=0, **_COMMON
        ),
        # Gemma 3 (text): sliding-window and global layers, q/k norms, a scaled embedding, tied
        # embeddings; the family of the demo model "gemma3" (Gemma 3 270M).
        "gemma3_text": lambda: tf.Gemma3TextConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
            intermediate_size=64, pad_token_id=0, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            **_COMMON
        ),
        "qwen2": lambda: tf.Qwen2Config(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, pad_token_id=0, **_COMMON
        ),
        "mistral": lambda: tf.MistralConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, pad_token_id=0, **_COMMON
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=HIDDEN,
            pad_token_id=1, **_COMMON
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, pad_token_id=0,
            **_COMMON
        ),
        "t5": lambda: tf.T5Config(
            d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0, **_COMMON
        ),
        "bart": lambda: tf.BartConfig(
            d_model=HIDDEN, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1,
            bos_token_id=0, eos_token_id=BART_EOS, decoder_start_token_id=BART_EOS, **_COMMON
        ),
    }


HEADS: dict[str, str] = {
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "qa": "AutoModelForQuestionAnswering",  # a span head: start and end logits per token (qa_outputs)
}

ARCH_HEADS: dict[str, tuple[str, ...]] = {
    "bert": ("seq-cls", "token-cls", "qa"),
    "roberta": ("seq-cls", "token-cls", "qa"),
    "distilbert": ("seq-cls", "token-cls", "qa"),
    "gpt2": ("causal-lm", "seq-cls"),
    "llama": ("causal-lm", "seq-cls"),
    "gemma3_text": ("causal-lm", "seq-cls"),
    "qwen2": ("causal-lm", "token-cls"),
    "mistral": ("causal-lm",),
    "opt": ("causal-lm", "seq-cls"),
    "gpt_neox": ("causal-lm", "token-cls"),
    "t5": ("seq2seq-lm",),
    "bart": ("seq2seq-lm", "seq-cls"),
}

CASES: list[tuple[str, str]] = [(arch, head) for arch, heads in ARCH_HEADS.items() for head in heads]
ENCODER_DECODER = ("t5", "bart")


STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    # peft defaults sized for hidden sizes in the hundreds, which a 32-wide tiny model cannot take.
    "miss": {"r": 8},  # r <= in_features
    "shira": {"r": 2},  # fewer sparse entries than the base layer has weights
    "c3a": {"block_size": 8},  # a factor of every adapted layer's in and out sizes
    "road": {"group_size": 8},  # divides every adapted layer's out size
    "fourierft": {"n_frequency": 64},  # <= d_in * d_out of the smallest layer (32 x 16)
}
"""Options the tests pass to ``petl.wrap`` for a strategy on the tiny models (its defaults otherwise)."""


def strategy_options(strategy: str, **extra: Any) -> dict[str, Any]:
    """The options for ``strategy`` on a tiny model, with ``extra`` on top."""
    return {**STRATEGY_OPTIONS.get(strategy, {}), **extra}


def config(arch: str) -> Any:
    cfg = _configs()[arch]()
    cfg.num_labels = NUM_LABELS
    return cfg


def build(arch: str, head: str, seed: int = 0) -> nn.Module:
    """A freshly initialised tiny model, in eval mode, the same for the same seed."""
    torch.manual_seed(seed)
    auto = getattr(tf, HEADS[head])
    cfg = config(arch)
    if head == "qa":
        cfg.num_labels = 2  # qa_outputs: one start and one end logit per token
    model = auto.from_config(cfg, attn_implementation="eager")
    return model.eval()


def inputs(arch: str, head: str, batch: int = 2, length: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch the model accepts, with a padded second row and labels for a loss."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, -2:] = 0
    if arch == "bart":  # BART's classifier reads the hidden state at each row's last <eos>
        ids[torch.arange(batch), mask.sum(1) - 1] = BART_EOS
    out: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    if head == "seq-cls":
        out["labels"] = torch.randint(0, NUM_LABELS, (batch,), generator=g)
    elif head == "token-cls":
        out["labels"] = torch.randint(0, NUM_LABELS, (batch, length), generator=g)
    elif head == "causal-lm":
        out["labels"] = ids.masked_fill(mask == 0, -100)
    elif head == "seq2seq-lm":
        out["labels"] = torch.randint(3, VOCAB, (batch, 4), generator=g)
    elif head == "qa":  # the answer's first and last token (within the unpadded part)
        start = torch.randint(0, length - 2, (batch,), generator=g)
        out["start_positions"], out["end_positions"] = start, start + 1
    return out


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits on ``batch`` (labels dropped), without grad."""
    feed = {k: v for k, v in batch.items() if k != "labels"}
    if "labels" in batch and batch["labels"].dim() == 2 and "decoder_input_ids" not in feed and _is_seq2seq(model):
        feed["labels"] = batch["labels"]
    with torch.no_grad():
        output = model(**feed)
    if getattr(output, "start_logits", None) is not None:  # a span head: (batch, length, 2)
        return torch.stack((output.start_logits, output.end_logits), dim=-1)
    return output.logits


def _is_seq2seq(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def perturb_trainable(model: nn.Module, seed: int = 3, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every trainable tensor, as training would (a fresh adapter is often zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale)
    return model
