"""Prompt tuning and p-tuning: parity with peft, the user's shapes kept, cached generation,
switching off, and bad input."""

from __future__ import annotations

import pytest
import tiny_models as T
import torch
from peft import PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model
from torch import nn

import petl
from petl.core.wrapping import is_wrapped
from petl.errors import ConfigError, NotMergeableError, PetlError, UnsupportedModelError

P = 3


def _peft_twin(arch: str, head: str, strategy: str, model: nn.Module) -> nn.Module:
    """peft's prompt-tuned copy of ``model``'s base, holding petl's trained prompt."""
    task = {"causal-lm": TaskType.CAUSAL_LM, "seq-cls": TaskType.SEQ_CLS, "token-cls": TaskType.TOKEN_CLS}[head]
    base = T.build(arch, head)
    if strategy == "prompt":
        twin = get_peft_model(base, PromptTuningConfig(task_type=task, num_virtual_tokens=P))
        theirs = {"embedding.weight": model.petl_prompt.embedding.weight}
    else:
        twin = get_peft_model(base, PromptEncoderConfig(task_type=task, num_virtual_tokens=P,
                                                        encoder_hidden_size=16))
        theirs = {"embedding.weight": model.petl_prompt.embedding.weight,
                  **{f"mlp_head.{k}": v for k, v in model.petl_prompt.mlp.state_dict().items()}}
    twin.prompt_encoder["default"].load_state_dict(theirs)
    return twin.eval()


@pytest.mark.parametrize("strategy", ["prompt", "p_tuning"])
@pytest.mark.parametrize("arch,head", [("bert", "seq-cls"), ("llama", "causal-lm"), ("gpt2", "seq-cls")])
def test_outputs_equal_peft_with_the_same_prompt(strategy: str, arch: str, head: str) -> None:
    model = T.build(arch, head)
    options = {"num_virtual_tokens": P} | ({"encoder_hidden_size": 16} if strategy == "p_tuning" else {})
    petl.wrap(model, strategy, **options)
    T.perturb_trainable(model.petl_prompt)  # the head stays as built: both copies have the same
    batch = T.inputs(arch, head)
    twin = _peft_twin(arch, head, strategy, model)
    with torch.no_grad():
        ours, theirs = model(**batch), twin(**batch)
    if head == "causal-lm":  # peft keeps the prompt's positions in its logits; petl gives the user's back
        assert ours.logits.shape[:2] == batch["input_ids"].shape
        torch.testing.assert_close(ours.logits, theirs.logits[:, P:], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,head", [("bert", "token-cls"), ("bert", "qa"), ("qwen2", "token-cls"),
                                       ("llama", "causal-lm")])
def test_outputs_keep_the_users_shapes_and_the_loss_is_on_their_tokens(arch: str, head: str) -> None:
    model = T.build(arch, head)
    batch = T.inputs(arch, head)
    with torch.no_grad():
        base = model(**batch, output_hidden_states=True)
    petl.wrap(model, "prompt", num_virtual_tokens=P)
    T.perturb_trainable(model.petl_prompt)  # not the head: petl.disabled below computes with the base's
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        # the same computation by hand: the prompt's embeddings in front, a wider mask, labels and positions moved
        table = model.get_input_embeddings()
        embeds = torch.cat([model.petl_prompt.embedding.weight.expand(2, -1, -1), table(batch["input_ids"])], 1)
        feed = {"inputs_embeds": embeds,
                "attention_mask": torch.cat([torch.ones(2, P, dtype=torch.long), batch["attention_mask"]], 1)}
        if "labels" in batch:
            feed["labels"] = torch.cat([torch.full((2, P), -100), batch["labels"]], 1)
        for key in ("start_positions", "end_positions"):
            if key in batch:
                feed[key] = batch[key] + P
        with petl.disabled(model):
            by_hand = model(**feed)
    names = ("start_logits", "end_logits") if head == "qa" else ("logits",)
    for name in names:
        assert getattr(out, name).shape == getattr(base, name).shape
        torch.testing.assert_close(getattr(out, name), getattr(by_hand, name)[:, P:], atol=1e-6, rtol=0)
    assert [h.shape for h in out.hidden_states] == [h.shape for h in base.hidden_states]
    torch.testing.assert_close(out.loss, by_hand.loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_generation_equals_uncached_and_a_plain_greedy_loop(arch: str) -> None:
    model = T.build(arch, "causal-lm")
    petl.wrap(model, "prompt", num_virtual_tokens=P, init="normal")  # far from any token: a strong prompt
    ids = T.inputs(arch, "causal-lm")["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: generate derives positions from the mask
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "output_scores": True,
              "return_dict_in_generate": True, "attention_mask": mask}
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        loop = ids[:1]
        steps = []
        for _ in range(5):  # row 0 by full forward passes each time: what the cache must reproduce
            steps.append(model(loop).logits[:, -1])
            loop = torch.cat([loop, steps[-1].argmax(-1, keepdim=True)], 1)
        prompted = model(ids[:1]).logits
        with petl.disabled(model):
            plain = model(ids[:1]).logits
    assert torch.equal(cached.sequences, uncached.sequences) and torch.equal(cached.sequences[:1], loop)
    for with_cache, without, by_hand in zip(cached.scores, uncached.scores, steps, strict=True):
        torch.testing.assert_close(with_cache, without, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(with_cache[:1], by_hand, atol=1e-5, rtol=1e-5)
    assert (prompted - plain).abs().max() > 1e-2, "the prompt changes nothing here: the test could not tell"


def test_disabled_and_unwrapped_models_compute_the_base_outputs() -> None:
    model = T.build("bert", "token-cls")
    batch = T.inputs("bert", "token-cls")
    base = T.logits(model, batch)
    petl.wrap(model, "p_tuning", num_virtual_tokens=P, encoder_hidden_size=8)
    assert not torch.equal(T.logits(model, batch), base)
    with petl.disabled(model):
        torch.testing.assert_close(T.logits(model, batch), base, atol=0, rtol=0)
    with pytest.raises(NotMergeableError, match="virtual tokens"):
        petl.merge(model)
    base_model = petl.unwrap(model)
    assert not hasattr(base_model, "petl_prompt")
    assert not base_model._forward_pre_hooks and not base_model._forward_hooks
    assert not base_model.get_input_embeddings()._forward_hooks
    torch.testing.assert_close(T.logits(base_model, batch), base, atol=0, rtol=0)


def test_the_start_is_real_token_embeddings() -> None:
    model = T.build("llama", "causal-lm")
    table = model.get_input_embeddings().weight.detach().clone()
    petl.wrap(model, "prompt", num_virtual_tokens=5, init_token_ids=[7, 9])
    torch.testing.assert_close(model.petl_prompt.embedding.weight, table[[7, 9, 7, 9, 7]], atol=0, rtol=0)
    other = T.build("llama", "causal-lm")
    petl.wrap(other, "prompt", num_virtual_tokens=5)  # init="vocab": rows of the table, no special token
    rows = other.petl_prompt.embedding.weight
    matches = [int((table == row).all(1).nonzero()[0]) for row in rows]
    assert len(set(matches)) == 5 and not set(matches) & {other.config.pad_token_id, other.config.bos_token_id,
                                                          other.config.eos_token_id}


def test_bad_input_is_refused_and_leaves_the_model_as_it_was() -> None:
    model = T.build("bert", "seq-cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="outside this model's vocabulary"):
        petl.wrap(model, "prompt", init_token_ids=[T.VOCAB + 5])
    with pytest.raises(ConfigError, match="list of token ids"):
        petl.wrap(model, "prompt", init_token_ids="Classify")
    with pytest.raises(ConfigError, match="encoder_hidden_size"):
        petl.wrap(model, "p_tuning", encoder_hidden_size=None)
    assert not is_wrapped(model) and not model._forward_pre_hooks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        petl.wrap(T.build("t5", "seq2seq-lm"), "prompt")
    # too long for the model's positions with the prompt: a clear error at the call, not an index error inside
    petl.wrap(model, "prompt", num_virtual_tokens=P)
    limit = model.config.max_position_embeddings
    with pytest.raises(PetlError, match=f"Truncate the inputs to {limit - P} tokens"):
        model(input_ids=torch.full((1, limit), 5))


@pytest.mark.parametrize("method", ["prompt", "p_tuning"])
@pytest.mark.parametrize("arch,head", [("bert", "seq-cls"), ("llama", "causal-lm")])
def test_a_folder_saved_by_peft_loads_with_its_outputs(method: str, arch: str, head: str, tmp_path) -> None:
    task = TaskType.SEQ_CLS if head == "seq-cls" else TaskType.CAUSAL_LM
    config = (PromptTuningConfig(task_type=task, num_virtual_tokens=P) if method == "prompt" else
              PromptEncoderConfig(task_type=task, num_virtual_tokens=P, encoder_hidden_size=16))
    theirs = get_peft_model(T.build(arch, head), config)
    T.perturb_trainable(theirs, scale=0.5)  # the prompt (or its MLP) and peft's copy of the head
    theirs.save_pretrained(tmp_path)
    theirs.eval()
    batch = T.inputs(arch, head)
    model = T.build(arch, head)
    petl.load(model, tmp_path)
    with torch.no_grad():
        expected, ours = theirs(**batch), model(**batch)
    assert model.petl_prompt.mlp is None  # peft saved the prompt itself, which loads as prompt tuning
    got = ours.logits if head == "seq-cls" else torch.cat([expected.logits[:, :P], ours.logits], 1)
    torch.testing.assert_close(got, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, expected.loss, atol=1e-5, rtol=1e-5)
