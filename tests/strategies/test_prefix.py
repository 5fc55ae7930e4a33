"""Prefix-tuning on transformers' attention interface: every tiny architecture, parity
with peft, masks, cached generation, gradient checkpointing, save/load and bad input."""

from __future__ import annotations

import copy

import pytest
import tiny_models as T
import torch
from peft import PrefixTuningConfig, get_peft_model
from torch import nn

import petl
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import ConfigError, NotMergeableError, PetlError, UnsupportedModelError
from petl.strategies.prefix import PrefixConfig, PrefixStrategy
from petl.strategies.prefix.attention import widen_mask

IDS = [f"{a}-{h}" for a, h in T.CASES]
P = 3


def _prefix(model: nn.Module) -> nn.Module:
    return model.petl_prefix


def _attention_impls(model: nn.Module) -> list[str | None]:
    return [m.config._attn_implementation for m in model.modules() if hasattr(m, "config")]


def _randomise_prefix(model: nn.Module, seed: int = 0, std: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in _prefix(model).parameters():
            param.copy_(torch.randn(param.shape, generator=g) * std)


def test_strategy_flags() -> None:
    assert PrefixStrategy.identity_at_init is False
    assert PrefixStrategy.handles_heads is False
    assert PrefixConfig.strategy == "prefix"
    assert "prefix" in petl.available()


@pytest.mark.parametrize("arch,head", T.CASES, ids=IDS)
def test_every_case_trains_only_the_prefix_and_unwraps_exactly(arch: str, head: str) -> None:
    # Eager attention here; test_eager_and_sdpa_wrappers_agree covers sdpa on every case.
    model = T.build(arch, head)
    batch = T.inputs(arch, head)
    impls = _attention_impls(model)
    base_logits = T.logits(model, batch)
    petl.wrap(model, "prefix", num_virtual_tokens=P)
    heads = state_of(model).strategy.config.modules_to_save or ()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"petl_prefix.embedding.weight"} | {
        n for n, _ in model.named_parameters() if any(n.startswith(h + ".") for h in heads)
    }
    # One prefix per attention module: 2 (self-attention) or 6 (encoder, decoder and cross-attention).
    kv_heads = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    head_dim = getattr(model.config, "d_kv", None) or T.HIDDEN // model.config.num_attention_heads
    modules = 6 if arch in T.ENCODER_DECODER else 2
    assert _prefix(model).embedding.weight.shape == (P, modules * 2 * kv_heads * head_dim)
    assert not torch.allclose(T.logits(model, batch), base_logits), "the prefix must change attention"

    model.train()
    model(**batch).loss.backward()
    assert _prefix(model).embedding.weight.grad.abs().sum() > 0
    model.eval()

    base = petl.unwrap(model)
    assert not hasattr(base, "petl_prefix")
    assert _attention_impls(base) == impls
    assert not any("_petl_prefix_slot" in vars(m) for m in base.modules())
    torch.testing.assert_close(T.logits(base, batch), base_logits, atol=0, rtol=0)


@pytest.mark.parametrize("arch,head", T.CASES, ids=IDS)
def test_eager_and_sdpa_wrappers_agree(arch: str, head: str) -> None:
    batch = T.inputs(arch, head)
    outs = []
    for impl in ("eager", "sdpa"):
        model = T.build(arch, head)
        model.set_attn_implementation(impl)
        petl.wrap(model, "prefix", num_virtual_tokens=P, projection=8)
        _randomise_prefix(model)
        outs.append(T.logits(model, batch))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,projection", [("gpt2", None), ("llama", None), ("qwen2", None), ("gpt2", 16)])
def test_parity_with_peft_prefix_tuning(arch: str, projection: int | None) -> None:
    batch = T.inputs(arch, "causal-lm")
    config = PrefixTuningConfig(
        num_virtual_tokens=P,
        task_type="CAUSAL_LM",
        prefix_projection=projection is not None,
        encoder_hidden_size=projection or T.HIDDEN,
    )
    theirs = get_peft_model(T.build(arch, "causal-lm"), config)
    ours = petl.wrap(T.build(arch, "causal-lm"), "prefix", num_virtual_tokens=P, projection=projection)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in theirs.prompt_encoder["default"].parameters():
            param.normal_(0, 0.5)
    _prefix(ours).load_peft_state_dict(theirs.prompt_encoder["default"].state_dict())
    assert petl.count_parameters(ours).trainable == theirs.get_nb_trainable_parameters()[0]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        # peft feeds the prefix as a cache, which moves the tokens to positions P..P+n-1.
        shifted = (torch.arange(ids.shape[1]) + P).expand_as(ids)
        got = ours(input_ids=ids, attention_mask=mask, position_ids=shifted).logits
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=0)


def test_peft_projected_weights_of_a_grouped_query_model_are_refused() -> None:
    config = PrefixTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM", prefix_projection=True)
    theirs = get_peft_model(T.build("llama", "causal-lm"), config)
    ours = petl.wrap(T.build("llama", "causal-lm"), "prefix", num_virtual_tokens=P, projection=T.HIDDEN)
    before = {k: v.clone() for k, v in _prefix(ours).state_dict().items()}
    with pytest.raises(PetlError, match="do not fit this prefix"):
        _prefix(ours).load_peft_state_dict(theirs.prompt_encoder["default"].state_dict())
    assert all(torch.equal(v, before[k]) for k, v in _prefix(ours).state_dict().items())


def _rows_alone(model: nn.Module, arch: str, head: str, batch: dict[str, torch.Tensor]) -> None:
    full = T.logits(model, batch)
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        per_row = ("labels", "start_positions", "end_positions")  # one value per row, not per token
        alone = {k: v[row : row + 1, :n] if k not in per_row else v[row : row + 1] for k, v in batch.items()}
        if head in ("causal-lm", "token-cls", "qa"):
            alone.pop("labels", None)
            torch.testing.assert_close(T.logits(model, alone), full[row : row + 1, :n], atol=1e-5, rtol=1e-5)
        else:  # seq-cls rows, and seq2seq decoder logits over the same labels
            torch.testing.assert_close(T.logits(model, alone), full[row : row + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,head", T.CASES, ids=IDS)
def test_padded_batch_equals_each_sequence_alone(arch: str, head: str) -> None:
    model = petl.wrap(T.build(arch, head), "prefix", num_virtual_tokens=P)
    _randomise_prefix(model)
    batch = T.inputs(arch, head, length=7)
    batch["attention_mask"][0, -3:] = 0  # both rows padded, by different amounts
    # Classifiers of decoders read the last token that is not the pad id.
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, model.config.pad_token_id)
    if arch == "bart":
        batch["input_ids"][0, 3] = T.BART_EOS
    _rows_alone(model, arch, head, batch)


def test_causal_queries_see_every_prefix_position_and_no_future_token() -> None:
    model = petl.wrap(T.build("llama", "causal-lm"), "prefix", num_virtual_tokens=P)  # eager: weights are returned
    _randomise_prefix(model)
    batch = T.inputs("llama", "causal-lm")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    n = batch["input_ids"].shape[1]
    for weights in out.attentions:  # (batch, heads, queries, P + keys)
        assert weights.shape[-1] == P + n
        assert (weights[..., :P] > 0).all(), "every query must see every prefix position"
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        assert (weights[..., P:][..., future] == 0).all(), "no query may see a future token"
        padded = batch["attention_mask"][1] == 0
        assert (weights[1, :, :, P:][..., padded] == 0).all(), "padding must stay masked"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_future_tokens_do_not_change_earlier_outputs(arch: str) -> None:
    head = "seq2seq-lm" if arch == "t5" else "causal-lm"
    model = petl.wrap(T.build(arch, head), "prefix", num_virtual_tokens=P)
    _randomise_prefix(model)
    ids = T.inputs(arch, head)["input_ids"][:1]
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % T.VOCAB
    with torch.no_grad():
        if arch == "t5":  # the decoder is the causal part
            a = model(input_ids=ids, decoder_input_ids=ids).logits
            b = model(input_ids=ids, decoder_input_ids=changed).logits
        else:
            a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=0, rtol=0)
    assert not torch.equal(a[:, -1], b[:, -1])


def test_widen_mask_aligns_a_missing_causal_mask_with_the_cache() -> None:
    query = torch.zeros(1, 1, 2, 4)
    mask = widen_mask(None, query, key_length=5, num_prefix=2, causal=True, additive=False)
    expected = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    assert widen_mask(None, query, 5, 2, causal=False, additive=False) is None
    additive = widen_mask(torch.tensor([[[[True, False]]]]), query[:, :, :1], 2, 1, causal=False, additive=True)
    assert additive[0, 0, 0, :2].eq(0).all() and additive[0, 0, 0, 2] == torch.finfo(torch.float32).min


@pytest.mark.parametrize(
    "arch,head,impl",
    [
        ("gpt2", "causal-lm", "eager"),
        ("llama", "causal-lm", "sdpa"),
        ("mistral", "causal-lm", "eager"),
        ("bart", "seq2seq-lm", "sdpa"),
        ("t5", "seq2seq-lm", "eager"),
    ],
)
def test_cached_generation_equals_step_by_step_full_forwards(arch: str, head: str, impl: str) -> None:
    model = T.build(arch, head)
    model.set_attn_implementation(impl)
    petl.wrap(model, "prefix", num_virtual_tokens=P, projection=8)
    _randomise_prefix(model)
    ids = T.inputs(arch, head)["input_ids"][:1]
    steps = 5
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        use_cache=True,
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
    )
    seq = out.sequences[:, :1] if model.config.is_encoder_decoder else ids
    with torch.no_grad():
        for step in range(steps):
            if model.config.is_encoder_decoder:
                logits = model(input_ids=ids, decoder_input_ids=seq).logits[:, -1]
            else:
                logits = model(input_ids=seq).logits[:, -1]
            torch.testing.assert_close(out.logits[step], logits, atol=1e-5, rtol=1e-5)
            seq = torch.cat([seq, out.sequences[:, seq.shape[1] : seq.shape[1] + 1]], dim=1)
            assert torch.equal(seq[:, -1], out.scores[step].argmax(-1))  # greedy on the processed scores
    assert torch.equal(seq, out.sequences)


@pytest.mark.parametrize(
    "arch,head", [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("bert", "seq-cls"), ("t5", "seq2seq-lm")]
)
def test_gradient_checkpointing_gives_the_same_gradients(arch: str, head: str) -> None:
    batch = T.inputs(arch, head)
    grads = []
    for checkpointing in (False, True):
        model = petl.wrap(T.build(arch, head), "prefix", num_virtual_tokens=P, projection=8)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        torch.manual_seed(5)  # the same dropout masks in both runs
        model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("petl_prefix") for n in grads[0])
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "arch,head,projection", [("bert", "seq-cls", None), ("llama", "causal-lm", 16), ("bart", "seq2seq-lm", None)]
)
def test_save_load_round_trip_is_exact(arch: str, head: str, projection: int | None, tmp_path) -> None:
    batch = T.inputs(arch, head)
    model = petl.wrap(T.build(arch, head), "prefix", num_virtual_tokens=P, projection=projection)
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    model.eval()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"the optimizer step changed the frozen {name}"
    trained = T.logits(model, batch)
    petl.save(model, tmp_path)
    loaded = petl.load(T.build(arch, head), tmp_path)
    assert state_of(loaded).strategy.config == state_of(model).strategy.config
    torch.testing.assert_close(T.logits(loaded, batch), trained, atol=0, rtol=0)


def test_merge_refuses_and_leaves_the_model_wrapped() -> None:
    model = petl.wrap(T.build("llama", "causal-lm"), "prefix", num_virtual_tokens=P)
    batch = T.inputs("llama", "causal-lm")
    before = T.logits(model, batch)
    with pytest.raises(NotMergeableError, match="cannot be merged because its prefix adds key/value positions"):
        petl.merge(model)
    assert is_wrapped(model)
    torch.testing.assert_close(T.logits(model, batch), before, atol=0, rtol=0)


def test_wrapped_models_in_one_process_do_not_interfere() -> None:
    batch = T.inputs("llama", "causal-lm")
    first = petl.wrap(T.build("llama", "causal-lm"), "prefix", num_virtual_tokens=P)
    alone = T.logits(first, batch)
    second = petl.wrap(T.build("llama", "causal-lm"), "prefix", num_virtual_tokens=2, projection=4)
    third = petl.wrap(T.build("gpt2", "causal-lm"), "prefix", num_virtual_tokens=P)
    copied = copy.deepcopy(first)
    _randomise_prefix(copied, seed=3)
    T.logits(second, batch), T.logits(third, T.inputs("gpt2", "causal-lm")), T.logits(copied, batch)
    torch.testing.assert_close(T.logits(first, batch), alone, atol=0, rtol=0)
    assert not torch.allclose(T.logits(copied, batch), alone), "a copy carries its own prefix"
    petl.unwrap(second)
    torch.testing.assert_close(T.logits(first, batch), alone, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_init_from_token_ids_reproduces_the_tokens_as_context(arch: str) -> None:
    # The flat prefix starts as the keys/values the model computes for the tokens, so with the
    # real tokens placed after them (positions P..) the model behaves as if they were its context.
    context = (5, 9, 17)
    model = T.build(arch, "causal-lm")
    ids = T.inputs(arch, "causal-lm")["input_ids"][:1]
    with torch.no_grad():
        expected = model(input_ids=torch.cat([torch.tensor([context]), ids], dim=1)).logits[:, len(context) :]
    petl.wrap(model, "prefix", num_virtual_tokens=len(context), init_token_ids=context)
    positions = torch.arange(ids.shape[1]).unsqueeze(0) + len(context)
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=positions).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_init_from_token_ids_projected_and_repeated() -> None:
    model = T.build("bert", "seq-cls")
    petl.wrap(model, "prefix", num_virtual_tokens=5, projection=8, init_token_ids=[7, 8])
    table = model.get_input_embeddings().weight
    assert torch.equal(_prefix(model).embedding.weight, table[[7, 8, 7, 8, 7]])


@pytest.mark.parametrize(
    "options,match",
    [
        ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer, got 0"),
        ({"num_virtual_tokens": -2}, "num_virtual_tokens must be a positive integer"),
        ({"num_virtual_tokens": True}, "num_virtual_tokens must be a positive integer"),
        ({"projection": 0}, "projection must be a positive integer"),
        ({"projection": -8}, "projection must be a positive integer"),
        ({"num_virtual_token": 4}, "Did you mean 'num_virtual_tokens'"),
        ({"projecton": 4}, "Did you mean 'projection'"),
        ({"init_token_ids": "hello"}, "Tokenize the text first"),
        ({"init_token_ids": []}, "must not be empty"),
        ({"init_token_ids": [3, -1]}, "non-negative integers"),
        ({"init_token_ids": [3, 10_000]}, "outside this model's vocabulary of 128 tokens"),
    ],
)
def test_bad_options_raise_and_leave_the_model_untouched(options: dict, match: str) -> None:
    model = T.build("llama", "causal-lm")
    batch = T.inputs("llama", "causal-lm")
    before, impls = T.logits(model, batch), _attention_impls(model)
    with pytest.raises(ConfigError, match=match):
        petl.wrap(model, "prefix", **options)
    assert not is_wrapped(model) and not hasattr(model, "petl_prefix")
    assert _attention_impls(model) == impls
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(T.logits(model, batch), before, atol=0, rtol=0)


def test_config_round_trips_through_a_dict() -> None:
    config = PrefixConfig(num_virtual_tokens=4, projection=16, init_token_ids=[1, 2])
    assert config.init_token_ids == (1, 2)
    assert PrefixConfig.from_dict(config.to_dict()) == config


def test_unsupported_models_raise_and_stay_untouched() -> None:
    with pytest.raises(UnsupportedModelError, match="no transformers config"):
        petl.wrap(nn.Sequential(nn.Linear(4, 4)), "prefix")
    model = T.build("llama", "causal-lm")
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        config._attn_implementation_internal = "flex_attention"  # an implementation petl does not wrap
    with pytest.raises(UnsupportedModelError, match="attn_implementation='sdpa'"):
        petl.wrap(model, "prefix")
    assert not is_wrapped(model) and set(_attention_impls(model)) == {"flex_attention"}


def test_wrapping_a_model_that_already_has_the_attribute_fails_cleanly() -> None:
    model = T.build("gpt2", "causal-lm")
    model.petl_prefix = nn.Linear(1, 1)
    with pytest.raises(PetlError, match="already has a `petl_prefix` attribute"):
        petl.wrap(model, "prefix")
    assert isinstance(model.petl_prefix, nn.Linear) and _attention_impls(model) == ["eager"] * len(
        _attention_impls(model)
    )
