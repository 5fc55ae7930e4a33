"""The activation trace behind ``petl estimate --batch-size``: on fake tensors it counts the
bytes a real step holds, it behaves as activations do (linear in the batch, lowered by
gradient checkpointing and by a frozen base), its peak is the arithmetic the docs give,
and it stays within 20% of a measured peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models as tm
import torch
import transformers

import petl
from petl.bench.activations import StepTrace, _Ledger, trace_step
from petl.bench.estimate import estimate, format_estimate
from petl.bench.measure import peak_rss_mib
from petl.errors import ConfigError
from petl.training import TrainConfig
from petl.training.step import StepRunner

ROOT = Path(__file__).resolve().parents[2]
TASKS = {"llama": "causal-lm", "bert": "sequence-classification"}
HEADS = {"llama": "causal-lm", "bert": "seq-cls"}


def _config(arch: str, layers: int = 2) -> transformers.PretrainedConfig:
    config = tm.config(arch)
    config.num_hidden_layers = layers
    return config


def _model(arch: str, strategy: str, device: str = "meta", layers: int = 2) -> torch.nn.Module:
    auto = getattr(transformers, tm.HEADS[HEADS[arch]])
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(_config(arch, layers))
        if strategy != "full":
            petl.wrap(model, strategy, r=4)
    return model


def _trace(arch: str, strategy: str, batch_size: int = 4, seq_len: int = 32, **options: bool) -> StepTrace:
    return trace_step(_model(arch, strategy, layers=options.pop("layers", 2)), TASKS[arch], batch_size=batch_size,
                      seq_len=seq_len, full=strategy == "full", **options)


def _real_batch(arch: str, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, tm.VOCAB, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    mask[-1, -4:] = 0  # padded, as training batches are: the attention mask is a real one
    labels = torch.zeros(batch_size, dtype=torch.long) if arch == "bert" else ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("strategy", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_the_trace_on_fake_tensors_counts_what_a_real_step_holds(arch: str, strategy: str) -> None:
    model = _model(arch, strategy, device="cpu").train()
    batch = _real_batch(arch, 4, 32)
    runner = StepRunner(model, TrainConfig(), total_steps=1)
    ledger = _Ledger([*model.parameters(), *model.buffers(), *batch.values()])
    hooks = [p.register_post_accumulate_grad_hook(ledger.mark_gradient) for p in model.parameters() if p.requires_grad]
    with ledger:
        runner(batch)
    for hook in hooks:
        hook.remove()
    traced = _trace(arch, strategy)
    assert (traced.activation_bytes, traced.forward_backward_bytes) == (ledger.activations_peak,
                                                                        ledger.forward_backward_peak)
    trainable = [p.numel() for p in model.parameters() if p.requires_grad]
    assert traced.gradient_bytes == 4 * sum(trainable)
    # AdamW: two fp32 states per parameter, and one fp32 step count per tensor
    assert traced.optimizer_bytes == 8 * sum(trainable) + 4 * len(trainable)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_activations_grow_linearly_in_the_batch_size(arch: str) -> None:
    two, four, eight = (_trace(arch, "lora", batch_size=b).activation_bytes for b in (2, 4, 8))
    assert two > 0
    assert eight - four == pytest.approx(2 * (four - two), rel=0.01)
    assert four == pytest.approx(2 * two, rel=0.05)  # nearly nothing of it is independent of the batch


@pytest.mark.parametrize("strategy", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_gradient_checkpointing_lowers_the_activations(arch: str, strategy: str) -> None:
    plain = _trace(arch, strategy, seq_len=64, layers=4)
    checkpointed = _trace(arch, strategy, seq_len=64, layers=4, gradient_checkpointing=True)
    assert checkpointed.activation_bytes < 0.8 * plain.activation_bytes


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_a_frozen_base_with_lora_keeps_fewer_activations_than_full_fine_tuning(arch: str) -> None:
    # A frozen linear layer saves nothing for backward; LoRA saves only its adapters' inputs.
    assert _trace(arch, "lora").activation_bytes < _trace(arch, "full").activation_bytes


def test_bf16_halves_what_is_saved_in_bf16_and_the_input_is_left_alone() -> None:
    model = _model("llama", "lora")
    fp32 = trace_step(model, "causal-lm", batch_size=4, seq_len=32, full=False)
    bf16 = trace_step(model, "causal-lm", batch_size=4, seq_len=32, full=False, bf16=True)
    assert bf16.activation_bytes < fp32.activation_bytes
    assert all(p.device.type == "meta" and p.dtype == torch.float32 for p in model.parameters())  # traced a copy


def _folder(tmp_path: Path, arch: str) -> str:
    _config(arch).save_pretrained(tmp_path / arch)
    return str(tmp_path / arch)


def test_the_total_is_the_traced_peak_of_the_step(tmp_path: Path) -> None:
    report = estimate(_folder(tmp_path, "llama"), [("full", "full", {}), ("lora", "lora", {"r": 4})],
                      task="causal-lm", precisions=("fp32", "bf16", "int8", "int4"), batch_size=4, seq_len=32)
    full, lora = report.rows
    trace = _trace("llama", "full")
    m = full.memory[0]
    assert m.activation_bytes == trace.activation_bytes
    assert m.peak_bytes == m.weights_bytes + m.optimizer_bytes + max(trace.forward_backward_bytes, trace.step_bytes)
    for m in (*full.memory, *lora.memory):
        if m.note is None:
            assert m.total_bytes == m.peak_bytes
            assert m.peak_bytes <= m.weights_bytes + m.gradient_bytes + m.optimizer_bytes + m.activation_bytes
    assert [m.note is None for m in full.memory] == [True, True, False, False]  # full cannot train 8/4-bit weights
    fp32, bf16, int8, int4 = lora.memory
    assert bf16.activation_bytes < fp32.activation_bytes
    with torch.device("meta"):
        base = transformers.AutoModelForCausalLM.from_config(_config("llama"))
    largest = max(m.weight.numel() for n, m in base.named_modules() if type(m) is torch.nn.Linear and n != "lm_head")
    # one fp32 copy of the largest quantized weight (dequantized in each pass) on top of the smaller weights
    assert int8.peak_bytes - int8.weights_bytes == fp32.peak_bytes - fp32.weights_bytes + 4 * largest
    assert int8.activation_bytes == int4.activation_bytes == fp32.activation_bytes + 4 * largest
    assert int4.weights_bytes < int8.weights_bytes < fp32.weights_bytes
    assert report.to_dict()["activations"] == {"batch_size": 4, "seq_len": 32, "gradient_checkpointing": False}


def test_without_a_batch_shape_nothing_is_traced(tmp_path: Path) -> None:
    report = estimate(_folder(tmp_path, "bert"), [("lora", "lora", {})], task="sequence-classification",
                      precisions=("fp32",))
    m = report.rows[0].memory[0]
    assert report.shape is None and m.activation_bytes is None and m.peak_bytes is None
    assert m.total_bytes == m.weights_bytes + m.gradient_bytes + m.optimizer_bytes
    assert "activations not included" in format_estimate(report)
    defaults = estimate(_folder(tmp_path, "llama"), [("lora", "lora", {})], task="causal-lm", precisions=("fp32",),
                        gradient_checkpointing=True)
    assert (defaults.shape.batch_size, defaults.shape.seq_len) == (8, 128)


def test_the_table_shows_activations_and_the_peak(tmp_path: Path) -> None:
    report = estimate(_folder(tmp_path, "bert"), [("lora", "lora", {})], task="sequence-classification",
                      precisions=("fp32",), batch_size=2, seq_len=16, gradient_checkpointing=True)
    header, _, row, *rest = format_estimate(report).splitlines()
    assert header.split()[-4:] == ["optimizer", "activations", "peak", "mem"]
    assert row.count(" MiB") == 5  # weights, gradients, optimizer, activations, peak
    assert "activations traced for batches of 2 x 16 tokens, gradient checkpointing" in "\n".join(rest)


def test_a_step_that_cannot_be_traced_keeps_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def reads_values(*args: object, **kwargs: object) -> StepTrace:
        raise RuntimeError("aten::_local_scalar_dense has no data on fake tensors")

    monkeypatch.setattr("petl.bench.activations.trace_step", reads_values)
    report = estimate(_folder(tmp_path, "bert"), [("lora", "lora", {})], task="sequence-classification",
                      precisions=("fp32",), batch_size=2, seq_len=16)
    m = report.rows[0].memory[0]
    assert m.activation_bytes is None and "activations not traced: RuntimeError" in m.activation_note
    assert m.total_bytes == m.weights_bytes + m.gradient_bytes + m.optimizer_bytes
    assert "lora fp32: activations not traced" in format_estimate(report)


@pytest.mark.parametrize(("options", "message"), [
    ({"batch_size": 0}, r"^batch_size must be a positive integer or None, got 0\.$"),
    ({"batch_size": True}, r"^batch_size must be a positive integer or None, got True\.$"),
    ({"seq_len": -4}, r"^seq_len must be a positive integer or None, got -4\.$"),
    ({"seq_len": 2.5}, r"^seq_len must be a positive integer or None, got 2\.5\.$"),
    ({"gradient_checkpointing": "yes"}, r"gradient_checkpointing must be"),
])
def test_batch_shape_options_are_checked_before_reading_the_model(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        estimate("/no/such/model", **options)


def test_a_sequence_longer_than_the_model_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"seq_len=1024 is longer than the 512 positions .* of 512 or less\.$"):
        estimate("minilm", [("lora", "lora", {})], batch_size=1, seq_len=1024)


@pytest.mark.parametrize("flag", ["--batch-size", "--seq-len"])
def test_the_command_line_checks_the_batch_shape_first(flag: str) -> None:
    from petl.cli import build_parser

    args = build_parser().parse_args(["estimate", "/no/such/model", flag, "0"])
    with pytest.raises(ConfigError, match=rf"^{flag} must be a positive integer, got 0\.$"):
        args.handler(args)
    parsed = build_parser().parse_args(["estimate", "x", "--batch-size", "4", "--seq-len", "64",
                                        "--gradient-checkpointing", "--precision", "int4"])
    assert (parsed.batch_size, parsed.seq_len, parsed.gradient_checkpointing, parsed.precision) == (4, 64, True,
                                                                                                   ["int4"])


def test_tracing_a_7b_model_allocates_nothing() -> None:
    before = peak_rss_mib()
    report = estimate("llama-7b", [("lora", "lora", {})], precisions=("bf16",), batch_size=1, seq_len=32)
    m = report.rows[0].memory[0]
    assert m.activation_bytes > 50 * 2**20 and m.peak_bytes > 12 * 2**30
    assert peak_rss_mib() - before < 500  # the weights alone would be 13 GB


def test_the_estimate_is_within_20_percent_of_a_measured_peak(tmp_path: Path) -> None:
    # One step of the benchmark's tiny BERT in a fresh process (benchmarks/estimate_accuracy.py), with
    # glibc returning freed blocks of 64 KiB or more, so that the resident set follows the live tensors.
    case = {"model": "bert-tiny", "strategy": "lora", "batch_size": 8, "seq_len": 128, "gradient_checkpointing": False}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimate_accuracy.py"), "--measure",
                           json.dumps(case)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])["measured_mib"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import estimate_accuracy
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    estimated = estimate_accuracy.estimate_case(case, tmp_path)["total_mib"]
    assert estimated == pytest.approx(measured, rel=0.2)
