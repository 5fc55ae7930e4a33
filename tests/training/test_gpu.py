"""Checks that need a CUDA GPU: bf16 training and an 8-bit base model on the device.

Skipped, saying so, on machines without one (CI has none); run them where a GPU is
available with ``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from tiny_data import task_data

import petl
from petl.training import TrainConfig, train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("strategy", ["lora", "bottleneck", "prefix"])
def test_bf16_training_on_cuda_keeps_frozen_weights(strategy: str) -> None:
    model = petl.wrap(tm.build("llama", "seq-cls").cuda(), strategy)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = train(model, task_data("sequence-classification"),
                   config=TrainConfig(batch_size=4, max_steps=4, mixed_precision="bf16", progress_bar=False))
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.step_losses)
    assert all(p.device.type == "cuda" for p in model.parameters())
    for name, value in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name


def test_8bit_base_and_8bit_optimizer_on_cuda(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    tm.build("llama", "seq-cls").save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["score"]),
        device_map={"": 0},
    )
    assert any(type(m).__name__ == "Linear8bitLt" for m in model.modules())
    model = petl.wrap(model, "lora", r=4)
    result = train(model, task_data("sequence-classification"),
                   config=TrainConfig(batch_size=4, max_steps=4, optimizer="adamw8bit", progress_bar=False))
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.step_losses)
