"""Errors raised for bad training or evaluation data.

Each message says what was found (the columns, the label values, the file) and how
to fix it (the option to pass, the format to use).
"""

from __future__ import annotations

from petl.errors import ConfigError, PetlError

__all__ = [
    "ColumnNotFoundError",
    "DataError",
    "DataFileError",
    "LabelError",
    "UnknownFormatError",
    "UnknownTaskError",
]


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


class UnknownTaskError(ConfigError):
    """A task name that is not one of :data:`petl.data.TASKS`."""
