"""Built-in strategies: one module each. Importing a module registers it."""

from petl.strategies import adalora, lora  # noqa: F401
from petl.strategies import prefix  # noqa: F401
from petl.strategies import bottleneck  # noqa: F401
