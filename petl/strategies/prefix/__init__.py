"""Prefix-tuning, implemented natively on transformers' attention interface.

* :mod:`petl.strategies.prefix.strategy`: the ``prefix`` strategy, its config and the
  prefix parameters (:class:`PrefixEncoder`);
* :mod:`petl.strategies.prefix.attention`: the attention functions that prepend the
  prefix keys and values, and the probe that finds the attention layers.
"""

from petl.strategies.prefix.strategy import PrefixConfig, PrefixEncoder, PrefixStrategy

__all__ = ["PrefixConfig", "PrefixEncoder", "PrefixStrategy"]
