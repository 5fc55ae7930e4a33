"""``petl list``: one row per registered strategy, its first docstring line, and whether it merges."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

import petl
from petl.cli import SUBCOMMANDS, main
from petl.cli import list as list_cli
from petl.core import registry
from petl.core.config import StrategyConfig
from petl.core.strategy import StrategyBase


def test_list_is_a_registered_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert list_cli in SUBCOMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "list" in capsys.readouterr().out


def test_the_table_has_every_strategy_with_its_first_docstring_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert sorted(lines) == sorted(petl.available())
    assert len(lines) >= 15
    # Independent expectations: LoRA folds B A into W0, a bottleneck adapter is a new module, Lily's
    # shared projector is no weight change in peft 0.21 (its merge raises NotImplementedError).
    expected = {"lora": "yes", "adalora": "yes", "loha": "yes", "ia3": "yes", "bottleneck": "no",
                "prefix": "no", "lily": "no"}
    for name, merges in expected.items():
        assert lines[name].split()[1] == merges, lines[name]
    assert "low-rank updates" in lines["lora"] and "Pfeiffer" in lines["bottleneck"]
    assert "LOHA" in lines["loha"] and "Hadamard" in lines["loha"]


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(petl.available())
    assert rows["ia3"]["peft_type"] == "IA3" and rows["bottleneck"]["peft_type"] is None
    assert rows["vera"]["mergeable"] is True and rows["prefix"]["mergeable"] is False


class _Config(StrategyConfig):
    pass


class _Merges(StrategyBase):
    """A plugin that merges: it overrides merge."""

    config_class: ClassVar[type[StrategyConfig]] = _Config

    def merge(self, model):  # type: ignore[no-untyped-def]
        return model


class _DoesNot(StrategyBase):
    """A plugin that keeps StrategyBase's refusing merge."""

    config_class: ClassVar[type[StrategyConfig]] = _Config


class _Declares(_Merges):
    """Overrides merge but declares it cannot merge."""

    mergeable: ClassVar[bool] = False


def test_mergeable_defaults_from_an_overridden_merge_unless_declared() -> None:
    assert list_cli.mergeable(_Merges) and not list_cli.mergeable(_DoesNot) and not list_cli.mergeable(_Declares)


def test_a_plugin_is_listed_with_its_description(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._strategies, "zz-plugin", _DoesNot)
    monkeypatch.setitem(registry._owners, "zz-plugin", "tests")
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("zz-plugin"))
    assert row.split()[1] == "no" and "keeps StrategyBase's refusing merge" in row
