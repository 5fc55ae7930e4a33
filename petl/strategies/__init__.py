"""Built-in strategies: one module each. Importing a module registers it."""

from petl.strategies import adalora, bottleneck, lora, prefix  # noqa: F401
