"""petl: parameter-efficient tuning for any Hugging Face model.

    import petl
    model = petl.wrap(model, "lora", r=8)
    print(petl.count_parameters(model))
    petl.save(model, "out/")

Every public name is imported on first use (PEP 562), so ``import petl`` and the
``petl`` command start without loading torch, transformers or peft.
"""

from __future__ import annotations

import importlib
import logging as _logging
from typing import TYPE_CHECKING, Any


class _QuietOptionalKernel(_logging.Filter):
    """Drop bitsandbytes' notice that its optional 4-bit CPU kernel (fetched from a hub) is
    missing: petl's 8-bit paths do not use it, and the notice would greet every run."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "gemm_4bit_forward" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_QuietOptionalKernel())

__version__ = "0.1.0"

_HOMES = {
    "AdaLoraConfig": "petl.strategies.adalora",
    "BottleneckConfig": "petl.strategies.bottleneck",
    "LoraConfig": "petl.strategies.lora",
    "PrefixConfig": "petl.strategies.prefix",
    "ParameterCount": "petl.core.params",
    "count_parameters": "petl.core.params",
    "PetlError": "petl.errors",
    "Strategy": "petl.core.strategy",
    "StrategyBase": "petl.core.strategy",
    "StrategyConfig": "petl.core.config",
    "TrainConfig": "petl.training",
    "TrainResult": "petl.training",
    "train": "petl.training",
    "attach": "petl.integrations.trainer",
    **{name: "petl.core.adapters" for name in ("add_adapter", "adapters", "delete_adapter", "disabled", "set_active")},
    "available": "petl.core.registry",
    "register": "petl.core.registry",
    "load": "petl.core.io",
    "save": "petl.core.io",
    "merge": "petl.core.wrapping",
    "unwrap": "petl.core.wrapping",
    "wrap": "petl.core.wrapping",
}
"""Each public name and the module that defines it."""

_SUBMODULES = {
    "registry": "petl.core.registry",
    "validators": "petl.core.validators",
    **{name: f"petl.{name}" for name in (
        "bench", "cli", "core", "data", "errors", "files", "integrations", "metrics", "modeling", "strategies",
        "tasks", "threads", "training",
    )},
}
"""Modules reachable as attributes: the subpackages, and ``petl.registry`` and
``petl.validators`` (the registry and the config checks a plugin strategy uses)."""

__all__ = [
    "AdaLoraConfig",
    "BottleneckConfig",
    "LoraConfig",
    "ParameterCount",
    "PetlError",
    "PrefixConfig",
    "Strategy",
    "StrategyBase",
    "StrategyConfig",
    "TrainConfig",
    "TrainResult",
    "add_adapter",
    "adapters",
    "attach",
    "available",
    "count_parameters",
    "delete_adapter",
    "disabled",
    "load",
    "merge",
    "register",
    "save",
    "set_active",
    "train",
    "unwrap",
    "wrap",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'petl' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__, *_SUBMODULES])


if TYPE_CHECKING:  # what type checkers and IDEs see
    from petl.core.adapters import adapters, add_adapter, delete_adapter, disabled, set_active
    from petl.core.config import StrategyConfig
    from petl.core.io import load, save
    from petl.core.params import ParameterCount, count_parameters
    from petl.core.registry import available, register
    from petl.core.strategy import Strategy, StrategyBase
    from petl.core.wrapping import merge, unwrap, wrap
    from petl.errors import PetlError
    from petl.integrations.trainer import attach
    from petl.strategies.adalora import AdaLoraConfig
    from petl.strategies.bottleneck import BottleneckConfig
    from petl.strategies.lora import LoraConfig
    from petl.strategies.prefix import PrefixConfig
    from petl.training import TrainConfig, TrainResult, train
