"""The Hugging Face configs a model holds: every ``PretrainedConfig`` its modules reach as ``.config``.

A model's submodules often share one config object, and composite models hold
sub-configs inside their config (``text_config``); strategies that change a config
(prefix-tuning points its attention implementation at petl's) and ``petl.wrap``'s
snapshot both need the distinct objects, found here once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["model_configs"]


def model_configs(modules: nn.Module | Iterable[nn.Module], *, nested: bool = False) -> list[Any]:
    """The distinct ``PretrainedConfig`` objects held as ``.config`` by ``modules`` (a model's modules).

    Args:
        modules: A model (all of its modules are searched) or the modules themselves.
        nested: Also return the configs held inside those configs (sub-configs).

    Without transformers imported no module can hold a config, and transformers is not imported here.
    """
    cls = getattr(sys.modules.get("transformers.configuration_utils"), "PretrainedConfig", None)
    if cls is None:
        return []
    items = modules.modules() if isinstance(modules, nn.Module) else modules
    found: dict[int, Any] = {}
    pending = [getattr(module, "config", None) for module in items][::-1]
    while pending:
        config = pending.pop()
        if isinstance(config, cls) and id(config) not in found:
            found[id(config)] = config
            if nested:
                pending.extend(value for value in vars(config).values() if isinstance(value, cls))
    return list(found.values())
