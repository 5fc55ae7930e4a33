"""``save_pretrained`` on a wrapped model writes petl's adapter folder, not the whole model.

Hosts such as ``transformers.Trainer`` and TRL save a model by calling its
``save_pretrained`` (``Trainer.save_model``, every checkpoint, ``push_to_hub``). On a
wrapped model the inherited method would write the *whole* model, with peft's
internal key names (``q_proj.base_layer.weight``, ``lora_A.default.weight``), and
``from_pretrained`` on that folder re-initialises the adapted layers at random without
an error. ``petl.wrap`` therefore gives the model an instance attribute
``save_pretrained`` (an :class:`AdapterSaver`) that writes what ``petl.save`` writes:
``adapter_model.safetensors``, ``petl_config.json`` and the strategy's extra files
(peft's ``adapter_config.json`` for LoRA), loadable with ``petl.load`` and, for the
LoRA family, with peft. ``petl.unwrap`` and ``petl.merge`` remove the attribute, so
the plain model's own method comes back.

The folder belongs to the host (a Trainer's ``output_dir`` holds its checkpoints, its
tokenizer and ``training_args.bin``), so unlike ``petl.save`` this does not replace the
folder whole: the adapter is saved complete beside it, then each file is moved in with
an atomic rename, ``petl_config.json`` last, and the files an earlier save of ours wrote
that this one does not are removed. Other files in the folder are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from petl.errors import PetlError

__all__ = ["ATTRIBUTE", "AdapterSaver", "install", "uninstall"]

ATTRIBUTE = "save_pretrained"


class AdapterSaver:
    """The ``save_pretrained`` of a wrapped model (see the module docstring).

    Args:
        model: The wrapped model it saves.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(
        self,
        save_directory: str | os.PathLike[str],
        is_main_process: bool = True,
        state_dict: dict[str, Any] | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write the adapter folder into ``save_directory`` (created if needed).

        Args:
            save_directory: The folder; other files in it are kept.
            is_main_process: ``False`` on the processes of a distributed run that must
                not write (as for ``PreTrainedModel.save_pretrained``).
            state_dict: Ignored: petl writes the adapter's own tensors, which are the
                model's trainable ones; a host passes the whole model's here.
            push_to_hub: Not supported; the error says how to upload the folder.
            **kwargs: The rest of ``PreTrainedModel.save_pretrained``'s options
                (``safe_serialization``, ``max_shard_size``, ...), which do not apply to an
                adapter folder: it is always one safetensors file.

        Raises:
            PetlError: ``push_to_hub`` was asked for, or the folder cannot be written.
        """
        del state_dict, kwargs
        if push_to_hub:
            raise PetlError(
                "save_pretrained(push_to_hub=True) is not supported on a petl-wrapped model. Save the adapter "
                "with model.save_pretrained(folder) and upload the folder with huggingface_hub.upload_folder."
            )
        if not is_main_process:
            return
        from petl.core.io import CONFIG_NAME, save  # io imports wrapping, which installs this class

        folder = Path(save_directory)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".petl-save-", dir=folder))
        except OSError as exc:
            raise PetlError(f"Cannot write the adapter to {folder}: {exc}. Choose a writable folder.") from exc
        try:
            built = staging / "adapter"
            save(self.model, built)
            written = json.loads((built / CONFIG_NAME).read_text(encoding="utf-8"))["files"]
            stale = _files_of_earlier_save(folder / CONFIG_NAME) - set(written)
            for name in sorted(written, key=lambda name: name == CONFIG_NAME):  # the description last
                os.replace(built / name, folder / name)
            for name in stale:
                _remove(folder / name)
        except OSError as exc:
            raise PetlError(f"Cannot write the adapter to {folder}: {exc}. Choose a writable folder.") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _files_of_earlier_save(config_path: Path) -> set[str]:
    try:
        files = json.loads(config_path.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(files, list):
        return set()
    return {name for name in files if isinstance(name, str) and Path(name).name == name and name not in ("", ".", "..")}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def install(model: nn.Module) -> None:
    """Give a wrapped model petl's ``save_pretrained`` (only a model that has one)."""
    if callable(getattr(model, ATTRIBUTE, None)):
        object.__setattr__(model, ATTRIBUTE, AdapterSaver(model))


def uninstall(model: nn.Module) -> None:
    """Take petl's ``save_pretrained`` off again, leaving any the user set themselves."""
    if isinstance(vars(model).get(ATTRIBUTE), AdapterSaver):
        object.__delattr__(model, ATTRIBUTE)
