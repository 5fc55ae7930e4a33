"""The base class of every strategy configuration.

Configs are frozen, keyword-only dataclasses. ``from_dict`` rejects unknown keys
(suggesting the nearest valid one) and ``to_dict`` gives plain JSON-ready values,
so a config round-trips through the ``petl_config.json`` written by ``petl.save``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from petl.errors import ConfigError, suggest

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
            _set(self, "modules_to_save", _str_tuple("modules_to_save", self.modules_to_save))

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
        reject_unknown(options, cls.option_names(), f"an option of the {cls.strategy!r} strategy")
        try:
            return cls(**options)
        except TypeError as exc:  # e.g. a value of the wrong type reaching a comparison
            raise ConfigError(f"Invalid options for the {cls.strategy!r} strategy: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def reject_unknown(
    options: Mapping[str, Any], valid: Sequence[str], what: str, *, noun: str = "options"
) -> None:
    """Raise a :class:`ConfigError` for the first key of ``options`` not in ``valid``,
    saying it "is not <what>", suggesting the nearest valid name and listing them all
    ("Valid <noun>: ...")."""
    for key in options:
        if key not in valid:
            raise ConfigError(f"{key!r} is not {what}.{suggest(str(key), valid)} Valid {noun}: {', '.join(valid)}.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _set(config: StrategyConfig, name: str, value: Any) -> None:
    """Normalise a field of a frozen config inside ``__post_init__``."""
    object.__setattr__(config, name, value)


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be a list of module names, got {value!r}.") from None
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{name} must contain only strings, got {value!r}.")
    return items


def check(condition: bool, message: str) -> None:
    """Raise a :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
