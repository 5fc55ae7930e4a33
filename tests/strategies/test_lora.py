"""LoRA and AdaLoRA on peft: the parameter formula, parity with peft, and bad input."""

from __future__ import annotations

import pytest
import tiny_models as T
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

import petl
from petl.core.wrapping import state_of
from petl.errors import ConfigError, TargetNotFoundError

LINEAR_TYPES = (nn.Linear,)


def _lora_formula(model: nn.Module, r: int) -> int:
    """r * (d_in + d_out) over every adapted layer, plus the trainable head copy."""
    total = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            base = module.get_base_layer()
            if isinstance(base, nn.Linear):
                d_in, d_out = base.in_features, base.out_features
            else:  # GPT-2's Conv1D stores weight as (d_in, d_out)
                d_in, d_out = base.weight.shape
            total += r * (d_in + d_out)
    heads = state_of(model).strategy.config.modules_to_save or ()
    for name in heads:
        total += sum(p.numel() for p in model.get_submodule(name).original_module.parameters())
    return total


@pytest.mark.parametrize("arch,head", T.CASES, ids=[f"{a}-{h}" for a, h in T.CASES])
@pytest.mark.parametrize("r", [1, 4])
def test_trainable_count_equals_formula(arch: str, head: str, r: int) -> None:
    model = petl.wrap(T.build(arch, head), "lora", r=r)
    expected = _lora_formula(model, r)
    assert expected > 0
    assert petl.count_parameters(model).trainable == expected


def test_minilm_sized_bert_matches_the_published_peft_count() -> None:
    # MiniLM-L6 shape: 6 layers, hidden 384; peft's LoRA r=8 on query/value trains 74,498 parameters.
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    model = petl.wrap(BertForSequenceClassification(config), "lora", r=8)
    count = petl.count_parameters(model)
    assert count.trainable == 6 * 2 * 8 * (384 + 384) + (384 * 2 + 2) == 74_498
    assert str(count) == f"74,498 / {count.total:,} ({100 * count.trainable / count.total:.2f}%)"


@pytest.mark.parametrize("arch,head", [("llama", "causal-lm"), ("bert", "seq-cls"), ("t5", "seq2seq-lm")])
def test_parity_with_peft_get_peft_model(arch: str, head: str, tmp_path) -> None:
    batch = T.inputs(arch, head)
    ours = petl.wrap(T.build(arch, head), "lora", r=4, alpha=8)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in ours.parameters():
            if param.requires_grad:
                param.normal_(0, 0.1)
    petl.save(ours, tmp_path)
    modules_to_save = list(state_of(ours).strategy.config.modules_to_save or []) or None
    theirs = get_peft_model(
        T.build(arch, head), PeftLoraConfig(r=4, lora_alpha=8, modules_to_save=modules_to_save)
    )
    assert theirs.get_nb_trainable_parameters()[0] == petl.count_parameters(ours).trainable
    loaded = PeftModel.from_pretrained(T.build(arch, head), tmp_path).eval()
    torch.testing.assert_close(T.logits(loaded, batch), T.logits(ours, batch), atol=1e-6, rtol=0)


def test_all_linear_and_explicit_targets() -> None:
    model = petl.wrap(T.build("llama", "causal-lm"), "lora", r=2, target_modules="all-linear")
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    model = petl.wrap(T.build("llama", "causal-lm"), petl.LoraConfig(r=2, target_modules=["o_proj"]))
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"o_proj"}


def test_name_and_config_forms_build_the_same_adapter() -> None:
    a = petl.wrap(T.build("bert", "seq-cls"), "lora", r=4, alpha=8, dropout=0.1)
    b = petl.wrap(T.build("bert", "seq-cls"), petl.LoraConfig(r=4, alpha=8, dropout=0.1))
    assert state_of(a).strategy.config == state_of(b).strategy.config
    assert petl.count_parameters(a) == petl.count_parameters(b)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"r": 0}, "r must be a positive integer"),
        ({"r": 2.5}, "r must be a positive integer"),
        ({"alpha": -1}, "alpha must be a positive number"),
        ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
        ({"bias": "some"}, "bias must be"),
        ({"alhpa": 4}, "Did you mean 'alpha'"),
        ({"target_modules": []}, "must not be empty"),
    ],
)
def test_bad_options_are_config_errors(options: dict, match: str) -> None:
    model = T.build("bert", "seq-cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        petl.wrap(model, "lora", **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_targets_matching_nothing_show_real_module_names() -> None:
    model = T.build("llama", "causal-lm")
    classes = [type(m) for m in model.modules()]
    with pytest.raises(TargetNotFoundError) as info:
        petl.wrap(model, "lora", target_modules=["query", "value"])
    message = str(info.value)
    assert "q_proj" in message and "v_proj" in message and "all-linear" in message
    assert [type(m) for m in model.modules()] == classes
    assert not hasattr(model, "peft_config")
    assert all(p.requires_grad for p in model.parameters())


def test_modules_to_save_must_exist() -> None:
    with pytest.raises(TargetNotFoundError, match="classifer"):
        petl.wrap(T.build("bert", "seq-cls"), "lora", modules_to_save=["classifer"])


def test_head_can_be_left_frozen() -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=2, modules_to_save=[])
    assert not any("classifier" in n for n, p in model.named_parameters() if p.requires_grad)


def test_a_peft_model_is_refused() -> None:
    peft_model = get_peft_model(T.build("bert", "seq-cls"), PeftLoraConfig(r=2))
    with pytest.raises(petl.PetlError, match="already carries peft adapters"):
        petl.wrap(peft_model.base_model.model, "lora")


def _train_adalora(model: nn.Module, batch: dict, steps: int) -> None:
    strategy = state_of(model).strategy
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    strategy.on_train_begin(model, steps)
    model.train()
    for step in range(1, steps + 1):
        penalty = strategy.regularization_loss(model)  # None: no orthogonality penalty (the default)
        loss = model(**batch).loss + (0 if penalty is None else penalty)
        loss.backward()
        optimizer.step()
        strategy.on_step_end(model, step)
        optimizer.zero_grad()
    model.eval()


def test_adalora_reallocates_its_rank_budget() -> None:
    batch = T.inputs("bert", "seq-cls")
    model = petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=6, target_r=2, tinit=2, tfinal=2)
    strategy = state_of(model).strategy
    assert set(strategy.effective_ranks(model).values()) == {6}
    _train_adalora(model, batch, steps=12)
    ranks = strategy.effective_ranks(model)
    assert sum(ranks.values()) == 2 * len(ranks), "the budget must shrink to target_r per layer on average"
    assert min(ranks.values()) < 6, "some triplets must have been pruned"


def test_adalora_regulariser_is_zero_for_orthonormal_factors() -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=4, target_r=2, total_step=10,
                      orth_reg_weight=0.5)  # the penalty is off by default
    strategy = state_of(model).strategy
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name:
                param.copy_(torch.linalg.qr(torch.randn(param.shape[1], param.shape[0]))[0].T)
            elif ".lora_B." in name:
                param.copy_(torch.linalg.qr(torch.randn(param.shape[0], param.shape[1]))[0])
    assert strategy.regularization_loss(model).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if ".lora_A." in n).mul_(2)
    assert strategy.regularization_loss(model).item() > 0.1


def test_adalora_needs_a_schedule() -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=4, target_r=2)
    with pytest.raises(ConfigError, match="total_step"):
        state_of(model).strategy.on_step_end(model, 1)
    with pytest.raises(ConfigError, match="tinit"):
        petl.wrap(T.build("bert", "seq-cls"), "adalora", total_step=10, tinit=8, tfinal=2)
    with pytest.raises(ConfigError, match="target_r"):
        petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=4, target_r=8)


def test_adalora_pruned_triplets_are_zero_and_saved_adapter_reloads(tmp_path) -> None:
    batch = T.inputs("bert", "seq-cls")
    model = petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=6, target_r=2, tinit=2, tfinal=2)
    _train_adalora(model, batch, steps=12)
    ranks = state_of(model).strategy.effective_ranks(model)
    for name, rank in ranks.items():
        assert int((model.get_submodule(name).lora_E["default"] != 0).sum()) <= rank
    petl.save(model, tmp_path)
    for reloaded in (petl.load(T.build("bert", "seq-cls"), tmp_path),
                     PeftModel.from_pretrained(T.build("bert", "seq-cls"), tmp_path).eval()):
        torch.testing.assert_close(T.logits(reloaded, batch), T.logits(model, batch), atol=1e-6, rtol=0)


def test_adalora_trains_step_for_step_like_peft() -> None:
    """Same start, same batches: petl's task losses follow peft's AdaLoRA, budget allocation included."""
    from peft import AdaLoraConfig as PeftAdaLoraConfig

    batch = T.inputs("bert", "seq-cls", batch=4)
    schedule = {"init_r": 6, "target_r": 2, "total_step": 8, "tinit": 1, "tfinal": 1}
    ours = petl.wrap(T.build("bert", "seq-cls"), "adalora", **schedule)
    theirs = get_peft_model(T.build("bert", "seq-cls"), PeftAdaLoraConfig(
        **schedule, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    start = {k.removeprefix("base_model.model."): v for k, v in theirs.state_dict().items()}
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.requires_grad:
                param.copy_(start[name])
    for model in (ours, theirs):
        model.train()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    strategy = state_of(ours).strategy
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 9):
        task = ours(**batch).loss
        penalty = strategy.regularization_loss(ours)
        (task + (0 if penalty is None else penalty)).backward()
        opt_ours.step()
        strategy.on_step_end(ours, step)
        opt_ours.zero_grad()
        reference = theirs(**batch).loss  # peft's classification path adds no orthogonality term
        reference.backward()
        opt_theirs.step()
        theirs.base_model.update_and_allocate(step)
        opt_theirs.zero_grad()
        assert task.item() == pytest.approx(reference.item(), abs=1e-3), f"step {step}"
    ranks = strategy.effective_ranks(ours)
    assert sum(ranks.values()) == 2 * len(ranks)


# -- LoRA's variants as options: DoRA, init (PiSSA, OLoRA, ...), rank/alpha patterns, layers_to_transform ----


def _randomise_adapter(model: nn.Module, seed: int = 5) -> nn.Module:
    return T.perturb_trainable(model, seed)


def test_dora_is_the_identity_at_init_and_saves_and_loads_exactly(tmp_path) -> None:
    batch = T.inputs("llama", "causal-lm")
    base = T.logits(T.build("llama", "causal-lm"), batch)
    model = petl.wrap(T.build("llama", "causal-lm"), "lora", r=2, use_dora=True)
    # DoRA's magnitude starts at ||W0|| per output: m * W0 / ||W0|| = W0, up to rounding.
    torch.testing.assert_close(T.logits(model, batch), base, atol=1e-5, rtol=0)
    magnitudes = [n for n, _ in model.named_parameters() if "lora_magnitude_vector" in n]
    assert len(magnitudes) == 4  # q_proj and v_proj of 2 layers
    _randomise_adapter(model)
    trained = T.logits(model, batch)
    petl.save(model, tmp_path)
    assert torch.equal(T.logits(petl.load(T.build("llama", "causal-lm"), tmp_path), batch), trained)
    assert torch.equal(T.logits(PeftModel.from_pretrained(T.build("llama", "causal-lm"), tmp_path), batch), trained)
    with torch.no_grad(), state_of(model).strategy.merged_for_inference(model) as merged:
        assert not merged  # a variant layer: runs unmerged (see peft_merge)
    torch.testing.assert_close(T.logits(petl.merge(model), batch), trained, atol=1e-5, rtol=1e-5)


def test_pissa_moves_the_principal_part_out_of_the_base_weight_and_round_trips(tmp_path) -> None:
    batch = T.inputs("llama", "causal-lm")
    reference = T.build("llama", "causal-lm")
    w0 = reference.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = petl.wrap(T.build("llama", "causal-lm"), "lora", r=2, alpha=2, init="pissa")
    layer = model.model.layers[0].self_attn.q_proj
    # peft's PiSSA: A = sqrt(S_r) V_r^T, B = U_r sqrt(S_r), W_res = W0 - B A (scale alpha / r = 1).
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    principal = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    torch.testing.assert_close(layer.base_layer.weight, w0 - principal, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.lora_B["default"].weight @ layer.lora_A["default"].weight, principal,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(T.logits(model, batch), T.logits(reference, batch), atol=1e-5, rtol=0)
    _randomise_adapter(model)
    trained = T.logits(model, batch)
    petl.save(model, tmp_path)
    assert torch.equal(T.logits(petl.load(T.build("llama", "causal-lm"), tmp_path), batch), trained)
    peft_loaded = PeftModel.from_pretrained(T.build("llama", "causal-lm"), tmp_path)  # runs PiSSA again too
    assert torch.equal(T.logits(peft_loaded, batch), trained)
    base = petl.unwrap(model)
    assert torch.equal(base.model.layers[0].self_attn.q_proj.weight, w0)
    restored, original = base.state_dict(), reference.state_dict()
    assert list(restored) == list(original) and all(torch.equal(restored[k], original[k]) for k in original)


@pytest.mark.parametrize("arch,head", [("llama", "causal-lm"), ("bert", "seq-cls")])
def test_olora_moves_the_qr_part_out_of_the_base_weight_and_unwrap_restores_it(arch: str, head: str,
                                                                              tmp_path) -> None:
    # peft's olora_init subtracts B0 A0 from a float32 W0 in place: petl keeps a copy for unwrap.
    batch = T.inputs(arch, head)
    reference = T.build(arch, head)
    model = petl.wrap(T.build(arch, head), "lora", r=2, alpha=2, init="olora")
    layers = [(name, m) for name, m in model.named_modules() if hasattr(m, "lora_A")]
    assert layers
    for name, layer in layers:
        w0 = reference.get_submodule(name.removeprefix("base_model.model.")).weight.detach()
        q, r = torch.linalg.qr(w0)  # OLoRA: B = Q_r, A = R_r, W_res = W0 - B A (scale alpha / r = 1)
        torch.testing.assert_close(layer.lora_B["default"].weight, q[:, :2], atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.base_layer.weight, w0 - q[:, :2] @ r[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(T.logits(model, batch), T.logits(reference, batch), atol=1e-5, rtol=0)
    _randomise_adapter(model)
    trained = T.logits(model, batch)
    petl.save(model, tmp_path)
    torch.testing.assert_close(T.logits(petl.load(T.build(arch, head), tmp_path), batch), trained, atol=1e-6, rtol=0)
    base = petl.unwrap(model)
    restored, original = base.state_dict(), reference.state_dict()
    assert list(restored) == list(original) and all(torch.equal(restored[k], original[k]) for k in original)


def test_rank_and_alpha_patterns_give_the_layers_their_own_shapes_and_scales() -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=2, alpha=4, rank_pattern={"value": 6},
                      alpha_pattern={"value": 3.0})
    attention = model.bert.encoder.layer[1].attention.self
    assert attention.query.lora_A["default"].weight.shape == (2, 32)
    assert attention.value.lora_A["default"].weight.shape == (6, 32)
    assert attention.value.lora_B["default"].weight.shape == (32, 6)
    assert attention.query.scaling["default"] == 4 / 2 and attention.value.scaling["default"] == 3.0 / 6
    assert petl.count_parameters(model).trainable == 2 * (2 * 64 + 6 * 64) + (32 * 3 + 3)


def test_layers_to_transform_adapts_only_those_layers() -> None:
    model = petl.wrap(T.build("llama", "causal-lm"), "lora", r=2, layers_to_transform=[1])
    adapted = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert adapted == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


@pytest.mark.parametrize(("init", "match"), [
    ("eva", "init='eva' cannot be used: it needs activations from a data pass"),
    ("corda", "init='corda' cannot be used: it needs covariance statistics"),
    ("loftq", "init='loftq' cannot be used: it quantizes the base weights"),
    ("pisa", "not an initialisation peft knows.*Did you mean 'pissa'"),
    ("pissa_niter_x", "not an integer"),
])
def test_inits_whose_requirements_are_not_met_are_refused(init: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        petl.LoraConfig(init=init)


def test_pissa_niter_and_gaussian_are_accepted() -> None:
    assert petl.LoraConfig(init="pissa_niter_4").init == "pissa_niter_4"
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", init="gaussian")
    batch = T.inputs("bert", "seq-cls")
    assert torch.equal(T.logits(model, batch), T.logits(petl.unwrap(model), batch))  # B = 0 still


def test_variant_options_are_lora_only() -> None:
    with pytest.raises(ConfigError, match="use_dora are options of the 'lora' strategy only"):
        petl.wrap(T.build("bert", "seq-cls"), "adalora", use_dora=True)


def test_a_peft_dora_folder_with_a_rank_pattern_loads_with_petl(tmp_path) -> None:
    batch = T.inputs("bert", "seq-cls")
    theirs = get_peft_model(T.build("bert", "seq-cls"), PeftLoraConfig(
        r=2, use_dora=True, rank_pattern={"value": 4}, task_type="SEQ_CLS"))
    _randomise_adapter(theirs).eval()
    theirs.save_pretrained(tmp_path)
    loaded = petl.load(T.build("bert", "seq-cls"), tmp_path)
    config = state_of(loaded).strategy.config
    assert config.use_dora and config.rank_pattern == {"value": 4}
    assert torch.equal(T.logits(loaded, batch), T.logits(theirs, batch))
