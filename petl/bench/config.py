"""The benchmark configuration: what to compare, on which model and data, with which budget.

A benchmark is described in a TOML file (or the same structure in JSON)::

    name = "sst2_minilm"
    task = "sequence-classification"
    seeds = [0, 1, 2]

    [model]
    name = "minilm"              # a demo name (minilm, smollm2), a local folder or a Hub name

    [data]
    train = "../shared/data/sst2/train.tsv"   # or "synthetic", or a Hub data set name
    eval = "../shared/data/sst2/validation.tsv"
    max_length = 64

    [train]
    epochs = 3
    batch_size = 32

    [timing]
    warmup_steps = 3
    steps = 20

    [[strategies]]
    name = "full"                # full fine-tuning: the baseline
    learning_rate = 5e-5

    [[strategies]]
    name = "lora"
    label = "lora-r8"
    learning_rate = 1e-3
    options = { r = 8 }

Every table rejects unknown keys with the nearest valid name, so a typo never
silently falls back to a default. Relative data paths are looked up from the current
directory first, then from the config file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petl.bench.schema import (
    DEVICES,
    DataSpec,
    ModelSpec,
    SearchSpec,
    StrategySpec,
    TimingSpec,
    TrainSpec,
    check_keys,
)
from petl.core.validators import check, check_choice
from petl.data.readers import SUFFIXES
from petl.errors import ConfigError, ConfigFileError, DataFileError, DeviceError, suggest
from petl.tasks import DEFAULT_METRIC, TASKS

__all__ = ["BenchConfig", "check_runnable", "load_config"]


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """A whole benchmark: one model, one task and data set, several rows compared side by side."""

    name: str = "bench"
    """The benchmark's name, used in reports."""
    task: str = "sequence-classification"
    """One of sequence-classification, token-classification, causal-lm, seq2seq."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Every row trains once per seed; the task metric is reported as mean, 95% interval and the
    paired difference from full fine-tuning. Three by default in a config file (the built-in
    default benchmark keeps one to stay within its 10 minutes)."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"``, or ``"cuda"`` (fails without a GPU)."""
    metric: str | None = None
    """The reported task metric; ``None`` picks the task's (accuracy, entity F1, perplexity)."""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    timing: TimingSpec = field(default_factory=TimingSpec)
    strategies: tuple[StrategySpec, ...] = ()
    """The rows; full fine-tuning (``name = "full"``) is the baseline of the ratios."""
    search: SearchSpec = field(default_factory=SearchSpec)
    """The ``[search]`` table: tune each row's learning rate (and declared options) first."""
    tolerance: float = 1.0
    """The verdict's margin: the cheapest strategy within this many points (percentage points
    of accuracy / F1, units of perplexity) of full fine-tuning."""

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and self.name != "", f"name must be a non-empty string, got {self.name!r}.")
        check_choice("task", self.task, TASKS)
        check_choice("device", self.device, DEVICES)
        seeds = (self.seeds,) if isinstance(self.seeds, int) else tuple(self.seeds)
        check(
            len(seeds) > 0 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds),
            f"seeds must be a non-empty list of non-negative integers, got {self.seeds!r}.",
        )
        check(len(set(seeds)) == len(seeds), f"seeds must not repeat, got {list(seeds)!r}.")
        check(isinstance(self.tolerance, (int, float)) and not isinstance(self.tolerance, bool)
              and self.tolerance >= 0, f"tolerance must be a number of points >= 0, got {self.tolerance!r}.")
        _check_search_options(self.search, self.strategies)
        object.__setattr__(self, "seeds", seeds)
        check(self.metric is None or isinstance(self.metric, str),
              f"metric must be a metric name, got {self.metric!r}.")
        if self.metric is not None and not self.metric.startswith("eval_"):
            object.__setattr__(self, "metric", f"eval_{self.metric}")
        check(len(self.strategies) > 0,
              "The benchmark has no [[strategies]] rows. Add at least one, e.g. name = \"lora\".")
        labels = [row.display for row in self.strategies]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        check(not repeated, f"Row labels must be unique, got {repeated} twice. Give the rows distinct `label`s.")
        if self.data.synthetic:
            check(
                self.task in ("sequence-classification", "causal-lm"),
                f"Synthetic data exists for sequence-classification and causal-lm, not {self.task!r}. "
                "Give [data] train and eval files for this task.",
            )

    @property
    def metric_name(self) -> str:
        """The reported task metric (with its ``eval_`` prefix)."""
        return self.metric or DEFAULT_METRIC[self.task]

    def row(self, label: str) -> StrategySpec:
        """The row called ``label``."""
        for row in self.strategies:
            if row.display == label:
                return row
        labels = [r.display for r in self.strategies]
        raise ConfigError(f"No row {label!r}.{suggest(label, labels)} Rows: {', '.join(labels)}.")

    def resolved(self, row: StrategySpec) -> dict[str, Any]:
        """A row's effective learning rate, precision, optimizer and 8-bit setting."""
        return {
            "learning_rate": row.learning_rate if row.learning_rate is not None else self.train.learning_rate,
            "mixed_precision": row.mixed_precision or self.train.mixed_precision,
            "optimizer": row.optimizer or self.train.optimizer,
            "load_in_8bit": row.load_in_8bit if row.load_in_8bit is not None else self.model.load_in_8bit,
        }

    def quick(self) -> BenchConfig:
        """A tiny budget to check that every row runs: 64 training and 32 evaluation
        examples, 4 steps, 1 warm-up and 3 timed rounds, one seed."""
        data = dataclasses.replace(
            self.data, train_examples=min(self.data.train_examples or 64, 64),
            eval_examples=min(self.data.eval_examples or 32, 32), max_length=min(self.data.max_length, 64),
            doc_stride=min(self.data.doc_stride, 16),
        )
        train = dataclasses.replace(self.train, epochs=1, max_steps=4, batch_size=min(self.train.batch_size, 8))
        timing = dataclasses.replace(self.timing, warmup_steps=1, steps=min(self.timing.steps, 3), batches=2)
        search = dataclasses.replace(self.search, trials=min(self.search.trials, 2), epochs=None)
        return self.replace(data=data, train=train, timing=timing, seeds=self.seeds[:1], search=search)

    def select(self, names: list[str] | tuple[str, ...]) -> BenchConfig:
        """Keep only the rows whose label or strategy name is in ``names`` (in the config's order);
        a registered strategy (see ``petl.available()``) that is no row, or ``"full"`` (full
        fine-tuning), is added at its defaults.

        Raises:
            ConfigError: A name matches no row and no registered strategy.
        """
        from petl.core import registry

        known = sorted({r.display for r in self.strategies} | {r.name for r in self.strategies})
        extra = [name for name in names if name not in known]
        for name in extra:
            if name != "full" and name not in registry.available():
                hint = suggest(name, known) or suggest(name, registry.available())  # the rows first
                raise ConfigError(
                    f"--strategies names {name!r}, which is neither a row of {self.name!r} nor a registered "
                    f"strategy.{hint} Rows: {', '.join(known)}; strategies: "
                    f"{', '.join(registry.available())}."
                )
        rows = tuple(r for r in self.strategies if r.display in names or r.name in names)
        return self.replace(strategies=rows + tuple(StrategySpec(name=name) for name in extra))

    def replace(self, **changes: Any) -> BenchConfig:
        """A copy with some top-level fields (or whole tables) changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values that :meth:`from_dict` reads back into an equal config."""
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        out["strategies"] = [
            {k: v for k, v in dataclasses.asdict(row).items() if v is not None and v != {}}
            for row in self.strategies
        ]
        return out

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], *, base_dir: Path | None = None) -> BenchConfig:
        """Build and validate a config from the parsed TOML / JSON tables.

        Args:
            options: The top-level table.
            base_dir: The config file's folder, a second place to look for relative data paths.

        Raises:
            ConfigError: An unknown key (with the nearest valid one) or an invalid value.
            UnknownStrategyError: A row names a strategy that is not registered.
            DataFileError: A data path that does not exist.
        """
        check_keys("top level", options, cls)
        top = dict(options)
        sections = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec, "timing": TimingSpec,
                    "search": SearchSpec}
        for key, spec in sections.items():
            if key in top:
                check_keys(key, top[key], spec)
                top[key] = spec(**top[key])
        if "strategies" in top:
            rows = top["strategies"]
            if not isinstance(rows, (list, tuple)):
                raise ConfigError(f"strategies must be a list of tables ([[strategies]]), got {rows!r}.")
            top["strategies"] = tuple(StrategySpec.from_dict(row) for row in rows)
        config = cls(**top)
        return config.replace(data=_resolve_paths(config.data, base_dir))


def _check_search_options(search: SearchSpec, rows: tuple[StrategySpec, ...]) -> None:
    """Every option named in ``[search] options`` is declared by some row's strategy."""
    declared = sorted({name for row in rows for name in row.search_space})
    for name in search.options or ():
        if name not in declared:
            raise ConfigError(
                f"[search] options names {name!r}, which no row's strategy offers to a search."
                f"{suggest(name, declared)} Searchable options of these rows: {', '.join(declared) or 'none'}."
            )


def _looks_like_path(text: str) -> bool:
    return Path(text).suffix.lower() in SUFFIXES or text.startswith((".", "/", "~")) or os.sep in text


def _resolve_path(text: str, role: str, base_dir: Path | None) -> str:
    """An existing path (from the current directory, then ``base_dir``), or a Hub name as is."""
    candidates = [Path(text).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.append(base_dir / text)
    for path in candidates:
        if path.exists():
            return str(path.resolve())
    if not _looks_like_path(text):
        return text  # a Hub data set name, loaded by petl.data.read_dataset
    looked = " and ".join(str(p.resolve()) for p in candidates)
    raise DataFileError(
        f"The {role} data file {text!r} does not exist (looked in {looked}). Fix [data] {role} in the config, "
        "or use train = \"synthetic\" for petl's generated data."
    )


def _resolve_paths(data: DataSpec, base_dir: Path | None) -> DataSpec:
    if data.synthetic:
        return data
    return dataclasses.replace(
        data,
        train=_resolve_path(data.train, "train", base_dir),
        eval=_resolve_path(data.eval, "eval", base_dir) if data.eval is not None else None,
    )


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigFileError(
                f"Reading {path} needs a TOML parser: Python 3.11+, or `pip install tomli` on Python 3.10. "
                "Or write the same tables as JSON."
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}. Fix the line it names.") from exc


def load_config(path: str | os.PathLike[str]) -> BenchConfig:
    """Read a benchmark config from a ``.toml`` or ``.json`` file.

    Raises:
        ConfigFileError: The file is missing, unreadable or does not parse.
        ConfigError, UnknownStrategyError, DataFileError: Invalid content (see
            :meth:`BenchConfig.from_dict`).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        near = ""
        if file.parent.is_dir():
            near = suggest(file.name, [p.name for p in file.parent.iterdir() if p.suffix in (".toml", ".json")])
        raise ConfigFileError(f"No benchmark config at {file}.{near} Pass a .toml or .json file.")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"Cannot read {file}: {exc}.") from exc
    if file.suffix.lower() == ".json":
        try:
            options = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"{file} is not valid JSON: {exc}.") from exc
    elif file.suffix.lower() == ".toml":
        options = _parse_toml(text, file)
    else:
        raise ConfigFileError(f"{file} is neither .toml nor .json. Name the benchmark config *.toml (or *.json).")
    if not isinstance(options, dict):
        raise ConfigFileError(f"{file} must hold a table of options at the top, got {type(options).__name__}.")
    return BenchConfig.from_dict(options, base_dir=file.parent.resolve())


def check_runnable(config: BenchConfig) -> str:
    """The device the benchmark will run on (``"cuda"`` or ``"cpu"``).

    Raises:
        PetlError: ``device = "cuda"``, fp16, or 8-bit CUDA rows without a CUDA device.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise DeviceError(
            f"The benchmark {config.name!r} sets device = \"cuda\", but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Run it on a machine with an "
            "NVIDIA GPU and a CUDA build of torch, or set device = \"cpu\" (and drop fp16 rows) to run on the CPU."
        )
    device = "cuda" if has_cuda and config.device != "cpu" else "cpu"
    for row in config.strategies:
        if device == "cpu" and config.resolved(row)["mixed_precision"] == "fp16":
            raise DeviceError(
                f"Row {row.display!r} uses mixed_precision = \"fp16\", which needs a CUDA GPU; this run is on the CPU. "
                "Use \"bf16\" (CPU autocast) or \"no\"."
            )
    return device
