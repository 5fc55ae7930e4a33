"""``petl estimate``: trainable parameters and training memory of every strategy, for any
model size, without loading or allocating weights.

The model is built from its config on the meta device (``with torch.device("meta"):
AutoModelFor<Task>.from_config(config)``: shapes without storage), wrapped with petl
exactly as a real model would be, and its parameters counted, so the counts are those
of the real wrapped model. A strategy whose wrapping needs real tensors (it runs the
model once, say) is counted on a materialised copy when the model is small enough,
and otherwise reported with the reason.

Memory of training, for ``P_f`` frozen and ``P_t`` trainable parameters:

    weights    = sum over frozen params of b_frozen(p) + P_t * b_train
    gradients  = P_t * b_train
    optimizer  = 2 * P_t * b_train  (AdamW: two states in the parameter's dtype)
               = 2 * P_t            (8-bit AdamW: two 1-byte states)
    total      = weights + gradients + optimizer

with bytes per parameter by base precision:

* ``fp32``: ``b_frozen = b_train = 4``;
* ``bf16``: ``b_frozen = 2``; ``b_train = 4`` for adapters and heads (petl keeps
  trainable weights in fp32 under autocast), ``2`` for full fine-tuning (the weights
  themselves are bf16);
* ``int8``: the linear layers bitsandbytes quantizes take 1 byte per weight plus a
  4-byte scale per output row; every other parameter (embeddings, norms, biases,
  task heads) is fp32 (4 bytes), as peft's ``prepare_model_for_kbit_training`` leaves
  it; ``b_train = 4``. Full fine-tuning cannot train 8-bit weights.

Not included: activations (they depend on batch size and sequence length), the
CUDA context, allocator fragmentation, and bitsandbytes' block statistics (and the
32-bit states it keeps for tensors under 4096 elements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.core.validators import check_non_negative_int, check_positive_int
from petl.errors import ConfigError, PetlError, suggest
from petl.modeling.layers import linear_dims
from petl.modeling.loading import task_of_config
from petl.tasks import CLASSIFICATION_TASKS, auto_class_name, check_task
from petl.training.config import OPTIMIZERS

__all__ = [
    "PRECISIONS",
    "PRESETS",
    "EstimateReport",
    "MemoryEstimate",
    "StrategyEstimate",
    "estimate",
    "memory_estimate",
    "resolve_model_config",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
MATERIALIZE_LIMIT = 300_000_000
"""Largest model (in parameters) built for real when a strategy cannot wrap a meta model."""
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
class MemoryEstimate:
    """Training memory of one strategy at one base precision, in bytes."""

    precision: str
    optimizer: str
    weights_bytes: int | None
    gradient_bytes: int | None
    optimizer_bytes: int | None
    note: str | None = None
    """Why the estimate does not apply (``None`` when it does)."""

    @property
    def total_bytes(self) -> int | None:
        if self.weights_bytes is None or self.gradient_bytes is None or self.optimizer_bytes is None:
            return None
        return self.weights_bytes + self.gradient_bytes + self.optimizer_bytes


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

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            item = asdict(row)
            item["share"] = row.share
            item["memory"] = [{**asdict(m), "total_bytes": m.total_bytes} for m in row.memory]
            rows.append(item)
        return {"model": self.model, "task": self.task, "config_class": self.config_class, "rows": rows}


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


def _check_buildable(config: Any, task: str, description: str) -> int:
    """The parameter count of the model ``config`` describes, built on the meta device.

    Raises:
        PetlError: The config's values do not make a model (a negative size, zero heads, ...).
    """
    from petl.core.params import count_parameters

    try:
        return count_parameters(_build(config, task, "meta")).total
    except PetlError:
        raise
    except Exception as exc:  # raised by transformers or torch from a value of the config
        raise PetlError(
            f"Cannot build the {task} model ({auto_class_name(task)}) that the config of {description} describes: "
            f"{type(exc).__name__}: {_one_line(exc)}. Fix the value in its config.json (sizes and head counts must be "
            "positive integers that divide evenly), or pass --task / task= for another head."
        ) from exc


def _quantized_weights(model: nn.Module) -> dict[int, int]:
    """``id(weight) -> output rows`` of the linear layers 8-bit loading quantizes
    (the choice of :func:`petl.modeling.loading.load_model`: :func:`int8_skip_modules` stay)."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    from petl.modeling.loading import int8_skip_modules

    keep = int8_skip_modules(model)
    out = {}
    for name, module in model.named_modules():
        # bitsandbytes replaces exact nn.Linear and Conv1D layers (not other subclasses of nn.Linear)
        if (isinstance(module, Conv1D) or type(module) is nn.Linear) and should_convert_module(name, keep):
            out[id(module.weight)] = linear_dims(module)[1]
    return out


def memory_estimate(model: nn.Module, quantized: dict[int, int], *, precision: str, optimizer: str,
                    full: bool) -> MemoryEstimate:
    """Training memory of a (wrapped or plain) model built on any device (see the module docstring)."""
    if precision == "int8" and full:
        return MemoryEstimate(precision, optimizer, None, None, None,
                              note="full fine-tuning cannot train 8-bit weights")
    b_train = 2 if precision == "bf16" and full else 4
    frozen_bytes = trainable = 0
    for param in model.parameters():
        n = param.numel()
        if param.requires_grad:
            trainable += n
        elif precision == "fp32":
            frozen_bytes += 4 * n
        elif precision == "bf16":
            frozen_bytes += 2 * n
        elif id(param) in quantized:
            frozen_bytes += n + 4 * quantized[id(param)]
        else:
            frozen_bytes += 4 * n
    states = 2 * trainable if optimizer == "adamw8bit" else 2 * trainable * b_train
    return MemoryEstimate(precision, optimizer, frozen_bytes + trainable * b_train, trainable * b_train, states)


def _wrap_and_measure(config: Any, task: str, name: str, options: dict[str, Any], device: str,
                      precisions: Sequence[str], optimizer: str) -> tuple[int, int, list[MemoryEstimate]]:
    from petl.core.params import count_parameters
    from petl.core.wrapping import wrap

    model = _build(config, task, device)
    quantized = _quantized_weights(model)
    if name != "full":
        if device == "meta":
            with torch.device("meta"):  # the adapter's own tensors take no memory either
                wrap(model, name, **options)
        else:
            wrap(model, name, **options)
    count = count_parameters(model)
    memory = [memory_estimate(model, quantized, precision=p, optimizer=optimizer, full=name == "full")
              for p in precisions]
    return count.trainable, count.total, memory


def _materialised(config: Any, task: str, label: str, name: str, options: dict[str, Any],
                  precisions: Sequence[str], optimizer: str, description: str) -> tuple[int, int, list[MemoryEstimate]]:
    """:func:`_wrap_and_measure` on a real CPU copy; a failure that is not a :class:`PetlError` gets context."""
    try:
        return _wrap_and_measure(config, task, name, options, "cpu", precisions, optimizer)
    except PetlError:
        raise
    except Exception as exc:
        raise PetlError(
            f"Counting {label!r} ({name}) on a real copy of {description} failed: {type(exc).__name__}: "
            f"{_one_line(exc)}. "
            "Check the strategy's options against this model, or leave this strategy out."
        ) from exc


def estimate(
    source: str,
    strategies: Sequence[tuple[str, str, dict[str, Any]]] | None = None,
    *,
    task: str | None = None,
    num_labels: int = 2,
    precisions: Sequence[str] = PRECISIONS,
    optimizer: str = "adamw",
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
        materialize_limit: Build the model for real (on the CPU) when a strategy cannot
            wrap it on the meta device and it has at most this many parameters.

    Raises:
        ConfigError: An option (``num_labels``, a precision, a strategy's option) is invalid;
            raised before any model is built.
        PetlError: The model config cannot be read or builds no model, or a strategy fails on
            the real model too. A strategy that only cannot be counted (it needs real tensors
            and the model is larger than ``materialize_limit``) gets a row ``error`` instead.
    """
    from petl.core import registry

    check_positive_int("num_labels", num_labels)
    check_non_negative_int("materialize_limit", materialize_limit)
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
    size = _check_buildable(config, task, description)
    if strategies is None:
        strategies = [("full", "full", {})] + [(n, n, {}) for n in registry.available()]
    rows = []
    for label, name, options in strategies:
        if name != "full":
            registry.get(name).config_class.from_dict(options)  # bad names/options fail before any work
        row = StrategyEstimate(label=label, strategy=name, options=dict(options))
        try:
            row.trainable, row.total, row.memory = _wrap_and_measure(
                config, task, name, options, "meta", precisions, optimizer)
            row.method = "meta"
        except Exception as exc:  # a strategy that needs real tensors fails in its own way on meta ones
            if size > materialize_limit:
                row.error = (f"cannot be counted on the meta device ({exc}); the model has {size:,} parameters, "
                             f"more than the {materialize_limit:,} petl builds for real to count")
                logger.warning("%s: %s", label, row.error)
            else:
                logger.info("%s needs real tensors to wrap (%s); counting on a materialised copy.", label, exc)
                row.trainable, row.total, row.memory = _materialised(
                    config, task, label, name, options, precisions, optimizer, description)
                row.method = "materialised"
        rows.append(row)
    return EstimateReport(model=description, task=task, config_class=type(config).__name__, rows=rows)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def format_estimate(report: EstimateReport) -> str:
    """The text table ``petl estimate`` prints."""
    header = ["strategy", "trainable", "total", "share %", "precision", "weights", "gradients", "optimizer",
              "total mem"]
    lines = [header]
    for row in report.rows:
        if row.error:
            lines.append([row.label, "-", "-", "-", "-", "-", "-", "-", "error"])
            continue
        share = "-" if row.share is None else f"{100 * row.share:.4f}"
        for i, m in enumerate(row.memory):
            first = i == 0
            lines.append([
                row.label if first else "", f"{row.trainable:,}" if first else "", f"{row.total:,}" if first else "",
                share if first else "", m.precision, _size(m.weights_bytes), _size(m.gradient_bytes),
                _size(m.optimizer_bytes), _size(m.total_bytes) if m.note is None else "n/a",
            ])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    optimizer = report.rows[0].memory[0].optimizer if report.rows and report.rows[0].memory else "adamw"
    text.append("")
    text.append(f"{report.model} ({report.config_class}, task {report.task}); optimizer {optimizer}; "
                "memory = weights + gradients + optimizer states, activations not included.")
    for row in report.rows:
        if row.error:
            text.append(f"{row.label}: {row.error}")
        for m in row.memory:
            if m.note:
                text.append(f"{row.label} {m.precision}: n/a, {m.note}")
    return "\n".join(text)
