"""``petl estimate``: trainable parameters and training memory of every strategy, for any
model size, without loading or allocating weights.

The model is built from its config on the meta device (``with torch.device("meta"):
AutoModelFor<Task>.from_config(config)``: shapes without storage), wrapped with petl
exactly as a real model would be, and its parameters counted, so the counts are those
of the real wrapped model. A strategy whose wrapping needs real tensors (it runs the
model once, say) is counted on a materialised copy when the model is small enough,
and otherwise reported with the reason.

Memory of training, per strategy and base precision (``fp32``, ``bf16``, ``int8``, ``int4``):

* weights, gradients and optimizer states follow from the parameter counts and the bytes
  per parameter of each precision (:mod:`petl.bench.memory`, where the rules are);
* given a batch shape (``batch_size`` x ``seq_len`` tokens, with or without gradient
  checkpointing), activations are not a factor per model family but the trace of one
  training step of this wrapped model on fake tensors, forward, backward and optimizer
  step, counting the bytes of every tensor the step keeps alive at each moment
  (:mod:`petl.bench.activations`, where the method is). The total is then the traced
  peak of the step,

      peak = weights + optimizer states + max(activations + gradients alive at once
                                              in forward/backward, gradients + step temporaries)

  which is at most weights + gradients + optimizer states + activations; without a batch
  shape the total is weights + gradients + optimizer states.

``benchmarks/estimate_accuracy.py`` checks the peak against the peak resident memory
of real CPU training steps. Not included: the CUDA context, allocator rounding and
fragmentation, bitsandbytes' block statistics of 8-bit optimizer states (and the
32-bit states it keeps for tensors under 4096 elements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.bench.memory import PRECISIONS, MemoryEstimate, dequantized_bytes, memory_estimate, quantized_weights
from petl.bench.table import format_estimate
from petl.core.validators import check_bool, check_non_negative_int, check_positive_int
from petl.errors import ConfigError, PetlError, UnsupportedModelError, suggest
from petl.modeling.loading import task_of_config
from petl.tasks import CLASSIFICATION_TASKS, auto_class_name, check_task
from petl.training.config import OPTIMIZERS

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SEQ_LEN",
    "PRECISIONS",
    "PRESETS",
    "BatchShape",
    "EstimateReport",
    "MemoryEstimate",
    "StrategyEstimate",
    "estimate",
    "format_estimate",
    "memory_estimate",
    "resolve_model_config",
]

logger = logging.getLogger(__name__)

MATERIALIZE_LIMIT = 300_000_000
"""Largest model (in parameters) built for real when a strategy cannot wrap a meta model."""
DEFAULT_BATCH_SIZE = 8
"""The batch size activations are traced at when only the length or checkpointing is given
(the trainer's default, :class:`petl.training.TrainConfig`)."""
DEFAULT_SEQ_LEN = 128
"""The sequence length activations are traced at when only the batch size or checkpointing
is given (the length petl's data preparation truncates to by default)."""


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=32000,
                           max_position_embeddings=4096, architectures=["LlamaForCausalLM"])

    return build


PRESETS: dict[str, Callable[[], Any]] = {
    "llama-7b": _llama(4096, 32, 32, 32, 11008),
    "llama-13b": _llama(5120, 40, 40, 40, 13824),
    "llama-70b": _llama(8192, 80, 64, 8, 28672),
}
"""Published Llama(-2) shapes: 7B, 13B and 70B (grouped-query attention with 8 key/value heads)."""


@dataclass(frozen=True)
class BatchShape:
    """The training batch activations are traced for."""

    batch_size: int
    seq_len: int
    gradient_checkpointing: bool = False


@dataclass
class StrategyEstimate:
    """Parameter counts and memory estimates of one strategy on one model."""

    label: str
    strategy: str
    options: dict[str, Any]
    trainable: int | None = None
    total: int | None = None
    method: str | None = None
    """``"meta"`` (counted on the meta device) or ``"materialised"`` (a real, small copy)."""
    memory: list[MemoryEstimate] = field(default_factory=list)
    error: str | None = None

    @property
    def share(self) -> float | None:
        return self.trainable / self.total if self.trainable is not None and self.total else None


@dataclass
class EstimateReport:
    """What ``petl estimate`` found for one model."""

    model: str
    task: str
    config_class: str
    rows: list[StrategyEstimate]
    shape: BatchShape | None = None
    """The batch activations were traced for (``None``: activations not estimated)."""

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            item = asdict(row)
            item["share"] = row.share
            item["memory"] = [{**asdict(m), "total_bytes": m.total_bytes} for m in row.memory]
            rows.append(item)
        return {"model": self.model, "task": self.task, "config_class": self.config_class,
                "activations": None if self.shape is None else asdict(self.shape), "rows": rows}


def resolve_model_config(source: str) -> tuple[Any, str]:
    """A transformers config for ``source`` and a description of where it came from.

    ``source`` is a preset (:data:`PRESETS`), or anything
    :func:`petl.modeling.loading.load_model_config` reads: a demo name (``minilm``,
    ``smollm2``), a folder with ``config.json``, a ``config.json`` file, or a Hub name.

    Raises:
        PetlError: Nothing can be loaded from ``source``.
    """
    from petl.modeling import demo
    from petl.modeling.loading import load_model_config

    key = source.lower()
    if key in PRESETS:
        return PRESETS[key](), f"preset {key}"
    if key in (demo.MINILM, demo.SMOLLM2):
        return load_model_config(key), f"demo model {key}"
    path = Path(source).expanduser()
    try:
        config = load_model_config(source)
    except PetlError as exc:
        names = sorted(PRESETS) + [demo.MINILM, demo.SMOLLM2]
        raise PetlError(
            f"{exc}{suggest(key, names)} Or pass a benchmark config (.toml/.json), a Hub name (online), "
            f"or one of: {', '.join(names)}."
        ) from exc
    except Exception as exc:  # transformers validating the values it read, e.g. a string where an int belongs
        raise PetlError(
            f"The model config of {source!r} holds an invalid value: {type(exc).__name__}: {_one_line(exc)}. "
            "Fix that value in its config.json."
        ) from exc
    return config, str(path) if path.exists() else f"hub model {source}"


def _build(config: Any, task: str, device: str) -> nn.Module:
    import transformers

    auto = getattr(transformers, auto_class_name(task))
    with torch.device(device):
        return auto.from_config(config)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (transformers' validation errors span several)."""
    return " ".join(str(exc).split())


def _check_buildable(config: Any, task: str, description: str, gradient_checkpointing: bool) -> int:
    """The parameter count of the model ``config`` describes, built on the meta device.

    Raises:
        PetlError: The config's values do not make a model (a negative size, zero heads, ...).
        ConfigError: ``gradient_checkpointing`` is asked of a model that does not support it.
    """
    from petl.core.params import count_parameters

    try:
        model = _build(config, task, "meta")
    except PetlError:
        raise
    except Exception as exc:  # raised by transformers or torch from a value of the config
        raise PetlError(
            f"Cannot build the {task} model ({auto_class_name(task)}) that the config of {description} describes: "
            f"{type(exc).__name__}: {_one_line(exc)}. Fix the value in its config.json (sizes and head counts must be "
            "positive integers that divide evenly), or pass --task / task= for another head."
        ) from exc
    if gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                          "estimate without gradient_checkpointing (--gradient-checkpointing).")
    return count_parameters(model).total


def _wrap(config: Any, task: str, name: str, options: dict[str, Any], device: str) -> tuple[nn.Module, dict[int, int]]:
    """The model wrapped with strategy ``name`` (plain for ``"full"``) and its quantizable weights."""
    from petl.core.wrapping import wrap

    model = _build(config, task, device)
    quantized = quantized_weights(model)
    if name != "full":
        with torch.device(device):  # on the meta device the adapter's own tensors take no memory either
            wrap(model, name, **options)
    return model, quantized


def _count(row: StrategyEstimate, model: nn.Module, quantized: dict[int, int], precisions: Sequence[str],
           optimizer: str) -> None:
    from petl.core.params import count_parameters

    count = count_parameters(model)
    row.trainable, row.total = count.trainable, count.total
    row.memory = [memory_estimate(model, quantized, precision=p, optimizer=optimizer, full=row.strategy == "full")
                  for p in precisions]


def _materialised(config: Any, task: str, row: StrategyEstimate, description: str) -> tuple[nn.Module, dict[int, int]]:
    """:func:`_wrap` on a real CPU copy; a failure that is not a :class:`PetlError` gets context."""
    try:
        return _wrap(config, task, row.strategy, row.options, "cpu")
    except PetlError:
        raise
    except Exception as exc:
        raise PetlError(
            f"Counting {row.label!r} ({row.strategy}) on a real copy of {description} failed: {type(exc).__name__}: "
            f"{_one_line(exc)}. "
            "Check the strategy's options against this model, or leave this strategy out."
        ) from exc


def _add_activations(row: StrategyEstimate, model: nn.Module, quantized: dict[int, int], task: str,
                     shape: BatchShape) -> None:
    """Trace one training step per dtype (fp32 serves int8 and int4 too) and add activations and peaks."""
    from petl.bench.activations import peak_bytes, trace_step

    traces: dict[bool, Any] = {}
    memory = []
    for m in row.memory:
        if m.note is not None:
            memory.append(m)
            continue
        bf16 = m.precision == "bf16"
        if bf16 not in traces:
            try:
                traces[bf16] = trace_step(model, task, batch_size=shape.batch_size, seq_len=shape.seq_len,
                                          full=row.strategy == "full", bf16=bf16,
                                          gradient_checkpointing=shape.gradient_checkpointing)
            except PetlError:
                raise
            except Exception as exc:  # the model or strategy reads tensor values, which fake tensors lack
                traces[bf16] = f"activations not traced: {type(exc).__name__}: {_one_line(exc)[:300]}"
                logger.warning("%s %s: %s", row.label, m.precision, traces[bf16])
        trace = traces[bf16]
        if isinstance(trace, str):
            memory.append(replace(m, activation_note=trace))
            continue
        assert m.weights_bytes is not None and m.optimizer_bytes is not None  # no note: every part is known
        extra = dequantized_bytes(model, quantized, m.precision)  # a temporary of both passes
        peak = peak_bytes(trace, m.weights_bytes, m.optimizer_bytes, extra)
        memory.append(replace(m, activation_bytes=trace.activation_bytes + extra, peak_bytes=peak))
    row.memory = memory


def _batch_shape(config: Any, batch_size: int | None, seq_len: int | None,
                 gradient_checkpointing: bool) -> BatchShape | None:
    """The batch to trace activations for (``None``: none asked for), checked against the model's positions.

    Raises:
        ConfigError: ``seq_len`` exceeds the positions the model has.
    """
    if batch_size is None and seq_len is None and not gradient_checkpointing:
        return None
    shape = BatchShape(batch_size or DEFAULT_BATCH_SIZE, seq_len or DEFAULT_SEQ_LEN, gradient_checkpointing)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int) and shape.seq_len > positions:
        raise ConfigError(f"seq_len={shape.seq_len} is longer than the {positions} positions this model has "
                          f"(max_position_embeddings). Pass a seq_len (--seq-len) of {positions} or less.")
    return shape


def estimate(
    source: str,
    strategies: Sequence[tuple[str, str, dict[str, Any]]] | None = None,
    *,
    task: str | None = None,
    num_labels: int = 2,
    precisions: Sequence[str] = PRECISIONS,
    optimizer: str = "adamw",
    batch_size: int | None = None,
    seq_len: int | None = None,
    gradient_checkpointing: bool = False,
    materialize_limit: int = MATERIALIZE_LIMIT,
) -> EstimateReport:
    """Count parameters and estimate training memory of each strategy on ``source``.

    Args:
        source: See :func:`resolve_model_config`.
        strategies: ``(label, name, options)`` triples; ``name`` ``"full"`` is full
            fine-tuning. ``None``: full and every registered strategy with its defaults.
        task: The model's head (one of :data:`petl.tasks.TASKS`); inferred from the config when ``None``.
        num_labels: Classes of a classification head.
        precisions: Base precisions to estimate (of :data:`PRECISIONS`).
        optimizer: ``"adamw"`` or ``"adamw8bit"``.
        batch_size: Sequences per training batch. Given this, ``seq_len`` or
            ``gradient_checkpointing``, activations are traced and the total is the step's
            peak; the one not given takes :data:`DEFAULT_BATCH_SIZE` / :data:`DEFAULT_SEQ_LEN`.
        seq_len: Tokens per sequence (at most the model's positions).
        gradient_checkpointing: Trace with gradient checkpointing on, as the trainer enables it.
        materialize_limit: Build the model for real (on the CPU) when a strategy cannot
            wrap it on the meta device and it has at most this many parameters.

    Raises:
        ConfigError: An option (``num_labels``, a precision, the batch shape, a strategy's
            option) is invalid; raised before any model is built (``seq_len`` against the
            model's positions, and checkpointing against a model without it, once its
            config is read).
        PetlError: The model config cannot be read or builds no model, or a strategy fails on
            the real model too. A strategy that only cannot be counted (it needs real tensors
            and the model is larger than ``materialize_limit``) gets a row ``error`` instead,
            and one whose step cannot be traced an ``activation_note`` per precision.
    """
    from petl.core import registry

    check_positive_int("num_labels", num_labels)
    check_non_negative_int("materialize_limit", materialize_limit)
    check_positive_int("batch_size", batch_size, allow_none=True)
    check_positive_int("seq_len", seq_len, allow_none=True)
    check_bool("gradient_checkpointing", gradient_checkpointing)
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision {precision!r}.{suggest(precision, PRECISIONS)} "
                              f"Choose from {', '.join(PRECISIONS)}.")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer {optimizer!r}.{suggest(optimizer, OPTIMIZERS)} "
                          f"Choose from {', '.join(OPTIMIZERS)}.")
    config, description = resolve_model_config(source)
    task = check_task(task or task_of_config(config))
    if task in CLASSIFICATION_TASKS:
        try:
            config.num_labels = num_labels
        except Exception as exc:  # the config's own label fields (id2label) disagree with it
            raise PetlError(f"Cannot set num_labels={num_labels} on the config of {description}: {exc}") from exc
    if task == "question-answering":
        config.num_labels = 2  # the span head's start and end logits, as loading sets them
    shape = _batch_shape(config, batch_size, seq_len, gradient_checkpointing)
    size = _check_buildable(config, task, description, gradient_checkpointing)
    if strategies is None:
        strategies = [("full", "full", {})] + [(n, n, {}) for n in registry.available()]
    rows = []
    for label, name, options in strategies:
        if name != "full":
            registry.get(name).config_class.from_dict(options)  # bad names/options fail before any work
        row = StrategyEstimate(label=label, strategy=name, options=dict(options))
        rows.append(row)
        try:
            model, quantized = _wrap(config, task, name, options, "meta")
            row.method = "meta"
        except Exception as exc:  # a strategy that needs real tensors fails in its own way on meta ones
            if size > materialize_limit:
                row.error = (f"cannot be counted on the meta device ({exc}); the model has {size:,} parameters, "
                             f"more than the {materialize_limit:,} petl builds for real to count")
                logger.warning("%s: %s", label, row.error)
                continue
            logger.info("%s needs real tensors to wrap (%s); counting on a materialised copy.", label, exc)
            try:
                model, quantized = _materialised(config, task, row, description)
            except UnsupportedModelError as unsupported:  # the strategy cannot take this model: say so in its row
                row.error = str(unsupported)
                logger.warning("%s: %s", label, row.error)
                continue
            row.method = "materialised"
        _count(row, model, quantized, precisions, optimizer)
        if shape is not None:
            _add_activations(row, model, quantized, task, shape)
    return EstimateReport(model=description, task=task, config_class=type(config).__name__, rows=rows, shape=shape)
