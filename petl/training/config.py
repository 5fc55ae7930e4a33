"""The options of :func:`petl.train`, one frozen keyword-only dataclass.

``to_dict`` / ``from_dict`` round-trip a config through JSON (the trainer writes
``train_config.json`` next to its outputs) and reject unknown keys, suggesting the
nearest valid one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from petl.core.validators import (
    check,
    check_bool,
    check_choice,
    check_non_negative_int,
    check_number,
    check_positive_int,
    reject_unknown,
    set_field,
)

__all__ = [
    "GENERATION_METRICS", "MIXED_PRECISION", "OPTIMIZERS", "SCHEDULERS", "TRACKERS", "TrainConfig",
    "default_learning_rate",
]

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULERS = ("linear", "cosine", "constant")
TRACKERS = ("tensorboard",)
GENERATION_METRICS = ("rouge", "exact_match")
"""What generative evaluation can report (:mod:`petl.training.generation`)."""


def default_learning_rate(wrapped: bool) -> float:
    """The peak learning rate used when none is given: adapters train at high rates,
    while a high rate would wreck pretrained weights under full fine-tuning."""
    return 1e-3 if wrapped else 5e-5


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of :func:`petl.train`; every field has a working default."""

    output_dir: str | None = None
    """Folder for checkpoints, the best adapter (``best/``), ``metrics.json`` and the
    JSON-lines log (a ``Path`` is stored as a string); a run that does not resume starts
    the log afresh. ``None`` writes nothing and keeps the best weights in memory."""
    epochs: int = 3
    """Passes over the training set (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Number of optimizer steps to take; overrides ``epochs`` (handy for quick runs)."""
    batch_size: int = 8
    """Examples per process and micro-batch; an optimizer step sees
    ``batch_size * gradient_accumulation_steps * processes`` examples."""
    eval_batch_size: int | None = None
    """Examples per evaluation batch; ``None`` uses ``2 * batch_size`` (no gradients to keep)."""
    learning_rate: float | None = None
    """Peak learning rate. ``None`` picks 1e-3 for a wrapped model (adapters train at
    high rates) and 5e-5 for full fine-tuning (a high rate would wreck pretrained weights)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay, applied to matrices only (not to biases or norms)."""
    lr_scheduler: str = "linear"
    """Decay after warm-up: ``"linear"`` to zero, ``"cosine"`` to zero, or ``"constant"``."""
    warmup_ratio: float = 0.06
    """Fraction of the optimizer steps over which the rate rises linearly from zero,
    which keeps the first updates of a fresh adapter and head from overshooting."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this value; ``None`` disables clipping."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step: a larger effective batch in the same memory."""
    mixed_precision: str = "no"
    """``"no"`` (fp32), ``"fp16"`` (GPU, with loss scaling) or ``"bf16"`` (GPU or CPU):
    autocast for the forward pass while the trainable weights stay in fp32."""
    optimizer: str = "adamw"
    """``"adamw"`` (torch) or ``"adamw8bit"`` (bitsandbytes, 8-bit states: a quarter
    of the optimizer memory)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    group_by_length: bool = False
    """Draw each optimizer step's examples from examples of similar length (megabatches of up to 50
    steps, sorted by length: :mod:`petl.training.sampling`), so short examples are not padded to
    the longest of a random batch: about 2x the tokens per second on SST-2 and CoNLL-2003. The
    order still depends only on ``seed`` and the epoch, so a resume is exact; every epoch still
    visits every example once. Off by default because it changes what a step sees: where length
    goes with the kind of example, each step holds one kind (on petl's synthetic sentiment data,
    LoRA ended 5.1 points lower on average over four seeds, lower at each), and token-level losses (token
    classification, causal LM, seq2seq) average over a batch's tokens, so short batches weigh
    more (CoNLL-2003: 0.022 F1 lower). Turn it on where a measurement shows the metric holds
    (SST-2: within seed noise); ``benchmarks/results/padding.md`` and
    ``benchmarks/results/length_grouping_default.md`` have the numbers. Applies to map-style data
    with ``input_ids``: not to a stream (no lengths), nor with ``packing`` (which removes the
    padding itself)."""
    token_weighted_loss: bool = False
    """Token classification, causal LM and seq2seq: weigh each micro-batch's loss (the mean over
    its labelled tokens, as the model computes it) by its labelled tokens over those of an
    average batch of as many examples, so that every labelled token of an epoch counts alike
    whatever batch it lands in. Without it a batch of short examples weighs as much as one of
    long examples, which matters with ``group_by_length`` (batches of one length); with random
    batches the weights stay near 1. Off by default: on CoNLL-2003 with length grouping it won
    back only 0.006 of the 0.022 F1 grouping lost (4 seeds, within noise;
    ``benchmarks/results/token_weighted_loss.md``)."""
    packing: bool = False
    """Causal LM only: pack the examples of each batch end to end into rows as long as its longest
    example, positions restarting and attention kept within each example
    (:mod:`petl.data.packing`), so a batch carries almost no padding. The same examples, labelled
    tokens and loss as the padded batch, up to float rounding; a model that cannot keep packed
    examples apart (OPT, for one) is refused before training starts."""
    seed: int = 0
    """Seeds Python, NumPy and torch when the run starts, and fixes the data order of every
    epoch: the dropout masks, the shuffling and every other draw of the training itself
    repeat. It cannot reach back to draws made before :func:`petl.train` was called: the
    adapter's initial weights (and a fresh task head) are drawn when the model is loaded
    and wrapped. For a run reproducible end to end, seed first, then load and wrap
    (``transformers.set_seed(seed)`` before ``from_pretrained`` and ``petl.wrap``), as
    ``petl train --seed`` does."""
    eval_steps: int | None = None
    """Evaluate every this many optimizer steps; ``None`` evaluates after each epoch."""
    metric_for_best: str | None = None
    """Evaluation metric that picks the best adapter and drives early stopping
    (with or without the ``eval_`` prefix, e.g. ``"accuracy"`` or ``"loss"``). ``None`` uses
    the task's own metric (``petl.tasks.DEFAULT_METRIC``: accuracy for sequence classification,
    entity F1 for token classification and question answering, perplexity for language
    modelling), the checkpoint a user would pick; ``eval_loss`` when the evaluation reports no
    such metric (a custom evaluator)."""
    greater_is_better: bool | None = None
    """Whether a larger ``metric_for_best`` is better; ``None`` infers it (lower is
    better for losses and perplexity, higher for everything else)."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations in a row without improvement; ``None`` never stops early."""
    load_best_at_end: bool = True
    """Put the best evaluated weights back into the model when training ends."""
    save_steps: int | None = None
    """Write a checkpoint every this many optimizer steps; ``None`` writes one at every
    evaluation point (``eval_steps``, or each epoch's end). Only with ``output_dir``."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir`` (starting afresh, with a
    warning, when there is none), reproducing the uninterrupted run. The checkpoint must
    come from a run with the same options that fix the data, schedule and optimizer, the
    same strategy and strategy options, and the same model; it is checked whole before
    anything is loaded, and a refused one changes neither the model nor the folder."""
    merged_eval: bool = True
    """Evaluate with a LoRA-family adapter folded into the base weights (the strategy's
    ``merged_for_inference``), so evaluation costs what the base model costs; the weights are put
    back bit for bit afterwards and the metrics agree up to float rounding. Needs one extra copy
    of each adapted weight during evaluation; turn it off when memory is that tight. Strategies
    that are no weight change (prefix, bottleneck) evaluate as they are either way."""
    generation_metrics: tuple[str, ...] | None = None
    """Generative evaluation of causal LM and seq2seq (:mod:`petl.training.generation`): some of
    ``"rouge"`` (ROUGE-1/2/L F) and ``"exact_match"``, reported next to the loss. ``None``: ROUGE when
    the target column holds summaries (``summary``, ``highlights``, ...), else none, since decoding
    costs far more than the loss; ``()`` turns it off."""
    max_new_tokens: int = 64
    """Generative evaluation: the most tokens decoded per example."""
    num_beams: int = 1
    """Generative evaluation: 1 decodes greedily, more runs beam search (slower)."""
    eval_generate_examples: int | None = None
    """Generative evaluation: decode only the first this many evaluation examples (``None``: all)."""
    logging_steps: int = 10
    """Log the mean loss, learning rate and throughput every this many optimizer steps."""
    log_with: str | None = None
    """Also log to an Accelerate tracker: ``"tensorboard"`` (event files under ``output_dir``)."""
    progress_bar: bool = True
    """Show a tqdm progress bar (on the main process only)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_steps", "eval_batch_size", "eval_steps", "save_steps", "early_stopping_patience"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        check_number("learning_rate", self.learning_rate, low=0, high=1, low_open=True, allow_none=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        check_number("max_grad_norm", self.max_grad_norm, low=0, low_open=True, allow_none=True)
        check_choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("log_with", self.log_with, TRACKERS, allow_none=True)
        check_non_negative_int("seed", self.seed)
        check(self.metric_for_best is None or (isinstance(self.metric_for_best, str) and self.metric_for_best != ""),
              f"metric_for_best must be a metric name such as 'eval_loss' or 'accuracy' (or None: the task's), "
              f"got {self.metric_for_best!r}.")
        check_bool("group_by_length", self.group_by_length)
        check_bool("packing", self.packing)
        check_bool("token_weighted_loss", self.token_weighted_loss)
        check_positive_int("max_new_tokens", self.max_new_tokens)
        check_positive_int("num_beams", self.num_beams)
        check_positive_int("eval_generate_examples", self.eval_generate_examples, allow_none=True)
        if self.generation_metrics is not None:
            chosen = (self.generation_metrics,) if isinstance(self.generation_metrics, str) else self.generation_metrics
            check(isinstance(chosen, (list, tuple)), f"generation_metrics must be a list of {GENERATION_METRICS} "
                  f"names (or None: automatic), got {self.generation_metrics!r}.")
            for name in chosen:
                check_choice("generation_metrics", name, GENERATION_METRICS)
            set_field(self, "generation_metrics", tuple(chosen))
        for name in ("gradient_checkpointing", "load_best_at_end", "resume", "merged_eval", "progress_bar"):
            check_bool(name, getattr(self, name))
        check(self.greater_is_better is None or isinstance(self.greater_is_better, bool),
              f"greater_is_better must be True, False or None, got {self.greater_is_better!r}.")
        if isinstance(self.output_dir, os.PathLike):
            set_field(self, "output_dir", os.fspath(self.output_dir))
        check(self.output_dir is None or isinstance(self.output_dir, str),
              f"output_dir must be a path string or None, got {type(self.output_dir).__name__}.")
        if self.output_dir is None:
            check(not self.resume, "resume=True needs output_dir: the folder whose checkpoints to resume from.")
            check(self.log_with is None, f"log_with={self.log_with!r} needs output_dir to write its logs into.")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of the options."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> TrainConfig:
        """Build a config from keyword options, rejecting unknown keys.

        Raises:
            ConfigError: An option is unknown or has an invalid value.
        """
        reject_unknown(options, cls.option_names(), "a training option")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some options changed (validated like a new config)."""
        return type(self).from_dict({**self.to_dict(), **changes})
