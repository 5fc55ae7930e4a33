"""petl: parameter-efficient tuning for any Hugging Face model.

    import petl
    model = petl.wrap(model, "lora", r=8)
    print(petl.count_parameters(model))
    petl.save(model, "out/")
"""

import logging as _logging


class _QuietOptionalKernel(_logging.Filter):
    """Drop bitsandbytes' notice that its optional 4-bit CPU kernel (fetched from a hub) is
    missing: petl's 8-bit paths do not use it, and the notice would greet every ``import petl``."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "gemm_4bit_forward" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_QuietOptionalKernel())

from petl.config import StrategyConfig  # noqa: E402
from petl.errors import PetlError  # noqa: E402
from petl.io import load, save  # noqa: E402
from petl.params import ParameterCount, count_parameters  # noqa: E402
from petl.registry import available, register  # noqa: E402
from petl.strategies.adalora import AdaLoraConfig  # noqa: E402
from petl.strategies.bottleneck import BottleneckConfig  # noqa: E402
from petl.strategies.lora import LoraConfig  # noqa: E402
from petl.strategies.prefix import PrefixConfig  # noqa: E402
from petl.strategy import Strategy, StrategyBase  # noqa: E402
from petl.train import TrainConfig, TrainResult, train  # noqa: E402  (the function shadows the module name)
from petl.wrapping import merge, unwrap, wrap  # noqa: E402

__version__ = "0.1.0"

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
    "available",
    "count_parameters",
    "load",
    "merge",
    "register",
    "save",
    "train",
    "unwrap",
    "wrap",
]
