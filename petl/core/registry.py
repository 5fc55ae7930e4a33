"""The open, string-keyed registry of strategies.

Built-in strategies register themselves with :func:`register` when
``petl.strategies`` is imported. Installed packages add strategies through the
``petl.strategies`` entry-point group, for example in their ``pyproject.toml``::

    [project.entry-points."petl.strategies"]
    my_method = "my_package.my_method:MyStrategy"

Entry points are read lazily, the first time a name is looked up or listed, so
importing petl stays cheap and a broken plugin cannot break ``import petl``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from petl.errors import DuplicateStrategyError, PetlError, UnknownStrategyError, suggest

__all__ = ["ENTRY_POINT_GROUP", "available", "for_peft_type", "get", "register", "unregister"]

ENTRY_POINT_GROUP = "petl.strategies"

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

_strategies: dict[str, type] = {}
_owners: dict[str, str] = {}
_builtins_loaded = False
_entry_points_loaded = False


def _owner(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _add(name: str, cls: type, owner: str) -> None:
    if not isinstance(name, str) or not name:
        raise PetlError(f"A strategy name must be a non-empty string, got {name!r}.")
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        raise PetlError(
            f"{owner} cannot be registered as {name!r}: it has no `config_class` attribute "
            "naming its StrategyConfig subclass."
        )
    if name in _strategies and _strategies[name] is not cls:
        raise DuplicateStrategyError(
            f"The strategy name {name!r} is taken twice: by {_owners[name]} and by {owner}. "
            "Register one of them under another name, or uninstall one of the packages."
        )
    config_class.strategy = name
    _strategies[name] = cls
    _owners[name] = owner


def register(name: str) -> Callable[[T], T]:
    """Class decorator that registers a strategy under ``name``.

    Example::

        @petl.register("my-method")
        class MyStrategy(petl.StrategyBase):
            config_class = MyConfig
            ...

    Raises:
        DuplicateStrategyError: Another class already holds ``name``.
    """

    def decorator(cls: T) -> T:
        _add(name, cls, _owner(cls))
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a strategy from the registry (for tests and interactive sessions)."""
    _strategies.pop(name, None)
    _owners.pop(name, None)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("petl.strategies")


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", "an installed package")
        try:
            cls: Any = ep.load()
        except Exception as exc:  # a broken plugin must not break petl itself
            logger.warning("Skipping strategy %r from %s: loading %s failed: %s", ep.name, dist, ep.value, exc)
            continue
        if name_taken_by_same(ep.name, cls):
            continue
        _add(ep.name, cls, f"{ep.value} (entry point of {dist})")
    # Only now: a name clash raises again on every look-up until it is resolved.
    _entry_points_loaded = True


def name_taken_by_same(name: str, cls: type) -> bool:
    """True when ``cls`` already holds ``name`` (a plugin that also uses ``@register``)."""
    return _strategies.get(name) is cls


def _load_all() -> None:
    _load_builtins()
    _load_entry_points()


def reload_entry_points() -> None:
    """Read the ``petl.strategies`` entry points again (after installing a plugin)."""
    global _entry_points_loaded
    _entry_points_loaded = False
    _load_all()


def available() -> tuple[str, ...]:
    """The sorted names of every registered strategy, built-in and installed."""
    _load_all()
    return tuple(sorted(_strategies))


def get(name: str) -> type:
    """The strategy class registered under ``name``.

    Raises:
        UnknownStrategyError: No strategy has that name; the message lists the
            available ones and suggests the nearest.
    """
    _load_all()
    try:
        return _strategies[name]
    except (KeyError, TypeError):
        names = sorted(_strategies)
        hint = suggest(name, names) if isinstance(name, str) else ""
        raise UnknownStrategyError(
            f"Unknown strategy {name!r}.{hint} Available strategies: {', '.join(names)}. "
            "Third-party strategies appear here once their package is installed."
        ) from None


def for_peft_type(peft_type: str) -> type | None:
    """The registered strategy class that reads peft folders of ``peft_type`` (``"LORA"``), or ``None``.

    A class claims a peft type by declaring ``peft_type`` itself (see
    :class:`petl.core.strategy.StrategyBase`); one inherited from a parent class does not count.

    Raises:
        DuplicateStrategyError: Two registered strategies claim the same peft type.
    """
    _load_all()
    claims = sorted(name for name, cls in _strategies.items() if vars(cls).get("peft_type") == peft_type)
    if len(claims) > 1:
        raise DuplicateStrategyError(
            f"The strategies {claims} all read peft folders of type {peft_type!r} "
            f"({', '.join(_owners[name] for name in claims)}). Keep the peft_type declaration on one of them."
        )
    return _strategies[claims[0]] if claims else None
