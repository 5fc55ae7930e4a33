"""Fixtures of the benchmark tests: a tiny BERT folder with a real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with hidden size 32 and MiniLM's tokenizer, saved as a model folder."""
    import torch
    import transformers as tf

    from petl.demo_models import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    config = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
    torch.manual_seed(0)
    tf.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
