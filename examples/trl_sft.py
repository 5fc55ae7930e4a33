"""SmolLM2-135M-Instruct fine-tuned with petl's LoRA inside TRL's SFTTrainer, saved by the
Trainer, and reloaded in peft and in petl with identical outputs.

petl wraps the model; TRL trains it as it trains any model. One line,
``petl.attach(trainer)``, runs the strategy's training hooks (needed by AdaLoRA, harmless
for LoRA) and lets the Trainer resume from petl's checkpoints. ``trainer.save_model``
writes the adapter folder, in peft's format for LoRA, not the whole model.

The task: answer the sentiment of a review with one word, on petl's generated data;
TRL puts the loss on the completion only.

    python examples/trl_sft.py           # a few minutes on 2 CPU cores
    python examples/trl_sft.py --quick   # under a minute (converting the model once takes longer)
"""

from __future__ import annotations

from pathlib import Path

import datasets
import peft
import torch
import trl
from _common import parse_args
from transformers import AutoModelForCausalLM, AutoTokenizer

import petl
from petl.bench.synthetic import make_splits, to_prompt_completion
from petl.modeling.demo import smollm2_safetensors_path

PROMPTS = ["Review: a warm, funny and honest film\nSentiment:", "Review: not good at all, a dull mess\nSentiment:"]


def base_model() -> torch.nn.Module:
    # The GGUF file is converted to a safetensors folder once (cached), which also gives peft a base path.
    return AutoModelForCausalLM.from_pretrained(smollm2_safetensors_path(), dtype=torch.float32).eval()


def answers(model: torch.nn.Module, tokenizer, prompts: list[str]) -> list[str]:
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(generated[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def main() -> None:
    args = parse_args(__doc__)
    output = Path(args.output) / "trl-sft-lora"
    tokenizer = AutoTokenizer.from_pretrained(smollm2_safetensors_path())
    train, _ = make_splits(16 if args.quick else 400, 8, seed=0)
    data = datasets.Dataset.from_list([to_prompt_completion(example) for example in train])

    model = petl.wrap(base_model(), "lora", r=8)
    print("before:", answers(model, tokenizer, PROMPTS))
    config = trl.SFTConfig(
        output_dir=str(output / "run"), max_steps=2 if args.quick else 50, per_device_train_batch_size=8,
        learning_rate=1e-3, lr_scheduler_type="constant", save_strategy="no", logging_steps=10, report_to=[],
        use_cpu=True, bf16=False, disable_tqdm=args.quick, max_length=64,
    )
    trainer = petl.attach(trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer))
    trainer.train()
    trainer.save_model(str(output / "adapter"))  # the adapter folder, not the whole model
    model.eval()
    print("after: ", answers(model, tokenizer, PROMPTS))
    print("saved:", sorted(p.name for p in (output / "adapter").iterdir()))

    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits
        in_peft = peft.PeftModel.from_pretrained(base_model(), output / "adapter").eval()
        print("peft reload:", "identical outputs" if torch.equal(in_peft(**ids).logits, expected) else "DIFFERENT")
        del in_peft
        in_petl = petl.load(base_model(), output / "adapter")
        print("petl reload:", "identical outputs" if torch.equal(in_petl(**ids).logits, expected) else "DIFFERENT")


if __name__ == "__main__":
    main()
