"""Checks for configuration values, and the one check that a set of tensors fits a model.

These are the building blocks of every config in petl (strategy configs, the
trainer's options, benchmark files), and they are public so that third-party
strategies validate their options the same way::

    from dataclasses import dataclass
    from petl.core.validators import check, check_number, check_positive_int, set_field, str_tuple

    @dataclass(frozen=True, kw_only=True)
    class IA3Config(petl.StrategyConfig):
        target_modules: tuple[str, ...] = ("key", "value")
        init_scale: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            set_field(self, "target_modules", str_tuple("target_modules", self.target_modules))
            check_number("init_scale", self.init_scale, low=0, low_open=True)

Each raises :class:`petl.errors.ConfigError` with a message of the form
"<name> must be <what is allowed>, got <value>." (plus the nearest valid name for
choices), which is what petl's users see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from petl.errors import CheckpointError, ConfigError, PetlError, suggest

__all__ = [
    "check",
    "check_bool",
    "check_choice",
    "check_non_negative_int",
    "check_number",
    "check_positive_int",
    "check_state_dict",
    "int_tuple",
    "is_int",
    "reject_unknown",
    "set_field",
    "str_tuple",
]


def check(condition: bool, message: str) -> None:
    """Raise a :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``True`` and ``False`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _or_none(allow_none: bool) -> str:
    return " or None" if allow_none else ""


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    """``value`` is an integer above zero (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return
    check(is_int(value) and value > 0, f"{name} must be a positive integer{_or_none(allow_none)}, got {value!r}.")


def check_non_negative_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    """``value`` is an integer of zero or more (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return
    check(is_int(value) and value >= 0,
          f"{name} must be a non-negative integer{_or_none(allow_none)}, got {value!r}.")


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
    allow_none: bool = False,
) -> None:
    """``value`` is a real number (not a bool) within the bounds given.

    Args:
        name: The option's name, as the user wrote it.
        value: What the user passed.
        low: The lowest value allowed (excluded with ``low_open``); ``None`` for no bound.
        high: The highest value allowed (excluded unless ``high_open=False``); ``None`` for no bound.
        allow_none: Accept ``None`` as well.
    """
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if low == 0 and low_open and high is None:
        bound = "a positive number"
    elif low is not None and high is not None:
        bound = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        bound = f"a number {'>' if low_open else '>='} {low}"
    elif high is not None:
        bound = f"a number {'<' if high_open else '<='} {high}"
    else:
        bound = "a number"
    check(ok, f"{name} must be {bound}{_or_none(allow_none)}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[str], *, allow_none: bool = False) -> None:
    """``value`` is one of ``choices``; the message suggests the nearest one."""
    if value is None and allow_none:
        return
    if value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.{hint}")


def check_bool(name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False``."""
    check(isinstance(value, bool), f"{name} must be True or False, got {value!r}.")


def str_tuple(name: str, value: Any) -> tuple[str, ...]:
    """``value`` (one string or an iterable of strings) as a tuple of strings."""
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be a list of module names, got {value!r}.") from None
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{name} must contain only strings, got {value!r}.")
    return items


def int_tuple(name: str, value: Any, *, what: str = "indices") -> tuple[int, ...]:
    """``value`` (one integer or an iterable of them) as a non-empty tuple of distinct integers >= 0."""
    items: Any = (value,) if is_int(value) else value
    try:
        items = tuple(items)
    except TypeError:
        raise ConfigError(f"{name} must be a list of {what}, got {value!r}.") from None
    if not items or not all(is_int(i) and i >= 0 for i in items):
        raise ConfigError(f"{name} must be a non-empty list of {what} (integers >= 0), got {value!r}.")
    if len(set(items)) != len(items):
        raise ConfigError(f"{name} lists an entry twice: {value!r}.")
    return items


def set_field(config: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass inside its ``__post_init__``."""
    object.__setattr__(config, name, value)


def reject_unknown(
    options: Mapping[str, Any], valid: Sequence[str], what: str, *, noun: str = "options"
) -> None:
    """Raise a :class:`ConfigError` for the first key of ``options`` not in ``valid``,
    saying it "is not <what>", suggesting the nearest valid name and listing them all
    ("Valid <noun>: ...")."""
    for key in options:
        if key not in valid:
            raise ConfigError(f"{key!r} is not {what}.{suggest(str(key), valid)} Valid {noun}: {', '.join(valid)}.")


def _listed(keys: Iterable[str], limit: int = 5) -> str:
    keys = list(keys)
    return f"{keys[:limit]}{' ...' if len(keys) > limit else ''}"


def check_state_dict(
    expected: Mapping[str, Any],
    found: Mapping[str, Any],
    *,
    source: str,
    fix: str,
    error: type[PetlError] = CheckpointError,
) -> None:
    """Raise ``error`` unless ``found`` has exactly the keys of ``expected``, with the same shapes.

    Args:
        expected: The model's tensors (anything with ``.shape``), by name.
        found: The tensors read from a file or handed in, by name.
        source: What ``found`` is, for the message ("The adapter in out/").
        fix: How to fix a mismatch, the message's last sentence.
        error: The :class:`PetlError` subclass to raise.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key}: file {tuple(found[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_listed(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listed(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listed(shapes)}")
        raise error(f"{source} does not fit this model ({'; '.join(parts)}). {fix}")
