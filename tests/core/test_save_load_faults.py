"""Save and load under faults: every failed or killed save leaves the folder as it was (or whole
and new), folders are replaced whole, and no garbage in petl_config.json gets past load.

Each write of a save is made to fail in turn (with an OSError and with a Ctrl-C), for a new
folder and for one holding an earlier save of another strategy; a save is SIGKILLed in a
subprocess; and petl_config.json and the weights are tampered with field by field.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiny_models as T
import torch
from safetensors.torch import load_file, save_file

import petl
import petl.files
from petl.core.io import CONFIG_NAME, WEIGHTS_NAME
from petl.core.wrapping import is_wrapped
from petl.errors import CheckpointError, PetlError

TESTS = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes] | None:
    """``{relative path: bytes}`` of every file under ``folder`` (``None``: no folder)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """Two wrapped models of the same base with different strategies (LoRA writes an extra file)."""
    return {s: _perturbed(petl.wrap(T.build("bert", "seq-cls"), s)) for s in ("lora", "bottleneck")}


# -- every write of a save fails in turn -----------------------------------------------------------------

# (owner, attribute) of every step of a save that touches the disk.
WRITES: list[tuple[Any, str]] = [
    ("petl.core.io.save_file", ""),
    (Path, "write_text"),
    (os, "chmod"),
    (petl.files, "_fsync"),
    (petl.files, "_exchange"),
    (os, "rename"),
    (os, "replace"),
    (os, "link"),
    (shutil, "rmtree"),
]


def _patch(mp: pytest.MonkeyPatch, owner: Any, name: str, fault: Callable[[int], BaseException | None]) -> list[int]:
    """Route ``owner.name`` through ``fault(call)``, which returns an exception to raise or ``None``."""
    target = owner if name else None
    original = getattr(owner, name) if name else _resolve(owner)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        exc = fault(calls[0])
        if exc is not None:
            raise exc
        return original(*args, **kwargs)

    if target is None:
        mp.setattr(owner, wrapper)
    else:
        mp.setattr(target, name, wrapper)
    return calls


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(sys.modules[module], attr)


def _count_writes(model: torch.nn.Module, folder: Path) -> dict[int, int]:
    with pytest.MonkeyPatch.context() as mp:
        counters = {i: _patch(mp, owner, name, lambda call: None) for i, (owner, name) in enumerate(WRITES)}
        petl.save(model, folder)
    return {i: c[0] for i, c in counters.items()}


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
@pytest.mark.parametrize("start", ["new folder", "earlier save of another strategy"])
def test_every_failing_write_leaves_the_folder_as_it_was(models: dict[str, torch.nn.Module], tmp_path: Path,
                                                         start: str, exchange: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(petl.files, "_exchange", lambda a, b: False)
    elif not petl.files._exchange(tmp_path, tmp_path):  # a no-op swap tells whether the system can do it
        pytest.skip("this system or file system has no atomic exchange of paths")
    old, new = models["lora"], models["bottleneck"]

    def prepare(parent: Path) -> Path:
        shutil.rmtree(parent, ignore_errors=True)
        parent.mkdir()
        if start != "new folder":
            petl.save(old, parent / "adapter")
            (parent / "adapter" / "notes.txt").write_text("a file of the user's, carried over")
        return parent / "adapter"

    expected_new = tree(petl.save(new, prepare(tmp_path / "reference")))
    counts = _count_writes(new, prepare(tmp_path / "count"))
    tried = 0
    for index, (owner, name) in enumerate(WRITES):
        for call in range(1, counts[index] + 1):
            for exc in (OSError(28, "injected: no space left on device"), KeyboardInterrupt()):
                target = prepare(tmp_path / "work")
                before = tree(target)
                where = f"{name or owner} call {call}/{counts[index]} raising {type(exc).__name__}"
                with pytest.MonkeyPatch.context() as mp:
                    _patch(mp, owner, name, lambda c, call=call, exc=exc: exc if c == call else None)
                    if name == "link" and isinstance(exc, OSError):  # a file system without hard links
                        petl.save(new, target)
                        assert tree(target) == expected_new, where  # the user's file was copied instead
                        continue
                    with pytest.raises((PetlError, KeyboardInterrupt)) as info:
                        petl.save(new, target)
                assert isinstance(info.value, KeyboardInterrupt) is isinstance(exc, KeyboardInterrupt), where
                after = tree(target)
                assert after == before or after == expected_new, where
                if name in ("", "write_text", "chmod", "link"):  # while the new folder is being built
                    assert after == before, where
                assert sorted(p.name for p in target.parent.iterdir()) == (["adapter"] if after else []), where
                tried += 1
    assert tried >= 20


def test_a_later_save_of_another_strategy_replaces_the_folder_whole(models: dict[str, torch.nn.Module],
                                                                    tmp_path: Path) -> None:
    folder = petl.save(models["lora"], tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file()
    petl.save(models["bottleneck"], folder)
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS_NAME, CONFIG_NAME]
    assert json.loads((folder / CONFIG_NAME).read_text())["files"] == [WEIGHTS_NAME, CONFIG_NAME]
    loaded = petl.load(T.build("bert", "seq-cls"), folder)
    batch = T.inputs("bert", "seq-cls")
    assert torch.equal(T.logits(loaded, batch), T.logits(models["bottleneck"], batch))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_files_a_user_added_to_an_adapter_folder_are_kept(models: dict[str, torch.nn.Module], tmp_path: Path) -> None:
    folder = petl.save(models["lora"], tmp_path / "adapter")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "notes").mkdir()
    (folder / "notes" / "run.txt").write_text("lr 1e-3")
    (folder / ".adapter_model.safetensors.abcd1234.tmp").write_bytes(b"half")  # an older petl's leftover
    inode = (folder / "tokenizer.json").stat().st_ino
    petl.save(models["bottleneck"], folder)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        WEIGHTS_NAME, "notes", "notes/run.txt", CONFIG_NAME, "tokenizer.json"]
    assert (folder / "notes" / "run.txt").read_text() == "lr 1e-3"
    assert (folder / "tokenizer.json").stat().st_ino == inode  # hard-linked, not copied
    petl.save(models["lora"], folder)  # and once more: the user's files are still not petl's
    assert (folder / "tokenizer.json").is_file() and (folder / "adapter_config.json").is_file()


def test_a_folder_petl_did_not_write_is_refused(models: dict[str, torch.nn.Module], tmp_path: Path) -> None:
    folder = tmp_path / "my-project"
    folder.mkdir()
    for name in ("train.py", "data.csv", "model.safetensors"):
        (folder / name).write_text(name)
    before = tree(folder)
    with pytest.raises(PetlError, match=r"is not an adapter folder written by petl\.save \(it holds: data\.csv, "
                                        r"model\.safetensors, train\.py\).*Choose an empty or new folder"):
        petl.save(models["lora"], folder)
    assert tree(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-project"]


def test_an_empty_folder_and_a_file_in_the_way(models: dict[str, torch.nn.Module], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    petl.save(models["lora"], tmp_path / "empty")
    assert (tmp_path / "empty" / WEIGHTS_NAME).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PetlError, match="is a file, not a folder"):
        petl.save(models["lora"], tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_a_symlinked_folder_keeps_its_link(models: dict[str, torch.nn.Module], tmp_path: Path) -> None:
    real = petl.save(models["lora"], tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    petl.save(models["bottleneck"], tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and not (real / "adapter_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


@pytest.mark.parametrize("start", ["new folder", "earlier save"])
def test_adapter_tensors_on_the_meta_device_are_refused_before_anything_is_written(tmp_path: Path,
                                                                                 start: str) -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), "bottleneck")
    if start == "earlier save":
        petl.save(model, tmp_path / "adapter")
    before = tree(tmp_path / "adapter")
    layer = next(m for n, m in model.named_modules() if n.endswith("petl_adapter.up"))
    layer.weight = torch.nn.Parameter(torch.empty_like(layer.weight, device="meta"))
    with pytest.raises(PetlError, match="on the meta device, so they hold no values"):
        petl.save(model, tmp_path / "adapter")
    assert tree(tmp_path / "adapter") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if before is None else ["adapter"])


# -- leftovers of killed writers -------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_writer_are_cleaned_up_by_the_next_save(models: dict[str, torch.nn.Module],
                                                                      tmp_path: Path) -> None:
    petl.save(models["lora"], tmp_path / "adapter")
    dead, live = _dead_pid(), os.getppid()
    leftovers = [f".adapter.petl-{dead}-abcd_123.tmp", ".adapter.k2j4l5m6.tmp", ".adapter.old"]
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / WEIGHTS_NAME).write_bytes(b"partial")
    (tmp_path / f".adapter.petl-{dead}-zzzzzzzz.tmp.x").write_text("not ours")  # another name: left alone
    (tmp_path / f".adapter.petl-{live}-abcdefgh.tmp").mkdir()  # a running writer's: left alone
    petl.save(models["bottleneck"], tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["adapter", f".adapter.petl-{dead}-zzzzzzzz.tmp.x", f".adapter.petl-{live}-abcdefgh.tmp"])


def test_a_folder_moved_aside_by_a_killed_replacement_is_put_back(tmp_path: Path) -> None:
    """Without the atomic exchange, a kill between the two renames leaves only ``.NAME.old``."""
    (tmp_path / ".best.old").mkdir()
    (tmp_path / ".best.old" / "kept.txt").write_text("old")

    def crash(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        petl.files.replace_dir(tmp_path / "best", crash)
    assert tree(tmp_path / "best") == {"kept.txt": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


_SAVER = textwrap.dedent("""
    import sys, petl, petl.files, tiny_models as T
    refs, target, mode = sys.argv[1:3], sys.argv[3], sys.argv[4]
    models = [petl.load(T.build("bert", "seq-cls"), ref) for ref in refs]
    if mode == "block":  # block inside the save, once the new folder is complete, until killed
        import time
        finish = petl.files._finish_tree
        def block(folder):
            finish(folder)
            print("blocked", flush=True)
            time.sleep(600)
        petl.files._finish_tree = block
        petl.save(models[1], target)
    i = 0
    while True:
        petl.save(models[i % 2], target)
        i += 1
        print(i, flush=True)
""")


def _killed_saver(tmp_path: Path, refs: list[Path], target: Path, mode: str, until: Callable[[str], bool]) -> None:
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script), *map(str, refs), str(target), mode],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        for line in process.stdout:  # type: ignore[union-attr]
            if until(line.strip()) or time.monotonic() > deadline:
                break
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["block", "loop"])
def test_a_save_killed_with_sigkill_leaves_the_old_or_the_new_adapter(models: dict[str, torch.nn.Module],
                                                                      tmp_path: Path, mode: str) -> None:
    refs = [petl.save(models[s], tmp_path / "refs" / s) for s in ("lora", "bottleneck")]
    trees = [tree(ref) for ref in refs]
    target = tmp_path / "out" / "adapter"
    petl.save(models["lora"], target)
    if mode == "block":
        _killed_saver(tmp_path, refs, target, mode, lambda line: line == "blocked")
        assert tree(target) == trees[0]  # killed before the swap: the old adapter, untouched
        assert len(list(target.parent.iterdir())) == 2  # and the complete new folder beside it
    else:
        _killed_saver(tmp_path, refs, target, mode, lambda line: line.isdigit() and int(line) >= 5)
        assert tree(target) in trees
    strategy = json.loads((target / CONFIG_NAME).read_text())["strategy"]
    loaded = petl.load(T.build("bert", "seq-cls"), target)
    batch = T.inputs("bert", "seq-cls")
    assert torch.equal(T.logits(loaded, batch), T.logits(models[strategy], batch))
    petl.save(models["bottleneck"], target)  # the next save cleans up what the killed one left
    assert [p.name for p in target.parent.iterdir()] == ["adapter"]
    assert tree(target) == trees[1]


# -- petl_config.json and the weights, tampered with ------------------------------------------------------


@pytest.fixture(scope="module")
def folder(models: dict[str, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return petl.save(models["lora"], tmp_path_factory.mktemp("saved") / "adapter")


def _tampered(folder: Path, tmp_path: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path / "tampered", dirs_exist_ok=True))
    description = json.loads((copy / CONFIG_NAME).read_text())
    change(description)
    (copy / CONFIG_NAME).write_text(json.dumps(description))
    return copy


def _load_fails(path: Path, error: type[Exception], match: str = "", arch: str = "bert",
                head: str = "seq-cls") -> PetlError:
    model = T.build(arch, head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with pytest.raises(error, match=match) as info:
        petl.load(model, path)
    assert not is_wrapped(model) and [type(m) for m in model.modules()] == classes
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return info.value


@pytest.mark.parametrize(("version", "match"), [
    (2, "format_version 2; this petl reads format 1 and older. Upgrade petl"),
    (None, "format_version is None, not a positive integer"),
    ("1", "format_version is '1'"),
    (True, "format_version is True"),
    (0, "format_version is 0"),
])
def test_an_unknown_format_version_is_refused(folder: Path, tmp_path: Path, version: Any, match: str) -> None:
    _load_fails(_tampered(folder, tmp_path, lambda d: d.update(format_version=version)), CheckpointError, match)


def test_an_old_folder_without_format_version_files_or_task_still_loads(folder: Path, tmp_path: Path,
                                                                        models: dict[str, torch.nn.Module]) -> None:
    def age(description: dict[str, Any]) -> None:
        del description["format_version"], description["files"], description["model"]["task"]

    loaded = petl.load(T.build("bert", "seq-cls"), _tampered(folder, tmp_path, age))
    batch = T.inputs("bert", "seq-cls")
    assert torch.equal(T.logits(loaded, batch), T.logits(models["lora"], batch))


@pytest.mark.parametrize(("field", "value", "match"), [
    ("config", None, "'config' is None, not an object of options"),
    ("config", [1, 2], "'config' is \\[1, 2\\]"),
    ("strategy", 3, "'strategy' is 3, not a strategy name"),
    ("strategy", None, "'strategy' is None"),
    ("strategy", "lroa", "a strategy this petl does not know: Unknown strategy 'lroa'. Did you mean 'lora'"),
    ("model", "x", "'model' is 'x', not an object describing the model"),
    ("model", None, "'model' is None"),
    ("files", "adapter", "'files' is 'adapter', not a list"),
])
def test_garbage_fields_are_refused(folder: Path, tmp_path: Path, field: str, value: Any, match: str) -> None:
    _load_fails(_tampered(folder, tmp_path, lambda d: d.update({field: value})), CheckpointError, match)


@pytest.mark.parametrize("field", ["strategy", "config", "model"])
def test_a_missing_field_is_refused(folder: Path, tmp_path: Path, field: str) -> None:
    _load_fails(_tampered(folder, tmp_path, lambda d: d.pop(field)), CheckpointError, f"the '{field}' field is missing")


@pytest.mark.parametrize(("key", "value"), [("hidden_size", "32"), ("num_hidden_layers", True), ("class", 3),
                                            ("model_type", ["bert"]), ("task", 1)])
def test_a_garbage_model_signature_is_refused(folder: Path, tmp_path: Path, key: str, value: Any) -> None:
    _load_fails(_tampered(folder, tmp_path, lambda d: d["model"].update({key: value})), CheckpointError,
                f"model.{key} is")


@pytest.mark.parametrize(("key", "value"), [("r", "eight"), ("r", None), ("r", 2.5), ("alpha", [1]),
                                            ("dropout", {"p": 0.1}), ("target_modules", 3), ("bias", None),
                                            ("use_rslora", "yes"), ("modules_to_save", 7), ("rank", 3)])
def test_option_values_of_the_wrong_type_are_refused(folder: Path, tmp_path: Path, key: str, value: Any) -> None:
    error = _load_fails(_tampered(folder, tmp_path, lambda d: d["config"].update({key: value})), CheckpointError,
                        "are not valid for the 'lora' strategy")
    assert key in str(error)


GARBAGE = [None, 3, -1, 2.5, True, "x", "", [], [None], {}, {"a": None}]


def test_no_garbage_anywhere_in_the_description_escapes_as_another_error(folder: Path, tmp_path: Path) -> None:
    """Every field and option replaced by every kind of garbage: a PetlError or a load, never a crash."""
    description = json.loads((folder / CONFIG_NAME).read_text())
    paths = [(k,) for k in description] + [("config", k) for k in description["config"]] + [
        ("model", k) for k in description["model"]]
    outcomes: dict[str, int] = {}
    model = T.build("bert", "seq-cls")
    for path in paths:
        for value in GARBAGE:
            def change(d: dict[str, Any], path: tuple[str, ...] = path, value: Any = value) -> None:
                (d if len(path) == 1 else d[path[0]])[path[-1]] = value

            try:
                petl.load(model, _tampered(folder, tmp_path, change))
                outcomes["loaded"] = outcomes.get("loaded", 0) + 1
                model = T.build("bert", "seq-cls")
            except PetlError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
                assert not is_wrapped(model), (path, value)
    assert outcomes["CheckpointError"] > 100, outcomes


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_adapter_tensors_of_another_kind_of_dtype_are_refused(folder: Path, tmp_path: Path, dtype: torch.dtype) -> None:
    copy = Path(shutil.copytree(folder, tmp_path / "adapter"))
    tensors = load_file(copy / WEIGHTS_NAME)
    key = sorted(tensors)[0]
    tensors[key] = torch.ones_like(tensors[key], dtype=dtype)
    save_file(tensors, copy / WEIGHTS_NAME)
    _load_fails(copy, CheckpointError, "dtype mismatches")


def test_an_adapter_of_another_task_head_is_refused(folder: Path) -> None:
    _load_fails(folder, CheckpointError, r"trained on a BertForSequenceClassification "
                r"\(task='sequence-classification'\); this model is a BertForTokenClassification "
                r"\(task='token-classification'\)", head="token-cls")


def test_the_signature_records_the_task(folder: Path) -> None:
    signature = json.loads((folder / CONFIG_NAME).read_text())["model"]
    assert signature["task"] == "sequence-classification"
    assert signature["class"] == "BertForSequenceClassification"
