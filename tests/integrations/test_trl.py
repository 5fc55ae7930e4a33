"""A wrapped model inside ``trl.SFTTrainer``: every strategy trains its adapter, the Trainer's
save writes the adapter folder, and it reloads exactly in petl (and in peft for LoRA)."""

from __future__ import annotations

from pathlib import Path

import datasets
import peft
import pytest
import tiny_models
import torch
import transformers as tf

import petl
from petl.core.io import adapter_tensors
from petl.core.wrapping import state_of

trl = pytest.importorskip("trl", reason="trl is in the test extra: pip install -e '.[test]'")

STRATEGIES = sorted(petl.available())


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> tf.PreTrainedTokenizerBase:
    return tf.AutoTokenizer.from_pretrained(tiny_model_dir)


def _llama(tokenizer: tf.PreTrainedTokenizerBase) -> tf.PreTrainedModel:
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(config).eval()


def _data(n: int = 16) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"prompt": f"is {i} even or odd?", "completion": " even" if i % 2 == 0 else " odd"} for i in range(n)]
    )


def _options(strategy: str) -> dict:
    extra = {"adalora": {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1}}.get(strategy, {})
    return tiny_models.strategy_options(strategy, **extra)


def _config(out: Path, **options: object) -> trl.SFTConfig:
    return trl.SFTConfig(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="no", logging_strategy="no", eos_token="[SEP]", disable_tqdm=True,
        dataset_num_proc=None, bf16=False, **options,  # TRL's bf16 autocast would stay patched on model.forward
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sft_trainer_trains_saves_and_reloads_every_strategy(tmp_path: Path, tokenizer, strategy: str) -> None:
    model = petl.wrap(_llama(tokenizer), strategy, **_options(strategy))
    start = {key: value.detach().clone() for key, value in adapter_tensors(model).items()}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trainer = petl.attach(trl.SFTTrainer(model=model, args=_config(tmp_path / "run"), train_dataset=_data(),
                                         processing_class=tokenizer))
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))

    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert any(not torch.equal(value, start[key]) for key, value in adapter_tensors(model).items())
    assert not (tmp_path / "final" / "model.safetensors").exists()
    if strategy == "adalora":
        ranks = state_of(model).strategy.effective_ranks(model)
        assert sum(ranks.values()) < 4 * len(ranks), "the rank budget was never reallocated"

    model.eval()
    ids = tokenizer(["is 3 even or odd?"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits
        reloaded = petl.load(_llama(tokenizer), tmp_path / "final")
        assert torch.equal(reloaded(**ids).logits, expected)
        if strategy == "lora":
            in_peft = peft.PeftModel.from_pretrained(_llama(tokenizer), tmp_path / "final").eval()
            assert torch.equal(in_peft(**ids).logits, expected)


def test_sft_trainer_with_gradient_checkpointing_and_accumulation(tmp_path: Path, tokenizer) -> None:
    model = petl.wrap(_llama(tokenizer), "lora")
    start = {key: value.detach().clone() for key, value in adapter_tensors(model).items()}
    config = _config(tmp_path, gradient_checkpointing=True, gradient_accumulation_steps=2)
    petl.attach(trl.SFTTrainer(model=model, args=config, train_dataset=_data(), processing_class=tokenizer)).train()
    assert any(not torch.equal(value, start[key]) for key, value in adapter_tensors(model).items())
