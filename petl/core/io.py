"""Saving and loading adapters: safetensors weights plus a JSON description.

A saved folder holds:

* ``adapter_model.safetensors``: the adapter's tensors (and any head trained in full);
* ``petl_config.json``: the strategy name, its options and the signature of the
  model it was trained on, so ``petl.load`` rebuilds the strategy by itself;
* whatever extra files the strategy asks for (LoRA writes peft's
  ``adapter_config.json`` so that ``peft.PeftModel.from_pretrained`` loads the folder).

``petl.save`` builds the whole folder beside the target and swaps it in
(:func:`petl.files.replace_dir`), so a reader finds the old adapter or the new one,
never a mix, and files of an earlier save (another strategy's ``adapter_config.json``)
do not survive. It refuses a folder that is not empty and was not written by
``petl.save``, rather than delete what is in it; files someone added to an adapter
folder (a tokenizer, a README) are carried over. ``petl_config.json`` lists the files
petl wrote, which is how the next save tells them apart.

``petl.load`` checks every field of ``petl_config.json`` and every tensor before it
touches the model, and is a transaction: on any failure the model is left exactly as
it was. Weights are read with safetensors only; nothing is ever unpickled. It also reads
folders of peft's ``save_pretrained`` (:mod:`petl.core.peft_folders`). :func:`load_weights`
copies a folder's tensors into a model already wrapped alike, all or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from petl.core import peft_folders, registry
from petl.core.adapters import adapters, load_adapter, part, set_active
from petl.core.config import StrategyConfig
from petl.core.distributed import gather_full, is_sharded, run_on_main_process
from petl.core.validators import check_state_dict
from petl.core.wrapping import Snapshot, _describe, _interrupts_deferred, model_signature, state_of, wrap
from petl.errors import CheckpointError, PetlError, TargetNotFoundError
from petl.files import replace_dir

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load", "load_weights", "save"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "petl_config.json"
FORMAT_VERSION = 1
LEGACY_FILES = (WEIGHTS_NAME, CONFIG_NAME, "adapter_config.json")
"""What a save from before ``petl_config.json`` listed its files may have written."""
_SIGNATURE_TYPES: dict[str, type] = {
    "class": str, "model_type": str, "hidden_size": int, "num_hidden_layers": int, "task": str,
}


def adapter_tensors(model: nn.Module, adapter: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor ``petl.save`` writes: the adapter's (``adapter``: the one of that name) and its trained heads'."""
    strategy, heads = part(model, adapter)
    return {**strategy.adapter_state_dict(model), **heads}


def save(model: nn.Module, path: str | os.PathLike[str], *, adapter: str | None = None) -> Path:
    """Save the adapter of a wrapped model (not the base weights) to a folder.

    The folder is built complete beside ``path`` and then put in its place, so an
    interrupted save (an error, Ctrl-C, ``kill -9``) leaves the previous folder as it
    was, and a reader never sees a mix of two saves.

    On a model sharded with FSDP2's ``fully_shard`` (DTensor parameters), every rank
    must call ``petl.save`` with the same path: the shards are gathered into whole
    tensors (a collective), rank 0 writes the folder, and the other ranks return once it
    is written (see :mod:`petl.core.distributed`). The folder is the same as one saved
    from the unsharded model. Without sharded tensors nothing is communicated: under
    ``torch.distributed`` rank 0 writes and the other ranks return at once.

    Args:
        model: A model wrapped with ``petl.wrap``.
        path: The folder: new, empty, or written by an earlier ``petl.save``, whose
            files it replaces (files that save did not write are kept).
        adapter: The name of the adapter to save (see :mod:`petl.core.adapters`); ``None``: the only one.

    Returns:
        The folder's path.

    Raises:
        NotWrappedError: The model is not wrapped.
        PetlError: The adapter's tensors hold no values (meta device), or the folder
            holds files that ``petl.save`` did not write, or cannot be created or written;
            on the other ranks of a sharded save, when rank 0 failed to write.
    """
    state, strategy = state_of(model), part(model, adapter)[0]
    folder = Path(path)
    tensors, sharded = _tensors_to_write(model, adapter)  # every rank, before anything that may raise on one rank only
    extra = dict(strategy.extra_files(model))
    bad = [name for name in extra if name in (WEIGHTS_NAME, CONFIG_NAME) or Path(name).name != name]
    if bad:
        raise PetlError(
            f"The {strategy.config.strategy!r} strategy asks petl.save to write the extra files {bad}; "
            f"extra files must be plain file names other than {WEIGHTS_NAME} and {CONFIG_NAME}. "
            "Fix the strategy's extra_files()."
        )
    description = {
        "format_version": FORMAT_VERSION,
        "strategy": strategy.config.strategy,
        "config": strategy.config.to_dict(),
        "model": state.signature,
        "files": sorted([WEIGHTS_NAME, CONFIG_NAME, *extra]),
    }

    def write() -> None:
        kept = _files_to_keep(folder, set(description["files"]))

        def fill(tmp: Path) -> None:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            for name, text in extra.items():
                (tmp / name).write_text(text, encoding="utf-8")
            for entry in kept:
                _carry(entry, tmp / entry.name)
            (tmp / CONFIG_NAME).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")

        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PetlError(f"Cannot create the adapter folder {folder}: {exc}. Choose a writable path.") from exc
        try:
            replace_dir(folder, fill)
        except OSError as exc:
            raise PetlError(f"Cannot write the adapter to {folder}: {exc}. Choose a writable path.") from exc

    # Only rank 0 writes. After a gather every rank is here, so the others wait for rank 0's outcome
    # (success or its error), never on a barrier that a failing rank 0 would not reach.
    run_on_main_process(write, collective=sharded, what=f"write the adapter to {folder}")
    return folder


def _tensors_to_write(model: nn.Module, adapter: str | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """The adapter's tensors as whole CPU copies, and whether gathering them took a collective (FSDP).

    The meta check reads the local tensors (a DTensor's shard is on the meta device when
    its whole is), so it raises on every rank alike before any rank enters a gather.
    """
    tensors = adapter_tensors(model, adapter)
    meta = sorted(key for key, tensor in tensors.items() if tensor.is_meta)
    if meta:
        raise PetlError(
            f"{len(meta)} adapter tensor(s) of this {type(model).__name__} are on the meta device, so they hold no "
            f"values to save ({', '.join(meta[:3])}{', ...' if len(meta) > 3 else ''}). Load the model's weights "
            "onto a real device (without device_map offloading to 'meta') before wrapping and saving it."
        )
    sharded = any(is_sharded(tensor) for tensor in tensors.values())
    tensors = gather_full(tensors)  # under FSDP a collective: every rank is here, in the same order
    return {key: t.detach().to("cpu").contiguous().clone() for key, t in tensors.items()}, sharded


def _files_to_keep(folder: Path, ours: set[str]) -> list[Path]:
    """What an existing ``folder`` holds that a new save must carry over; refuse a folder petl did not write."""
    if not os.path.lexists(folder):
        return []
    if not folder.is_dir():
        raise PetlError(f"{folder} is a file, not a folder. Pass a folder path to petl.save.")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise PetlError(f"Cannot read the adapter folder {folder}: {exc}. Choose a readable path.") from exc
    if not entries:
        return []
    if not (folder / CONFIG_NAME).is_file():
        names = ", ".join(entry.name for entry in entries[:10]) + (", ..." if len(entries) > 10 else "")
        raise PetlError(
            f"{folder} is not an adapter folder written by petl.save (it holds: {names}); petl.save replaces the "
            "whole folder, so it will not delete these. Choose an empty or new folder."
        )
    written = ours | _files_written_before(folder)
    return [entry for entry in entries if entry.name not in written and not _is_temporary(entry.name, written)]


def _files_written_before(folder: Path) -> set[str]:
    try:
        files = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    if isinstance(files, list) and all(isinstance(name, str) for name in files):
        return set(files)
    return set(LEGACY_FILES)


def _is_temporary(name: str, written: set[str]) -> bool:
    # Saves before whole-folder replacement wrote each file to ``.NAME.XXXXXXXX.tmp`` inside the folder.
    return name.endswith(".tmp") and any(name.startswith(f".{ours}.") for ours in written)


def _carry(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as hard links where possible (no data copied), else as a copy."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _corrupted(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} is corrupted: {problem}. Save the adapter again with petl.save.")


def _read_description(folder: Path) -> dict[str, Any]:
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        aside = folder.with_name(f".{folder.name}.old")
        hint = (f" An interrupted save left the previous adapter in {aside}; the next petl.save to {folder} puts "
                "it back first, or rename it yourself." if aside.is_dir() else "")
        raise CheckpointError(f"No adapter folder at {folder}. Pass the folder that petl.save wrote.{hint}")
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} has neither {CONFIG_NAME} (written by petl.save) nor {peft_folders.PEFT_CONFIG_NAME} "
            f"(written by peft's save_pretrained), so it holds no adapter petl can load "
            f"(files found: {sorted(p.name for p in folder.iterdir()) or 'none'}). Pass an adapter folder."
        )
    try:
        description = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _corrupted(config_path, f"it is not valid JSON ({exc})") from exc
    if not isinstance(description, dict):
        raise _corrupted(config_path, f"it holds a {type(description).__name__}, not an object")
    version = description.get("format_version", FORMAT_VERSION)  # the first saves may not have had it
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _corrupted(config_path, f"format_version is {version!r}, not a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {version}; this petl reads format {FORMAT_VERSION} and older. "
            "Upgrade petl to load this adapter."
        )
    for key, kind, what in (("strategy", str, "a strategy name"), ("config", dict, "an object of options"),
                            ("model", dict, "an object describing the model")):
        if key not in description:
            raise _corrupted(config_path, f"the {key!r} field is missing")
        if not isinstance(description[key], kind):
            raise _corrupted(config_path, f"{key!r} is {description[key]!r}, not {what}")
    for key, value in description["model"].items():
        kind = _SIGNATURE_TYPES.get(key)
        if value is not None and kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise _corrupted(config_path, f"model.{key} is {value!r}, not a {kind.__name__}")
    files = description.get("files", [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise _corrupted(config_path, f"'files' is {files!r}, not a list of file names")
    return description


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}. Save the adapter again with petl.save.")
    try:
        return load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path} is truncated or corrupted ({exc}). Save the adapter again with petl.save."
        ) from exc


def _check_signature(model: nn.Module, saved: dict[str, Any], folder: Path) -> None:
    current = model_signature(model)
    # A key the saved signature lacks (``task``, before it was recorded) is not compared.
    for key in ("model_type", "task", "hidden_size", "num_hidden_layers"):
        if saved.get(key) is not None and current.get(key) is not None and saved[key] != current[key]:
            raise CheckpointError(
                f"The adapter in {folder} was trained on a {saved.get('class') or 'different model'} "
                f"({key}={saved[key]!r}); this model is a {current['class']} ({key}={current[key]!r}). "
                "Load it onto the same base model, with the same task head, it was trained on."
            )


def _read_folder(model: nn.Module, folder: Path) -> tuple[StrategyConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a folder of petl.save or of peft, checked against ``model`` (not changed)."""
    if folder.is_dir() and not (folder / CONFIG_NAME).is_file() and (folder / peft_folders.PEFT_CONFIG_NAME).is_file():
        adapter_config = peft_folders.read_adapter_config(folder)
        weights = _read_weights(folder)
        _check_signature(model, peft_folders.signature(adapter_config), folder)
        return peft_folders.convert(adapter_config, weights, model, folder)
    description = _read_description(folder)
    weights = _read_weights(folder)
    _check_signature(model, description["model"], folder)
    return _strategy_config(description, folder), weights


def _strategy_config(description: dict[str, Any], folder: Path) -> Any:
    """The strategy config the folder describes, checked in full before the model is touched."""
    name = description["strategy"]
    try:
        cls = registry.get(name)
    except PetlError as exc:
        raise CheckpointError(
            f"The adapter in {folder} was saved with a strategy this petl does not know: {exc} "
            "If a plugin provides it, install and import the plugin before petl.load."
        ) from exc
    try:
        return cls.config_class.from_dict(description["config"])
    except PetlError as exc:
        raise CheckpointError(
            f"The options in {folder / CONFIG_NAME} are not valid for the {name!r} strategy: {exc} "
            "Save the adapter again with petl.save."
        ) from exc


def load(model: nn.Module, path: str | os.PathLike[str], *, adapter: str | None = None,
         trainable: bool | None = None) -> nn.Module:
    """Wrap ``model`` with the adapter saved at ``path`` and return it.

    The strategy and its options come from the folder, so they need not be repeated:
    from ``petl_config.json``, or, in a folder written by peft's ``save_pretrained``, from
    peft's ``adapter_config.json`` (see :mod:`petl.core.peft_folders`). Every field and
    tensor is checked, and on any error (including Ctrl-C) the model is left exactly as it
    was (see :class:`petl.core.wrapping.Snapshot`). With ``adapter``, it is added under that
    name beside the model's adapters (:func:`petl.core.adapters.load_adapter`), frozen unless
    ``trainable`` (``None``: trainable without ``adapter``, frozen with it).

    Raises:
        CheckpointError: The folder or a file in it is missing, truncated,
            corrupted, or belongs to another model, another task head or a newer petl;
            a peft folder uses options petl cannot reproduce; or the strategy failed to
            take the saved tensors.
        AlreadyWrappedError: The model already carries a petl strategy.
    """
    if adapter is not None:
        return load_adapter(model, path, adapter, trainable=bool(trainable))
    folder = Path(path)
    config, weights = _read_folder(model, folder)
    snapshot = Snapshot(model)
    try:
        wrap(model, config)
    except TargetNotFoundError as exc:  # the folder's target or head modules are not in this model
        raise CheckpointError(
            f"The adapter in {folder} does not fit this {type(model).__name__}: {exc} "
            "Load it onto the base model it was trained on. The model was left as it was."
        ) from exc
    try:
        _copy_weights(model, weights, folder)
    except BaseException as exc:
        snapshot.restore()
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):
            raise
        raise CheckpointError(
            f"The adapter in {folder} could not be loaded into this {type(model).__name__}: {_describe(exc)}. "
            "The model was left as it was."
        ) from exc
    if trainable is False:  # for inference: frozen
        set_active(model, [info.name for info in adapters(model)], trainable=False)
    return model


def _copy_weights(model: nn.Module, weights: dict[str, torch.Tensor], folder: Path) -> None:
    expected = adapter_tensors(model)
    check_state_dict(expected, weights, source=f"The adapter in {folder}",
                     fix="Load it onto the same base model it was trained on.")
    state = state_of(model)
    head_keys = set(state.heads.state_dict(model)) if state.heads is not None else set()
    with torch.no_grad():
        for key in head_keys:
            expected[key].copy_(weights[key])
    state.strategy.load_adapter_state_dict(model, {k: v for k, v in weights.items() if k not in head_keys})


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Copy the adapter (and head) tensors saved at ``path`` into the wrapped ``model``, in place.

    ``model`` must be wrapped with the strategy and options the folder (of ``petl.save`` or
    of peft) was saved with, as when a run resumes. Everything is checked first, and the
    copy is all or nothing: if it fails part way (an error, Ctrl-C), every adapter and
    head tensor gets its previous value back. Returns the same model.

    Raises:
        NotWrappedError: The model is not wrapped.
        CheckpointError: The folder is missing, corrupted or for another model, or it
            was saved with another strategy or other options (the message names them).
    """
    state = state_of(model)
    folder = Path(path)
    config, weights = _read_folder(model, folder)
    _check_same_adapter(state.strategy.config, config, folder)
    before = {key: tensor.detach().to("cpu", copy=True) for key, tensor in adapter_tensors(model).items()}
    try:
        _copy_weights(model, weights, folder)
    except BaseException as exc:
        with _interrupts_deferred():
            current = adapter_tensors(model)  # afresh: a failed load may have replaced tensors
            with torch.no_grad():
                for key, value in before.items():
                    current[key].copy_(value)
        if isinstance(exc, PetlError) or not isinstance(exc, Exception):
            raise
        raise CheckpointError(
            f"The adapter in {folder} could not be copied into this {type(model).__name__}: {_describe(exc)}. "
            "Its adapter tensors were left as they were."
        ) from exc
    return model


def _check_same_adapter(current: StrategyConfig, saved: StrategyConfig, folder: Path) -> None:
    ours = {"strategy": current.strategy, **current.to_dict()}
    theirs = {"strategy": saved.strategy, **saved.to_dict()}
    differ = [f"{key}: folder {theirs.get(key)!r}, model {ours.get(key)!r}"
              for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
    if differ:
        raise CheckpointError(
            f"The adapter in {folder} was saved with another strategy or other options than this model is wrapped "
            f"with ({'; '.join(differ)}). Wrap the model like the folder, or petl.load it onto the unwrapped base."
        )
