"""Generative evaluation: decode the evaluation prompts and score the text (ROUGE, exact match).

The prompts and references come from the tokenised evaluation examples themselves, so
any data petl reads (prompt + completion, chat ``messages``, seq2seq source + target)
is scored the same way:

* causal LM: the prompt is every token before the last run of labelled tokens (for a
  chat, the conversation up to and including the last ``<assistant>`` header), the
  reference is that run decoded without special tokens. Plain text (labels on every
  token) has no prompt and is not generated;
* seq2seq: the prompt is the source, the reference the decoded target.

Decoding is greedy (``num_beams=1``) or beam search, with the KV cache, in batches of
prompts sorted by length (so a batch carries little padding; the texts are put back in
the examples' order). Decoder-only models get left padding, so every row's next token
follows its last prompt token; ``generate`` derives the positions from the attention mask.
Under data parallelism each process decodes every ``num_processes``-th example and the
per-example scores are gathered, so every process reports the same metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from petl.data.columns import SUMMARY_COLUMNS
from petl.errors import ConfigError
from petl.metrics.rouge import ROUGE_KEYS, exact_match, rouge_scores
from petl.tasks import IGNORE_INDEX, LM_TASKS
from petl.training.config import GENERATION_METRICS

__all__ = [
    "GENERATION_METRICS", "SUMMARY_COLUMNS", "GenerationSettings", "generate_texts", "generation_metrics",
    "generation_settings", "prompts_and_references",
]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class GenerationSettings:
    """How the evaluation generates (from :class:`~petl.training.config.TrainConfig`)."""

    metrics: tuple[str, ...]
    """Some of :data:`GENERATION_METRICS`."""
    max_new_tokens: int = 64
    num_beams: int = 1
    limit: int | None = None
    """Generate for the first this many evaluation examples only (``None``: all)."""
    batch_size: int = 8
    tokenizer: Any = None
    """Decodes the generated and the reference tokens."""

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The ``eval_`` keys these settings add to an evaluation."""
        names: list[str] = []
        if "rouge" in self.metrics:
            names += [f"eval_{k}" for k in ROUGE_KEYS]
        if "exact_match" in self.metrics:
            names.append("eval_exact_match")
        return tuple(names)


def generation_settings(config: Any, data: Any) -> GenerationSettings | None:
    """The generation of a run, or ``None`` when it generates nothing.

    ``config.generation_metrics`` ``None`` means: ROUGE when the task is generative and the
    target column holds summaries (:data:`SUMMARY_COLUMNS`), else nothing (generation is slow);
    ``()`` switches it off.

    Raises:
        ConfigError: Generation metrics were asked for a task that does not generate, or without a
            tokenizer to decode with.
    """
    metrics = getattr(config, "generation_metrics", None)
    if metrics is None:
        if data.task not in LM_TASKS or getattr(data, "target_column", None) not in SUMMARY_COLUMNS:
            return None
        metrics = ("rouge",)
    metrics = tuple(metrics)
    if not metrics or data.eval is None:
        return None
    if data.task not in LM_TASKS:
        raise ConfigError(f"generation_metrics={list(metrics)} (--generation-metrics) needs a generative task "
                          f"(causal-lm or seq2seq), not {data.task!r}. Drop the option.")
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("Generative evaluation decodes text and needs the tokenizer: pass tokenizer= to petl.train "
                          "(or load_task_data), or drop generation_metrics.")
    return GenerationSettings(
        metrics=metrics, max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
        limit=config.eval_generate_examples, batch_size=config.eval_batch_size or 2 * config.batch_size,
        tokenizer=tokenizer,
    )


def prompts_and_references(task: str, examples: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """Each example's prompt ids and reference ids (see the module docstring); plain-text examples are skipped."""
    pairs = []
    for example in examples:
        ids, labels = list(example["input_ids"]), list(example["labels"])
        if task == "seq2seq":
            pairs.append((ids, [t for t in labels if t != IGNORE_INDEX]))
            continue
        labelled = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        if not labelled or labelled[0] == 0:
            continue  # nothing to prompt with
        end = labelled[-1] + 1
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        pairs.append((ids[:start], labels[start:end]))
    return pairs


def _pad_id(tokenizer: Any, model: nn.Module) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "config", None), "pad_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


def generate_texts(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
    num_beams: int = 1, batch_size: int = 8,
) -> list[str]:
    """Decode a continuation of each prompt (token ids) and return the texts, in the prompts' order.

    Args:
        model: A causal-LM or seq2seq model (wrapped or not) with ``generate``.
        tokenizer: Decodes the new tokens (special tokens dropped); its pad id pads the batches.
        prompts: The prompts as token ids (for seq2seq: the source).
        max_new_tokens: The most tokens generated per prompt.
        num_beams: 1 for greedy decoding, more for beam search.
        batch_size: Prompts per ``generate`` call.
    """
    config = getattr(model, "config", None)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    pad = _pad_id(tokenizer, model)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: memory fails early
    texts: list[str] = [""] * len(prompts)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": False,
                               "pad_token_id": pad, "use_cache": True}
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):  # the tokenizer's end (a chat model's end of turn) stops decoding too
        known = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        known = [known] if isinstance(known, int) else list(known or [])
        options["eos_token_id"] = sorted({eos, *known})
    for start in range(0, len(order), batch_size):
        rows = [list(prompts[i]) for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            place = slice(0, len(row)) if encoder_decoder else slice(width - len(row), width)  # left pad: decoder
            ids[b, place] = torch.tensor(row, dtype=torch.long)
            mask[b, place] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options)
        new = out if encoder_decoder else out[:, width:]
        for b, i in enumerate(order[start : start + batch_size]):
            texts[i] = tokenizer.decode(new[b].tolist(), skip_special_tokens=True).strip()
    return texts


def generation_metrics(model: nn.Module, dataset: Any, settings: GenerationSettings, *, task: str,
                       accelerator: Any = None) -> dict[str, float]:
    """Generate for the evaluation examples and return the ``eval_`` metrics of ``settings``.

    Args:
        model: The model (as the accelerator prepared it, or plain).
        dataset: The tokenised evaluation examples (``input_ids`` and ``labels``).
        settings: What to generate and report.
        task: ``"causal-lm"`` or ``"seq2seq"``.
        accelerator: The run's accelerator, to share the work between processes; ``None`` for one process.
    """
    examples = [dataset[i] for i in range(len(dataset) if settings.limit is None else min(settings.limit,
                                                                                         len(dataset)))]
    pairs = prompts_and_references(task, examples)
    if not pairs:
        logger.warning("No evaluation example has a prompt to generate from (plain text?): no generation metrics.")
        return {}
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    inner = accelerator.unwrap_model(model) if accelerator is not None else model
    mine = pairs[rank::world]
    tokenizer = settings.tokenizer
    predictions = generate_texts(inner, tokenizer, [p for p, _ in mine], max_new_tokens=settings.max_new_tokens,
                                 num_beams=settings.num_beams, batch_size=settings.batch_size)
    references = [tokenizer.decode(r, skip_special_tokens=True).strip() for _, r in mine]
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        row = rouge_scores(prediction, reference) if "rouge" in settings.metrics else {}
        if "exact_match" in settings.metrics:
            row["exact_match"] = exact_match([prediction], [reference])
        scores.append(row)
    if world > 1:
        from accelerate.utils import gather_object

        scores = gather_object(scores)
    return {f"eval_{key}": sum(s[key] for s in scores) / len(scores) for key in scores[0]} if scores else {}
