"""Loading what a benchmark row trains: the tokenizer, the task data and the model.

Every row of a benchmark, and every seed, starts from the same pretrained weights
and the same tokenised data; only the task head's initialisation follows the seed.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from petl.bench.config import BenchConfig, StrategySpec
from petl.errors import PetlError

__all__ = ["build_row_model", "load_data", "load_tokenizer", "model_source"]

logger = logging.getLogger(__name__)


def model_source(config: BenchConfig) -> tuple[str, dict[str, Any]]:
    """The folder (or Hub name) of the config's model and its extra ``from_pretrained`` options."""
    from petl import demo_models

    spec = config.model
    if spec.name == demo_models.MINILM:
        return str(demo_models.minilm_path()), {}
    if spec.name == demo_models.SMOLLM2:
        return str(demo_models.smollm2_path()), {"gguf_file": demo_models.SMOLLM2_GGUF}
    return spec.name, {}


def load_tokenizer(config: BenchConfig) -> Any:
    """The model's tokenizer, with a padding token (decoder-only models often lack one).

    Raises:
        PetlError: No tokenizer can be loaded from the model's folder or name.
    """
    from transformers import AutoTokenizer

    source, options = model_source(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise PetlError(
            f"Cannot load a tokenizer for the model {config.model.name!r} ({source}): {exc}. "
            "Set [model] name to a local model folder, or to 'minilm' / 'smollm2'."
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
        config.task, train, held_out, tokenizer=tokenizer, max_length=data.max_length,
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

    import petl
    from petl.cli import load_model

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialised": the fresh head, expected
    try:
        model = load_model(
            config.model.name, config.task, num_labels=data.num_labels, label_names=data.label_names,
            load_in_8bit=config.resolved(row)["load_in_8bit"], pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if not row.is_full:
        petl.wrap(model, row.strategy_config())
    return model

