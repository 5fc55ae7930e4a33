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

import math
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

from petl.errors import CheckpointError, ConfigError, PetlError, suggest

__all__ = [
    "FLOAT32_MAX",
    "check",
    "check_bool",
    "check_choice",
    "check_float32",
    "check_non_negative_int",
    "check_number",
    "check_positive_int",
    "check_state_dict",
    "dtype_kind",
    "int_tuple",
    "is_finite_number",
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


FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32 (and, nearly, bfloat16) value: a multiplier above it becomes infinity
inside the model, and ``0 * inf`` turns a freshly initialised adapter's zero output into NaN."""


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is an ``int`` or ``float`` (not a bool) that is a finite float.

    NaN and infinity are not, and neither is an integer too large to convert to a float.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


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
    """``value`` is a finite real number (not a bool) within the bounds given.

    NaN, infinity and integers too large for a float are refused whatever the bounds:
    they would reach the model as NaN outputs or overflow errors.

    Args:
        name: The option's name, as the user wrote it.
        value: What the user passed.
        low: The lowest value allowed (excluded with ``low_open``); ``None`` for no bound.
        high: The highest value allowed (excluded unless ``high_open=False``); ``None`` for no bound.
        allow_none: Accept ``None`` as well.
    """
    if value is None and allow_none:
        return
    finite = is_finite_number(value)
    ok = finite
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
    if not finite and isinstance(value, (int, float)) and not isinstance(value, bool):
        # NaN, infinity, or an int too large for a float
        shown = repr(value) if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
        raise ConfigError(f"{name} must be a finite {bound.removeprefix('a ')}{_or_none(allow_none)}, got {shown}.")
    check(ok, f"{name} must be {bound}{_or_none(allow_none)}, got {value!r}.")


def check_float32(name: str, value: Any) -> None:
    """``value``, a number that multiplies tensors (or ``None``), is within float32's range.

    Call it after :func:`check_number`. A larger multiplier becomes infinity inside a float32
    or bfloat16 model, and infinity times a zero-initialised adapter is NaN.
    """
    if value is None:
        return
    check(
        abs(value) <= FLOAT32_MAX,
        f"{name} must be at most {FLOAT32_MAX:.6g} in magnitude (the largest float32), got {value!r}: the model "
        "multiplies by it in its own dtype, where a larger value becomes infinity and its outputs NaN.",
    )


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
    """``value`` (one string, or a list, tuple or set of strings) as a tuple of strings.

    A set is sorted, so that the tuple (and the saved config) is the same in every run;
    a mapping is refused rather than read as its keys.
    """
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (Mapping, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(
            f"{name} must be a module name or a list of module names, got {type(value).__name__} {value!r}."
        )
    items = tuple(value)
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{name} must contain only strings, got {value!r}.")
    return tuple(_sorted_if_set(value)) if isinstance(value, Set) else items


def int_tuple(name: str, value: Any, *, what: str = "indices") -> tuple[int, ...]:
    """``value`` (one integer or an iterable of them) as a non-empty tuple of distinct integers >= 0."""
    items: Any = (value,) if is_int(value) else value
    if isinstance(items, (Mapping, str, bytes)) or not isinstance(items, Iterable):
        raise ConfigError(f"{name} must be a list of {what}, got {type(value).__name__} {value!r}.")
    items = tuple(_sorted_if_set(items))
    if not items or not all(is_int(i) and i >= 0 for i in items):
        raise ConfigError(f"{name} must be a non-empty list of {what} (integers >= 0), got {value!r}.")
    if len(set(items)) != len(items):
        raise ConfigError(f"{name} lists an entry twice: {value!r}.")
    return items


def _sorted_if_set(items: Iterable[Any]) -> Iterable[Any]:
    """A set in sorted order (the same in every run), anything else as it is."""
    if isinstance(items, Set):
        try:
            return sorted(items)
        except TypeError:  # mixed types: the caller's item check rejects them
            return list(items)
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


def dtype_kind(dtype: Any) -> str | None:
    """``"bool"``, ``"complex"``, ``"floating"`` or ``"integer"`` for a torch or NumPy dtype, else ``None``.

    A tensor loads into a model tensor of the same kind with a conversion (float32 into
    bfloat16, say); across kinds the values would change meaning (an int64 file of
    adapter weights, a float mask).
    """
    if dtype is None:
        return None
    kind = getattr(dtype, "kind", None)  # NumPy
    if isinstance(kind, str):
        return {"b": "bool", "c": "complex", "f": "floating"}.get(kind, "integer" if kind in "iu" else None)
    if str(dtype) == "torch.bool":
        return "bool"
    if getattr(dtype, "is_complex", False):
        return "complex"
    if getattr(dtype, "is_floating_point", False):
        return "floating"
    return "integer" if str(dtype).startswith("torch.") else None


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def check_state_dict(
    expected: Mapping[str, Any],
    found: Mapping[str, Any],
    *,
    source: str,
    fix: str,
    error: type[PetlError] = CheckpointError,
) -> None:
    """Raise ``error`` unless ``found`` has exactly the keys of ``expected``, with the same shapes
    and the same kind of dtype (floating, integer, bool, complex; a float32 tensor fits a
    bfloat16 one, an int64 tensor does not fit a float one).

    Args:
        expected: The model's tensors (anything with ``.shape`` and ``.dtype``), by name.
        found: The tensors read from a file or handed in, by name.
        source: What ``found`` is, for the message ("The adapter in out/").
        fix: How to fix a mismatch, the message's last sentence.
        error: The :class:`PetlError` subclass to raise.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shared = sorted(set(expected) & set(found))
    shapes = [
        f"{key}: file {tuple(found[key].shape)}, model {tuple(expected[key].shape)}"
        for key in shared
        if tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    dtypes = []
    for key in shared:
        ours, theirs = getattr(expected[key], "dtype", None), getattr(found[key], "dtype", None)
        if dtype_kind(ours) is not None and dtype_kind(theirs) is not None and dtype_kind(ours) != dtype_kind(theirs):
            dtypes.append(f"{key}: file {_dtype_name(theirs)}, model {_dtype_name(ours)}")
    if missing or unexpected or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_listed(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listed(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listed(shapes)}")
        if dtypes:
            parts.append(f"dtype mismatches (values of another kind): {_listed(dtypes)}")
        raise error(f"{source} does not fit this model ({'; '.join(parts)}). {fix}")
