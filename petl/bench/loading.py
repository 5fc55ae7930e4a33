"""Loading what a benchmark row trains: the tokenizer, the task data and the model.

Every row of a benchmark, and every seed, starts from the same pretrained weights
and the same tokenised data; only the task head's initialisation follows the seed.
Models and tokenizers are found by name through :mod:`petl.modeling.loading`.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from petl.bench.config import BenchConfig
from petl.bench.schema import StrategySpec, row_quantization

__all__ = ["build_row_model", "load_data", "load_tokenizer"]

logger = logging.getLogger(__name__)


def load_tokenizer(config: BenchConfig) -> Any:
    """The tokenizer of the config's model (see :func:`petl.modeling.loading.load_tokenizer`)."""
    from petl.modeling.loading import load_tokenizer as load

    return load(config.model.name)


def _synthetic_dataset(config: BenchConfig) -> tuple[Any, Any]:
    import datasets

    from petl.bench.synthetic import LABEL_NAMES, make_splits, to_prompt_completion

    data = config.data
    train, held_out = make_splits(data.train_examples or 2000, data.eval_examples or 500, seed=data.synthetic_seed)
    if config.task == "causal-lm":
        rows = ([to_prompt_completion(e) for e in split] for split in (train, held_out))
        return tuple(datasets.Dataset.from_list(r) for r in rows)  # type: ignore[return-value]
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=list(LABEL_NAMES))}
    )
    return tuple(  # type: ignore[return-value]
        datasets.Dataset.from_list([{"sentence": e.sentence, "label": e.label} for e in split], features=features)
        for split in (train, held_out)
    )


def load_data(config: BenchConfig, tokenizer: Any) -> Any:
    """The tokenised training and evaluation data (a ``petl.data.TaskData``).

    Raises:
        PetlError: Files that cannot be read, missing columns, bad labels (from ``petl.data``).
    """
    from petl.data import load_task_data, read_dataset

    data = config.data
    if data.synthetic:
        train, held_out = _synthetic_dataset(config)
    else:
        train, held_out = read_dataset(data.train, split="train"), read_dataset(data.eval, split="validation")
        if data.train_examples is not None and len(train) > data.train_examples:
            train = train.select(range(data.train_examples))
        if data.eval_examples is not None and len(held_out) > data.eval_examples:
            held_out = held_out.select(range(data.eval_examples))
    return load_task_data(
        config.task, train, held_out, tokenizer=tokenizer, max_length=data.max_length, doc_stride=data.doc_stride,
        text_column=data.text_column, label_column=data.label_column, target_column=data.target_column,
    )


def build_row_model(config: BenchConfig, row: StrategySpec, data: Any, tokenizer: Any, seed: int) -> nn.Module:
    """The pretrained model with the task's head (initialised from ``seed``), wrapped
    with the row's strategy, or left plain for full fine-tuning.

    Raises:
        PetlError: The model cannot be loaded, or the strategy cannot wrap it.
    """
    import torch
    from transformers import logging as hf_logging

    from petl.core.wrapping import wrap
    from petl.modeling.loading import load_model

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialised": the fresh head, expected
    try:
        model = load_model(
            config.model.name, config.task, num_labels=data.num_labels, label_names=data.label_names,
            quantization=row_quantization(config.model, row), pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if not row.is_full:
        wrap(model, row.strategy_config())
    return model
