"""Built-in strategies: one module each. Importing a module registers it."""

# peft_tuners: every other peft tuner, generated from peft's registry.
from petl.strategies import adalora, bottleneck, lora, peft_tuners, prefix, prompt  # noqa: F401
