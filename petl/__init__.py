"""petl: parameter-efficient tuning for any Hugging Face model.

    import petl
    model = petl.wrap(model, "lora", r=8)
    print(petl.count_parameters(model))
    petl.save(model, "out/")
"""

from petl.config import StrategyConfig
from petl.errors import PetlError
from petl.io import load, save
from petl.params import ParameterCount, count_parameters
from petl.registry import available, register
from petl.strategies.lora import LoraConfig
from petl.strategy import Strategy, StrategyBase
from petl.wrapping import merge, unwrap, wrap

__version__ = "0.1.0"

__all__ = [
    "LoraConfig",
    "ParameterCount",
    "PetlError",
    "Strategy",
    "StrategyBase",
    "StrategyConfig",
    "available",
    "count_parameters",
    "load",
    "merge",
    "register",
    "save",
    "unwrap",
    "wrap",
]
