"""The shape of the package: what ``import petl`` costs, and which subsystem may import which.

The layers (``cli -> bench -> training -> core <- strategies``, with ``modeling``,
``data``, ``metrics``, ``tasks``, ``errors``, ``files`` and ``threads`` below) are read from the
source with ``ast``, so an import that points the wrong way fails here, wherever in
a module it sits.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import petl

PACKAGE = Path(petl.__file__).parent
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "safetensors")
BELOW = {"errors", "tasks", "files", "threads"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "tasks": {"errors"},
    "files": set(),
    "threads": {"errors"},
    "modeling": BELOW,
    "data": BELOW,
    "metrics": BELOW,
    "core": BELOW | {"modeling"},
    "strategies": BELOW | {"core", "modeling", "strategies"},
    "training": BELOW | {"core", "modeling", "data", "metrics", "training"},
    "integrations": BELOW | {"core", "modeling", "data", "metrics", "training", "integrations"},
    "bench": BELOW | {"core", "modeling", "data", "metrics", "training", "bench"},
    "cli": BELOW | {"core", "modeling", "data", "metrics", "training", "bench", "cli"},
    "__main__": {"cli"},
}
"""Subsystem -> the subsystems its modules may import (each may import itself: its own modules)."""
MAX_LINES = 420


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def _subsystem(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _petl_imports(path: Path) -> set[str]:
    """The petl subsystems a module imports (``from petl.core.x import y`` -> ``core``), anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "petl":
                found.add(parts[1] if len(parts) > 1 else "petl")
    return found


def _fresh_interpreter(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_belongs_to_a_known_subsystem() -> None:
    unknown = sorted({_subsystem(p) for p in _modules()} - set(ALLOWED))
    assert unknown == [], f"add {unknown} to the layer table in this test (and to STYLE's picture)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    subsystem = _subsystem(path)
    wrong = sorted(_petl_imports(path) - ALLOWED[subsystem] - {subsystem})
    assert wrong == [], f"petl/{path.relative_to(PACKAGE)} ({subsystem}) imports {wrong}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"petl/{path.relative_to(PACKAGE)} has {lines} lines; split it by concept"


def test_import_petl_loads_no_heavy_package() -> None:
    loaded = _fresh_interpreter(
        "import json, sys; import petl; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert loaded == []


def test_the_command_line_parser_loads_no_heavy_package() -> None:
    loaded = _fresh_interpreter(
        "import json, sys; from petl.cli import build_parser; build_parser().format_help(); "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert loaded == []


def test_petl_help_exits_zero_and_lists_every_subcommand() -> None:
    done = subprocess.run([sys.executable, "-m", "petl.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("train", "bench", "estimate"):
        assert command in done.stdout


def test_every_public_name_resolves_to_its_home() -> None:
    code = (
        "import json, petl; "
        "print(json.dumps({n: getattr(petl, n).__module__ for n in petl.__all__ "
        "if hasattr(getattr(petl, n), '__module__')}))"
    )
    homes = _fresh_interpreter(code)
    assert set(homes) <= set(petl.__all__)
    assert set(petl.__all__) == set(petl._HOMES)
    for name, module in homes.items():
        assert module == petl._HOMES[name] or module.startswith(petl._HOMES[name] + "."), (name, module)
    assert petl.train.__name__ == "train" and callable(petl.train)  # the function, not a module


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'wrapp'"):
        petl.wrapp  # noqa: B018


def test_library_code_never_imports_the_cli() -> None:
    library = [p for p in _modules() if _subsystem(p) not in ("cli", "__main__")]
    offenders = [str(p.relative_to(PACKAGE)) for p in library if "cli" in _petl_imports(p)]
    assert offenders == []


@pytest.mark.parametrize("package", ["petl", "petl.bench"])
def test_lazy_exports_resolve(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        home = module._HOMES[name]
        assert getattr(value, "__module__", home).startswith(home), (package, name, value)
