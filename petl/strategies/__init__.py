"""Built-in strategies: one module each. Importing a module registers it."""

from petl.strategies import lora  # noqa: F401
