"""Every error petl raises on bad input is a :class:`PetlError`.

Each subclass is raised with a message that says what was received, what is
allowed and how to fix it, so that a user can act on it without reading petl's
source.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AlreadyWrappedError",
    "CheckpointError",
    "ColumnNotFoundError",
    "ConfigError",
    "ConfigFileError",
    "DataError",
    "DataFileError",
    "DeviceError",
    "DuplicateStrategyError",
    "LabelError",
    "NotMergeableError",
    "NotWrappedError",
    "PetlError",
    "TargetNotFoundError",
    "UnknownFormatError",
    "UnknownStrategyError",
    "UnknownTaskError",
    "UnsupportedModelError",
    "suggest",
]


class PetlError(Exception):
    """Base class of every error petl raises for bad input or unsupported use."""


class UnknownStrategyError(PetlError, LookupError):
    """A strategy name that is not registered."""


class DuplicateStrategyError(PetlError):
    """Two strategies registered under the same name."""


class ConfigError(PetlError, ValueError):
    """An unknown option, or an option with an invalid value."""


class TargetNotFoundError(PetlError):
    """Target modules that match nothing in the model."""


class AlreadyWrappedError(PetlError):
    """``wrap`` called on a model that already carries a petl strategy."""


class NotWrappedError(PetlError):
    """An operation that needs a wrapped model got a plain one."""


class CheckpointError(PetlError):
    """A missing, truncated, corrupted or incompatible adapter checkpoint."""


class NotMergeableError(PetlError):
    """``merge`` on a strategy whose adapter cannot be folded into the weights."""


class UnsupportedModelError(PetlError):
    """A model whose structure a strategy cannot handle."""


class UnknownTaskError(ConfigError):
    """A task name that is not one of :data:`petl.tasks.TASKS`."""


class ConfigFileError(ConfigError):
    """A benchmark config file that is missing, unreadable or not valid TOML / JSON."""


class DeviceError(PetlError):
    """A run that needs a device (a CUDA GPU) this machine does not have."""


class DataError(PetlError, ValueError):
    """Training or evaluation data petl cannot use."""


class ColumnNotFoundError(DataError):
    """A text, label or target column that the data set does not have."""


class LabelError(DataError):
    """A label outside ``label_names`` / ``num_labels``, or labels of an unusable type."""


class DataFileError(DataError):
    """A data file or folder that does not exist or cannot be parsed."""


class UnknownFormatError(DataError):
    """A file whose format (extension) petl does not read."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return a " Did you mean 'x'?" hint for ``name``, or an empty string.

    Args:
        name: What the user typed.
        choices: The valid names.
    """
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    if not close:
        return ""
    # Among the close names (best similarity first), the fewest edits wins: 'lroa' is one swap
    # from 'lora' and two edits from 'road', which difflib alone rates higher.
    best = min(close, key=lambda choice: _edits(name.lower(), choice.lower()))
    return f" Did you mean {best!r}?"


def _edits(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that turn ``a`` into ``b``."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]
