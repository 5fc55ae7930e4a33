"""The bottleneck strategy: Houlsby, Pfeiffer and parallel adapters placed with hooks.

Runs on the eleven families of ``tiny_models`` plus six built here: three that
:data:`petl.modeling.FAMILIES` lists (electra, phi, gemma) and three that it
does not (xglm, roformer, m2m_100), which go through structural discovery.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import tiny_models as T
import torch
import transformers as tf
from torch import nn

import petl
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import (
    AlreadyWrappedError,
    ConfigError,
    NotMergeableError,
    PetlError,
    TargetNotFoundError,
    UnsupportedModelError,
)
from petl.modeling import FAMILIES, find_blocks
from petl.strategies.bottleneck import ADAPTER_NAME, BottleneckAdapter, BottleneckConfig

VARIANTS = ("houlsby", "pfeiffer", "parallel")
# Houlsby's places are a superset of Pfeiffer's (which the conformance suite runs on every case);
# parallel needs the FFN input as well. These two cover every lookup on every family.
PLACEMENTS = ("houlsby", "parallel")
_V = {"vocab_size": T.VOCAB}

EXTRA: dict[str, tuple[str, Callable[[], Any]]] = {
    "electra": ("token-cls", lambda: tf.ElectraConfig(
        hidden_size=32, embedding_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **_V)),
    "phi": ("causal-lm", lambda: tf.PhiConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        pad_token_id=0, **_V)),
    "gemma": ("causal-lm", lambda: tf.GemmaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        head_dim=8, pad_token_id=0, **_V)),
    "xglm": ("causal-lm", lambda: tf.XGLMConfig(
        d_model=32, num_layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64, pad_token_id=1, **_V)),
    "roformer": ("seq-cls", lambda: tf.RoFormerConfig(
        hidden_size=32, embedding_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **_V)),
    "m2m_100": ("seq2seq-lm", lambda: tf.M2M100Config(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, **_V)),
}
ARCHS: dict[str, str] = {
    **{arch: heads[0] for arch, heads in T.ARCH_HEADS.items()},
    **{arch: head for arch, (head, _) in EXTRA.items()},
}
GENERATIVE = ("causal-lm", "seq2seq-lm")


def build(arch: str, seed: int = 0) -> nn.Module:
    if arch not in EXTRA:
        return T.build(arch, ARCHS[arch], seed)
    head, config = EXTRA[arch]
    torch.manual_seed(seed)
    cfg = config()
    cfg.num_labels = T.NUM_LABELS
    return getattr(tf, T.HEADS[head]).from_config(cfg, attn_implementation="eager").eval()


def batch_for(arch: str) -> dict[str, torch.Tensor]:
    return T.inputs("bart" if arch == "m2m_100" else arch, ARCHS[arch])


def adapters(model: nn.Module) -> dict[str, BottleneckAdapter]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)}


def perturb(model: nn.Module, seed: int = 3) -> None:
    """Give every up-projection non-zero values, so the adapters do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters(model).values():
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=g) * 0.5)
            adapter.up.bias.copy_(torch.randn(adapter.up.bias.shape, generator=g) * 0.5)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hook_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


def assert_untouched(model: nn.Module, state: dict[str, torch.Tensor], hooks: dict[str, tuple[int, int]]) -> None:
    assert not is_wrapped(model)
    assert not adapters(model) and not any(n.endswith(ADAPTER_NAME) for n, _ in model.named_modules())
    assert hook_counts(model) == hooks
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())


def test_the_extra_families_cover_table_and_discovery() -> None:
    assert {"electra", "phi", "gemma"} <= set(FAMILIES)
    assert not {"xglm", "roformer", "m2m_100"} & set(FAMILIES)
    assert len(ARCHS) >= 12


@pytest.mark.parametrize("variant", PLACEMENTS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_identity_then_training_touches_only_the_adapter(arch: str, variant: str) -> None:
    model = build(arch)
    batch = batch_for(arch)
    base_logits = T.logits(model, batch)
    base = snapshot(model)
    petl.wrap(model, "bottleneck", variant=variant, reduction_factor=4)
    torch.testing.assert_close(T.logits(model, batch), base_logits, atol=1e-6, rtol=0)
    assert torch.equal(T.logits(model, batch), base_logits)  # zero up-projection: exactly the base model

    blocks = find_blocks(model)
    per_block = 2 if variant == "houlsby" else 1
    found = adapters(model)
    assert len(found) == per_block * len(blocks)
    m = 32 // 4
    heads = state_of(model).strategy.config.modules_to_save or ()
    head_params = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    expected = len(found) * (2 * 32 * m + 32 + m) + head_params
    assert petl.count_parameters(model).trainable == expected

    perturb(model)
    adapted_logits = T.logits(model, batch)
    assert not torch.equal(adapted_logits, base_logits)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    model.eval()
    for name, value in base.items():
        in_head = any(name.startswith(h + ".") for h in heads)
        if not in_head:
            assert torch.equal(model.state_dict()[name], value), f"the step changed base weight {name}"
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(ADAPTER_NAME in n for n in changed)
    assert all(ADAPTER_NAME in n or any(n.startswith(h + ".") for h in heads) for n in changed)


@pytest.mark.parametrize("variant", PLACEMENTS)
@pytest.mark.parametrize("arch", [a for a, h in ARCHS.items() if h in GENERATIVE])
def test_generate_with_cache_matches_without(arch: str, variant: str) -> None:
    model = build(arch)
    petl.wrap(model, "bottleneck", variant=variant, reduction_factor=4)
    perturb(model)
    batch = batch_for(arch)
    ids, mask = batch["input_ids"][:1, :4], batch["attention_mask"][:1, :4]
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
        plain = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    assert cached.shape[1] > (1 if arch in T.ENCODER_DECODER or arch == "m2m_100" else ids.shape[1])
    assert torch.equal(cached, plain)


def test_sequential_math_on_a_post_ln_block() -> None:
    model = T.build("bert", "seq-cls")
    dense = model.bert.encoder.layer[0].output.dense
    z = torch.randn(2, 5, 64)
    base = dense(z)
    petl.wrap(model, "bottleneck", variant="pfeiffer", bottleneck_size=4, non_linearity="tanh", scaling=0.5)
    perturb(model)
    a = dense.petl_adapter
    expected = base + 0.5 * a.up(torch.tanh(a.down(base)))
    torch.testing.assert_close(dense(z), expected, atol=1e-6, rtol=1e-6)


def test_parallel_math_reads_the_ffn_input() -> None:
    model = T.build("llama", "causal-lm")
    mlp = model.model.layers[1].mlp
    x = torch.randn(2, 5, 32)
    base = mlp(x)
    petl.wrap(model, "bottleneck", variant="parallel", reduction_factor=8)
    assert state_of(model).strategy.config.effective_scaling == 4.0
    perturb(model)
    a = mlp.down_proj.petl_adapter
    expected = base + 4.0 * a.up(torch.relu(a.down(x)))
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-6)
    assert len(mlp.gate_proj._forward_pre_hooks) == 1 and len(mlp.down_proj._forward_hooks) == 1


def test_cross_attention_and_layers_options() -> None:
    model = T.build("t5", "seq2seq-lm")
    petl.wrap(model, "bottleneck", variant="houlsby", cross_attention=True, layers=[0, 3], bottleneck_size=4)
    names = sorted(n.removesuffix("." + ADAPTER_NAME) for n in adapters(model))
    assert names == [
        "decoder.block.1.layer.0.SelfAttention.o", "decoder.block.1.layer.1.EncDecAttention.o",
        "decoder.block.1.layer.2.DenseReluDense.wo", "encoder.block.0.layer.0.SelfAttention.o",
        "encoder.block.0.layer.1.DenseReluDense.wo",
    ]
    with pytest.raises(ConfigError, match="sequential"):
        BottleneckConfig(variant="parallel", cross_attention=True)
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        petl.wrap(T.build("llama", "causal-lm"), "bottleneck", cross_attention=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_unwrap_merge(variant: str, tmp_path) -> None:
    arch = "bart"
    model = build(arch)
    batch = batch_for(arch)
    base_logits, base, hooks = T.logits(model, batch), snapshot(model), hook_counts(model)
    config = BottleneckConfig(variant=variant, bottleneck_size=3, layers=(1, 2), non_linearity="gelu", dropout=0.1)
    petl.wrap(model, config)
    perturb(model)
    logits = T.logits(model, batch)
    keys = set(state_of(model).strategy.adapter_state_dict(model))
    assert keys <= {n for n, _ in model.named_parameters()} and all(ADAPTER_NAME in k for k in keys)

    petl.save(model, tmp_path)
    fresh = build(arch)
    torch.manual_seed(123)  # the fresh adapter starts from other random values than the saved one
    petl.load(fresh, tmp_path)
    assert state_of(fresh).strategy.config == state_of(model).strategy.config
    assert torch.equal(T.logits(fresh, batch), logits)

    with pytest.raises(NotMergeableError, match="nonlinearity"):
        petl.merge(model)
    assert is_wrapped(model) and torch.equal(T.logits(model, batch), logits)
    assert not any(a.training for a in adapters(model).values()), "adapters follow the model's eval mode"
    petl.unwrap(model)
    assert_untouched(model, base, hooks)
    assert torch.equal(T.logits(model, batch), base_logits)


def test_wrap_with_config_equals_wrap_with_name() -> None:
    a, b = build("gpt2"), build("gpt2")
    torch.manual_seed(1)
    petl.wrap(a, "bottleneck", variant="houlsby", reduction_factor=8)
    torch.manual_seed(1)
    petl.wrap(b, BottleneckConfig(variant="houlsby", reduction_factor=8))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    config = state_of(a).strategy.config
    assert BottleneckConfig.from_dict(config.to_dict()) == config


def test_double_injection_is_refused() -> None:
    model = build("llama")
    petl.wrap(model, "bottleneck")
    strategy = state_of(model).strategy
    with pytest.raises(AlreadyWrappedError):
        strategy.inject(model)
    with pytest.raises(AlreadyWrappedError):
        petl.wrap(model, "bottleneck")
    assert len(adapters(model)) == 2


@pytest.mark.parametrize(
    "options,error,text",
    [
        ({"variant": "pfeifer"}, ConfigError, "Did you mean 'pfeiffer'"),
        ({"reduction_factor": 0}, ConfigError, "positive"),
        ({"reduction_factor": -2}, ConfigError, "positive"),
        ({"reduction_factor": 64}, ConfigError, "larger than the hidden size 32"),
        ({"reduction_factor": 4, "bottleneck_size": 8}, ConfigError, "pass one, not both"),
        ({"bottleneck_size": 0}, ConfigError, "positive integer"),
        ({"non_linearity": "rellu"}, ConfigError, "Did you mean 'relu'"),
        ({"layers": [0, 5]}, ConfigError, r"names block\(s\) \[5\].*has 2 blocks"),
        ({"layers": [-1]}, ConfigError, "integers >= 0"),
        ({"dropout": 1.5}, ConfigError, "dropout"),
        ({"module_paths": {"blocks": "model.layers", "ffn_outptu": "mlp.down_proj"}}, ConfigError,
         "Did you mean 'ffn_output'"),
        ({"module_paths": {"blocks": "model.layers", "ffn_output": "mlp.down_prj"}}, TargetNotFoundError,
         "Did you mean 'mlp.down_proj'"),
        ({"module_paths": {"blocks": "nowhere", "ffn_output": "mlp.down_proj"}}, TargetNotFoundError, "model.layers"),
    ],
)
def test_bad_input_leaves_the_model_untouched(options: dict[str, Any], error: type, text: str) -> None:
    model = build("llama")
    base, hooks = snapshot(model), hook_counts(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(error, match=text) as info:
        petl.wrap(model, "bottleneck", **options)
    assert isinstance(info.value, PetlError)
    assert_untouched(model, base, hooks)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


class _NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_unknown_structure_asks_for_module_paths() -> None:
    model = _NoBlocks()
    base, hooks = snapshot(model), hook_counts(model)
    with pytest.raises(UnsupportedModelError, match="_NoBlocks.*module_paths"):
        petl.wrap(model, "bottleneck")
    assert_untouched(model, base, hooks)


def test_explicit_module_paths_match_the_automatic_ones() -> None:
    auto, explicit = build("phi"), build("phi")
    batch = batch_for("phi")
    torch.manual_seed(2)
    petl.wrap(auto, "bottleneck", variant="parallel")
    torch.manual_seed(2)
    paths = {"blocks": "model.layers", "attention_output": "self_attn.dense", "ffn_input": "mlp.fc1",
             "ffn_output": "mlp.fc2"}
    petl.wrap(explicit, "bottleneck", variant="parallel", module_paths=paths)
    assert set(adapters(auto)) == set(adapters(explicit))
    config = state_of(explicit).strategy.config
    assert config.module_paths == (paths,)
    assert BottleneckConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    perturb(auto)
    perturb(explicit)
    assert torch.equal(T.logits(auto, batch), T.logits(explicit, batch))


@pytest.mark.parametrize("arch,variant", [("llama", "parallel"), ("bert", "houlsby")])
def test_gradient_checkpointing_gives_the_same_gradients(arch: str, variant: str) -> None:
    grads = []
    for checkpointing in (False, True):
        model = build(arch)
        petl.wrap(model, "bottleneck", variant=variant, reduction_factor=4, dropout=0.1)
        perturb(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        model.train()
        torch.manual_seed(5)  # the same dropout masks in both runs (checkpointing replays the RNG state)
        model(**batch_for(arch)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[0].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_adapter_follows_the_model_dtype() -> None:
    model = build("qwen2").to(torch.bfloat16)
    petl.wrap(model, "bottleneck", variant="houlsby")
    assert {a.down.weight.dtype for a in adapters(model).values()} == {torch.bfloat16}
    assert T.logits(model, batch_for("qwen2")).dtype == torch.bfloat16


def test_eight_bit_base_model() -> None:
    pytest.importorskip("bitsandbytes")
    base = T.build("llama", "causal-lm")
    with tempfile.TemporaryDirectory() as folder:
        base.save_pretrained(folder)
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=tf.BitsAndBytesConfig(load_in_8bit=True), attn_implementation="eager"
        )
    target = model.model.layers[0].mlp.down_proj
    assert type(target).__name__ == "Linear8bitLt" and target.weight.dtype == torch.int8
    batch = T.inputs("llama", "causal-lm")
    base_logits, state = T.logits(model, batch), snapshot(model)
    petl.wrap(model, "bottleneck", variant="houlsby", reduction_factor=4)
    assert {a.up.weight.dtype for a in adapters(model).values()} == {torch.float32}
    assert torch.equal(T.logits(model, batch), base_logits)
    perturb(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    optimizer.step()
    model.eval()
    after = model.state_dict()
    for key in state:
        if ADAPTER_NAME not in key:
            assert torch.equal(after[key], state[key]), key
    petl.unwrap(model)
    assert torch.equal(T.logits(model, batch), base_logits)
