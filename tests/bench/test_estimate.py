"""``petl estimate``: counts on the meta device equal those of the real wrapped model,
published shapes give published counts, and the memory arithmetic is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_models as tm
import torch

import petl
from petl.bench.estimate import estimate, memory_estimate, resolve_model_config
from petl.errors import ConfigError, PetlError

TASK_OF_HEAD = {
    "seq-cls": "sequence-classification",
    "token-cls": "token-classification",
    "causal-lm": "causal-lm",
    "seq2seq-lm": "seq2seq",
    "qa": "question-answering",
}


def _config_dir(tmp_path: Path, arch: str) -> Path:
    folder = tmp_path / arch
    folder.mkdir()
    tm.config(arch).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("arch", "head"), tm.CASES)
def test_meta_counts_equal_real_wrapped_counts(tmp_path: Path, arch: str, head: str) -> None:
    rows = [("full", "full", {})] + [(n, n, tm.strategy_options(n)) for n in petl.available()]
    report = estimate(str(_config_dir(tmp_path, arch)), rows, task=TASK_OF_HEAD[head], num_labels=tm.NUM_LABELS,
                      precisions=("fp32",))
    for row in report.rows:
        model = tm.build(arch, head)
        if row.strategy != "full":
            try:
                petl.wrap(model, row.strategy, **tm.strategy_options(row.strategy))
            except petl.PetlError:  # the strategy cannot take this model: the estimate must say so too
                assert row.error is not None, (arch, head, row.strategy)
                continue
        real = petl.count_parameters(model)
        assert row.error is None, row.error
        assert (row.trainable, row.total) == (real.trainable, real.total), (arch, head, row.strategy, row.method)


def test_a_strategy_that_needs_real_tensors_is_counted_on_a_small_real_copy(tmp_path: Path) -> None:
    # Prefix-tuning runs GPT-2 once to find its attention layers; GPT-2's forward reads a
    # token id back (.item()), which the meta device cannot do.
    folder = _config_dir(tmp_path, "gpt2")
    report = estimate(str(folder), [("prefix", "prefix", {"num_virtual_tokens": 5})], task="causal-lm",
                      precisions=("fp32",))
    row = report.rows[0]
    model = tm.build("gpt2", "causal-lm")
    petl.wrap(model, "prefix", num_virtual_tokens=5)
    assert row.method == "materialised"
    count = petl.count_parameters(model)
    assert (row.trainable, row.total) == (count.trainable, count.total)
    too_big = estimate(str(folder), [("prefix", "prefix", {})], task="causal-lm", materialize_limit=10)
    assert too_big.rows[0].trainable is None
    assert "cannot be counted on the meta device" in too_big.rows[0].error
    assert "more than the 10 petl builds for real" in too_big.rows[0].error


def test_llama_presets_have_the_published_sizes() -> None:
    seven = estimate("llama-7b", [("full", "full", {}), ("lora", "lora", {"r": 8})], precisions=("bf16",))
    full, lora = seven.rows
    assert seven.task == "causal-lm"
    assert full.total == full.trainable == 6_738_415_616  # LLaMA-7B
    # LoRA r=8 on q_proj and v_proj: 32 layers x 2 matrices x 8 x (4096 + 4096)
    assert lora.trainable == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    assert lora.total == full.total + lora.trainable
    seventy = estimate("llama-70b", [("full", "full", {}), ("lora", "lora", {"r": 8})], precisions=("bf16",))
    assert seventy.rows[0].total == 68_976_648_192  # Llama-2-70B
    # v_proj has 8 key/value heads of 128: 8 x (8192 + 8192) for q, 8 x (8192 + 1024) for v, 80 layers
    assert seventy.rows[1].trainable == 80 * 8 * ((8192 + 8192) + (8192 + 1024))


def test_counting_a_huge_model_allocates_nothing() -> None:
    report = estimate("llama-70b", [("lora", "lora", {})], precisions=("fp32",))
    assert report.rows[0].method == "meta"
    assert report.rows[0].total > 6.8e10  # about 275 GB in fp32: only the meta device holds that here


def test_memory_arithmetic_is_exact() -> None:
    with torch.device("meta"):
        model = tm.build("llama", "causal-lm")
    n = sum(p.numel() for p in model.parameters())
    full32 = memory_estimate(model, {}, precision="fp32", optimizer="adamw", full=True)
    assert (full32.weights_bytes, full32.gradient_bytes, full32.optimizer_bytes) == (4 * n, 4 * n, 8 * n)
    assert full32.total_bytes == 16 * n
    full16 = memory_estimate(model, {}, precision="bf16", optimizer="adamw8bit", full=True)
    assert (full16.weights_bytes, full16.gradient_bytes, full16.optimizer_bytes) == (2 * n, 2 * n, 2 * n)
    assert memory_estimate(model, {}, precision="int8", optimizer="adamw", full=True).total_bytes is None

    with torch.device("meta"):
        wrapped = petl.wrap(tm.build("llama", "causal-lm"), "lora", r=2)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in wrapped.parameters() if not p.requires_grad)
    bf16 = memory_estimate(wrapped, {}, precision="bf16", optimizer="adamw", full=False)
    assert bf16.weights_bytes == 2 * frozen + 4 * trainable  # adapters stay fp32
    assert (bf16.gradient_bytes, bf16.optimizer_bytes) == (4 * trainable, 8 * trainable)
    q_proj = wrapped.model.layers[0].self_attn.q_proj.base_layer.weight
    int8 = memory_estimate(wrapped, {id(q_proj): q_proj.shape[0]}, precision="int8", optimizer="adamw8bit",
                           full=False)
    rest = frozen - q_proj.numel()
    assert int8.weights_bytes == q_proj.numel() + 4 * q_proj.shape[0] + 4 * rest + 4 * trainable
    assert int8.optimizer_bytes == 2 * trainable


def test_int8_quantizes_the_body_linears_only(tmp_path: Path) -> None:
    report = estimate(str(_config_dir(tmp_path, "llama")), [("lora", "lora", {})], task="causal-lm",
                      precisions=("fp32", "int8"))
    fp32, int8 = report.rows[0].memory
    with torch.device("meta"):
        model = tm.build("llama", "causal-lm")
    linears = [m for name, m in model.named_modules() if type(m) is torch.nn.Linear and name != "lm_head"]
    saved = sum(3 * m.weight.numel() - 4 * m.weight.shape[0] for m in linears)  # 4 bytes -> 1 byte + row scale
    assert fp32.weights_bytes - int8.weights_bytes == saved


def test_sources_and_errors(tmp_path: Path) -> None:
    config, where = resolve_model_config("minilm")
    assert type(config).__name__ == "BertConfig" and where == "demo model minilm"
    config_file = _config_dir(tmp_path, "bert") / "config.json"
    assert type(resolve_model_config(str(config_file))[0]).__name__ == "BertConfig"
    with pytest.raises(PetlError, match=r"Did you mean 'llama-7b'\?"):
        resolve_model_config("./llama-7c")
    with pytest.raises(ConfigError, match=r"Unknown precision 'fp61'"):
        estimate("llama-7b", precisions=("fp61",))
    with pytest.raises(ConfigError, match=r"'rr' is not an option of the 'lora' strategy"):
        estimate("llama-7b", [("lora", "lora", {"rr": 3})])
    with pytest.raises(petl.errors.UnknownStrategyError, match=r"Did you mean 'lora'\?"):
        estimate("llama-7b", [("lroa", "lroa", {})])


def test_real_minilm_matches_its_estimate() -> None:
    from transformers import AutoModelForSequenceClassification

    from petl.modeling.demo import minilm_path

    report = estimate("minilm", [("lora", "lora", {"r": 8})], num_labels=2, precisions=("fp32",))
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    petl.wrap(model, "lora", r=8)
    count = petl.count_parameters(model)
    assert (report.rows[0].trainable, report.rows[0].total) == (count.trainable, count.total)


def test_int4_takes_half_a_byte_per_weight_and_a_scale_per_block() -> None:
    with torch.device("meta"):
        wrapped = petl.wrap(tm.build("llama", "causal-lm"), "lora", r=2)
    q_proj = wrapped.model.layers[0].self_attn.q_proj.base_layer.weight
    frozen = sum(p.numel() for p in wrapped.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    int4 = memory_estimate(wrapped, {id(q_proj): q_proj.shape[0]}, precision="int4", optimizer="adamw", full=False)
    n = q_proj.numel()
    assert int4.weights_bytes == n // 2 + 4 * -(-n // 64) + 4 * (frozen - n) + 4 * trainable
    assert memory_estimate(wrapped, {}, precision="int4", optimizer="adamw", full=True).note == (
        "full fine-tuning cannot train 4-bit weights")
