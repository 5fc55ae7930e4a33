"""Shared fixtures: the repository paths, a guard for tests that need real data, and a tiny model folder."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # Tiny models gain nothing from intra-op threads; with pytest-xdist's one worker per
    # core, extra threads only fight each other (seen: 30-80x slower steps under load).
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    skip_data = pytest.mark.skip(reason=f"needs the shared evaluation data at {SHARED_DATA}, which is absent")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "real_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


@pytest.fixture
def shared_data() -> Path:
    """The folder of the real evaluation data sets (SST-2, CoNLL-2003)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with hidden size 32 and MiniLM's tokenizer, saved as a model folder."""
    import torch
    import transformers as tf

    from petl.modeling.demo import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    config = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
    torch.manual_seed(0)
    tf.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's own Ctrl-C state for a test that sends SIGINT: ``default_int_handler`` installed and
    SIGINT not blocked in the main thread, whatever an earlier test or library in this worker left
    (multiprocessing's resource tracker, for one, blocks SIGINT while it starts). Put back after."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGINT, handler)
