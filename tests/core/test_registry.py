"""The open registry: decorator registration, entry points, and its errors."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import petl
from petl.core import registry
from petl.errors import ConfigError, DuplicateStrategyError, UnknownStrategyError, suggest
from petl.strategies.lora import LoraStrategy


def test_builtins_are_listed_sorted() -> None:
    names = petl.available()
    assert {"lora", "adalora"} <= set(names)
    assert list(names) == sorted(names)


def test_unknown_name_lists_available_and_suggests_nearest() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        registry.get("lorra")
    message = str(info.value)
    assert "'lorra'" in message and "Did you mean 'lora'?" in message
    for name in petl.available():
        assert name in message


@pytest.mark.parametrize(("typed", "meant"), [("lroa", "lora"), ("raod", "road"), ("loar", "lora"), ("ai3", "ia3"),
                                              ("prefx", "prefix"), ("bottlenek", "bottleneck")])
def test_the_suggestion_is_the_fewest_edits_away(typed: str, meant: str) -> None:
    # difflib alone rates 'road' nearer to 'lroa' than 'lora', one swap away
    assert suggest(typed, petl.available()) == f" Did you mean {meant!r}?"
    assert suggest("qwertyuiop", petl.available()) == ""


def test_wrap_with_unknown_name_is_a_petl_error() -> None:
    import torch

    model = torch.nn.Linear(2, 2)
    with pytest.raises(petl.PetlError, match="Unknown strategy 'lorra'"):
        petl.wrap(model, "lorra")
    assert all(p.requires_grad for p in model.parameters())


@dataclass(frozen=True, kw_only=True)
class _EchoConfig(petl.StrategyConfig):
    scale: float = 1.0
    """Unused."""


def test_decorator_registers_and_duplicates_name_both_owners() -> None:
    @petl.register("test-echo")
    class Echo(LoraStrategy):
        config_class = _EchoConfig

    try:
        assert "test-echo" in petl.available()
        assert registry.get("test-echo") is Echo
        assert _EchoConfig.strategy == "test-echo"
        with pytest.raises(DuplicateStrategyError) as info:

            @petl.register("test-echo")
            class Other(LoraStrategy):
                config_class = _EchoConfig

        assert "Echo" in str(info.value) and "Other" in str(info.value)
    finally:
        registry.unregister("test-echo")
    assert "test-echo" not in petl.available()


def test_registering_a_class_without_config_is_refused() -> None:
    with pytest.raises(petl.PetlError, match="config_class"):

        @petl.register("test-broken")
        class Broken:
            pass


def _install_fake_plugin(root: Path, module: str, entry_name: str, target: str, body: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[petl.strategies]\n{entry_name} = {module}:{target}\n")


PLUGIN = """
    from dataclasses import dataclass
    import petl
    from petl.strategies.lora import LoraStrategy, LoraConfig

    @dataclass(frozen=True, kw_only=True)
    class PluginConfig(LoraConfig):
        pass

    class PluginStrategy(LoraStrategy):
        config_class = PluginConfig
"""


def test_entry_point_plugin_is_discovered_and_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_plugin(tmp_path, "petl_fake_plugin", "fake-lora", "PluginStrategy", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry.reload_entry_points()
        assert "fake-lora" in petl.available()
        import tiny_models as T

        model = petl.wrap(T.build("bert", "seq-cls"), "fake-lora", r=2)
        assert petl.count_parameters(model).trainable > 0
        petl.unwrap(model)
        with pytest.raises(ConfigError, match="Did you mean 'r'"):
            petl.wrap(T.build("bert", "seq-cls"), "fake-lora", rr=2)
    finally:
        registry.unregister("fake-lora")
        sys.modules.pop("petl_fake_plugin", None)
        monkeypatch.undo()
        registry.reload_entry_points()


def test_broken_plugin_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install_fake_plugin(tmp_path, "petl_broken_plugin", "broken", "Missing", "raise ImportError('no deps')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with caplog.at_level("WARNING", logger="petl.core.registry"):
            registry.reload_entry_points()
        assert "broken" not in petl.available()
        assert "no deps" in caplog.text
    finally:
        sys.modules.pop("petl_broken_plugin", None)
        monkeypatch.undo()
        registry.reload_entry_points()


def test_plugin_clashing_with_builtin_name_raises_until_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_fake_plugin(tmp_path, "petl_clash_plugin", "lora", "PluginStrategy", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(DuplicateStrategyError, match="petl_clash_plugin"):
            registry.reload_entry_points()
        with pytest.raises(DuplicateStrategyError, match="LoraStrategy"):
            petl.available()  # still unresolved: it must not go quiet after the first report
    finally:
        sys.modules.pop("petl_clash_plugin", None)
        monkeypatch.undo()
        registry.reload_entry_points()
    assert registry.get("lora") is LoraStrategy
