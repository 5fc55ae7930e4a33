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
        loss = model(**batch).loss + strategy.regularization_loss(model)
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
    model = petl.wrap(T.build("bert", "seq-cls"), "adalora", init_r=4, target_r=2, total_step=10)
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
        (task + strategy.regularization_loss(ours)).backward()
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
