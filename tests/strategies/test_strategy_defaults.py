"""The settings behind issue #15 (weak prefix, AdaLoRA and Pfeiffer results): the prefix's start
from vocabulary activations, AdapterHub's Pfeiffer layer-norm arrangement and AdaLoRA's
schedule derived from the run's length, each against a hand-computed expectation."""

from __future__ import annotations

import math

import pytest
import tiny_models as T
import torch
from torch import nn
from torch.nn import functional as F

import petl
from petl.core.wrapping import state_of
from petl.errors import ConfigError

# --- prefix: init="vocab" ---------------------------------------------------------------


def _expected_vocab_ids(model: nn.Module, count: int, seed: int) -> list[int]:
    config = model.config
    special = {config.pad_token_id, config.bos_token_id, config.eos_token_id}
    torch.manual_seed(seed)
    order = torch.randperm(model.get_input_embeddings().num_embeddings).tolist()
    return [i for i in order if i not in special][:count]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_vocab_init_is_the_context_of_random_tokens_drawn_from_the_seed(arch: str) -> None:
    # Like init_token_ids, the flat prefix holds the keys/values of real tokens, so the model behaves
    # as if those tokens were its context; which tokens follows torch's generator.
    p = 4
    model = T.build(arch, "causal-lm")
    context = _expected_vocab_ids(model, p, seed=3)
    ids = T.inputs(arch, "causal-lm")["input_ids"][:1]
    with torch.no_grad():
        expected = model(input_ids=torch.cat([torch.tensor([context]), ids], dim=1)).logits[:, p:]
    torch.manual_seed(3)
    petl.wrap(model, "prefix", num_virtual_tokens=p, init="vocab")
    positions = torch.arange(ids.shape[1]).unsqueeze(0) + p
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=positions).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vocab_init_projected_starts_from_the_input_embeddings() -> None:
    model = T.build("bert", "seq-cls")
    ids = _expected_vocab_ids(model, 5, seed=1)
    torch.manual_seed(1)
    petl.wrap(model, "prefix", num_virtual_tokens=5, projection=8, init="vocab")
    assert torch.equal(model.petl_prefix.embedding.weight, model.get_input_embeddings().weight[ids])


def test_explicit_token_ids_win_over_init_and_bad_init_is_refused() -> None:
    model = T.build("bert", "seq-cls")
    petl.wrap(model, "prefix", num_virtual_tokens=2, projection=8, init_token_ids=[7, 8], init="vocab")
    assert torch.equal(model.petl_prefix.embedding.weight, model.get_input_embeddings().weight[[7, 8]])
    with pytest.raises(ConfigError, match="init must be one of"):
        petl.wrap(T.build("bert", "seq-cls"), "prefix", init="zeros")


def test_normal_init_keeps_peft_s_standard_normal_start() -> None:
    model = T.build("bert", "seq-cls")
    torch.manual_seed(0)
    petl.wrap(model, "prefix", num_virtual_tokens=64, init="normal")
    weight = model.petl_prefix.embedding.weight
    assert abs(weight.std().item() - 1.0) < 0.05 and abs(weight.mean().item()) < 0.05


# --- bottleneck: original_ln (AdapterHub's Pfeiffer) ------------------------------------


def _randomise_adapters(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "petl_adapter" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)


def test_original_ln_is_layer_norm_of_the_sum_plus_the_adapter_of_the_block_output() -> None:
    # AdapterHub's Pfeiffer (SeqBnConfig: original_ln_before, residual_before_ln, original_ln_after) on
    # BertOutput: s = dense(h) + x, y = LN(s); out = LN(f(y) + dense(h) + x), by hand from the weights.
    model = T.build("bert", "seq-cls").eval()
    petl.wrap(model, "bottleneck", variant="pfeiffer", original_ln=True)
    _randomise_adapters(model)
    output = model.bert.encoder.layer[1].output
    adapter = output.LayerNorm.petl_adapter
    h = torch.randn(2, 5, output.dense.in_features)
    x = torch.randn(2, 5, output.dense.out_features)
    ln = output.LayerNorm
    s = h @ output.dense.weight.T + output.dense.bias + x
    y = F.layer_norm(s, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    f = torch.relu(y @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias
    expected = F.layer_norm(s + f, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    with torch.no_grad():
        torch.testing.assert_close(output(h, x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_original_ln_is_the_identity_at_init_and_unwraps_exactly(arch: str) -> None:
    model = T.build(arch, "seq-cls").eval()
    batch = T.inputs(arch, "seq-cls")
    before = T.logits(model, batch)
    petl.wrap(model, "bottleneck", variant="pfeiffer", original_ln=True)
    assert all(".petl_adapter" in n for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n
               and "pre_classifier" not in n)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) and hasattr(m, "petl_adapter")]
    assert len(norms) == 2
    torch.testing.assert_close(T.logits(model, batch), before, atol=0, rtol=0)
    _randomise_adapters(model)
    assert not torch.allclose(T.logits(model, batch), before)
    petl.unwrap(model)
    torch.testing.assert_close(T.logits(model, batch), before, atol=0, rtol=0)


def test_original_ln_on_a_pre_ln_model_keeps_the_plain_placement() -> None:
    plain, arranged = T.build("gpt2", "causal-lm"), T.build("gpt2", "causal-lm")
    petl.wrap(plain, "bottleneck", variant="pfeiffer", original_ln=False)
    petl.wrap(arranged, "bottleneck", variant="pfeiffer", original_ln=True)
    keys = [sorted(state_of(m).strategy.adapter_state_dict(m)) for m in (plain, arranged)]
    assert keys[0] == keys[1] and all(".mlp.c_proj.petl_adapter." in k for k in keys[1])


def test_original_ln_needs_the_pfeiffer_variant() -> None:
    with pytest.raises(ConfigError, match="original_ln=True is AdapterHub's Pfeiffer"):
        petl.wrap(T.build("bert", "seq-cls"), "bottleneck", variant="houlsby", original_ln=True)


# --- AdaLoRA: the schedule follows the run -----------------------------------------------


def _adalora(**options: object) -> tuple[nn.Module, object]:
    model = T.build("bert", "seq-cls")
    petl.wrap(model, "adalora", target_modules=["query", "value"], **options)
    return model, state_of(model).strategy


def test_adalora_trains_without_the_orthogonality_penalty_by_default() -> None:
    model, strategy = _adalora(init_r=4, target_r=2)
    assert strategy.config.orth_reg_weight == 0.0
    assert strategy.regularization_loss(model) is None
    _, explicit = _adalora(init_r=4, target_r=2, orth_reg_weight=0.5)
    assert explicit.config.orth_reg_weight == 0.5


def test_the_penalty_gradient_does_not_shrink_near_orthonormality() -> None:
    # Why it is off by default: d||Q Q^T - I||_F / dQ has a norm of order 1 however small the distance,
    # while lambda = 0 at the start gives Q no task gradient at all, so the penalty alone steers Q.
    model, strategy = _adalora(init_r=4, target_r=2, orth_reg_weight=1.0)
    params = [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    norms = []
    for distance in (1e-1, 1e-3):
        with torch.no_grad():
            for p in params:
                q, _ = torch.linalg.qr(torch.randn(max(p.shape), min(p.shape)))
                p.copy_((q if p.shape[0] > p.shape[1] else q.T) * (1 + distance))
        grads = torch.autograd.grad(strategy.regularization_loss(model), params)
        norms.append(math.sqrt(sum(float((g ** 2).sum()) for g in grads)))
    assert norms[1] > 0.5 * norms[0] > 0.1
    batch = T.inputs("bert", "seq-cls")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_E." in name:
                p.zero_()
    loss = model(**batch).loss
    task = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in task)
