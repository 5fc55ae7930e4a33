"""The base class of every strategy configuration.

Configs are frozen, keyword-only dataclasses. ``from_dict`` rejects unknown keys
(suggesting the nearest valid one) and ``to_dict`` gives plain JSON-ready values,
so a config round-trips through the ``petl_config.json`` written by ``petl.save``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from petl.core.validators import reject_unknown, set_field, str_tuple
from petl.errors import ConfigError, PetlError

__all__ = ["StrategyConfig"]

C = TypeVar("C", bound="StrategyConfig")


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """Options shared by every strategy.

    Subclasses set :attr:`strategy` to their registry name and add their own fields.
    """

    strategy: ClassVar[str] = ""

    modules_to_save: tuple[str, ...] | None = None
    """Modules trained in full and saved with the adapter. ``None`` picks the task
    head that a ``...ForSequenceClassification`` / ``...ForTokenClassification`` /
    ``...ForQuestionAnswering`` model adds fresh on top of its pretrained body, because
    an adapter is useless without it; ``()`` trains no head."""

    def __post_init__(self) -> None:
        if self.modules_to_save is not None:
            set_field(self, "modules_to_save", str_tuple("modules_to_save", self.modules_to_save))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of the options this config accepts."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls: type[C], options: Mapping[str, Any]) -> C:
        """Build a config from keyword options, rejecting unknown keys.

        Raises:
            ConfigError: An option is unknown or has an invalid value.
        """
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"The options of the {cls.strategy!r} strategy must be a mapping of option names to values, "
                f"got {type(options).__name__} {options!r}."
            )
        reject_unknown(options, cls.option_names(), f"an option of the {cls.strategy!r} strategy")
        try:
            return cls(**options)
        except PetlError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:  # a value of the wrong type reaching a check
            raise ConfigError(
                f"Invalid options for the {cls.strategy!r} strategy: {exc} (got {dict(options)!r}). "
                f"Check the values against the docstring of {cls.__name__}."
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
