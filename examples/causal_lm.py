"""A causal language model (SmolLM2-135M) tuned with prefix-tuning, and with LoRA on an 8-bit base.

The task: answer the sentiment of a review with one word, on petl's generated data.
The loss covers the completion only. The 8-bit run loads the base model's linear
layers as bitsandbytes int8 (on the CPU here) and trains LoRA in full precision on top.

    python examples/causal_lm.py           # several minutes on 2 CPU cores
    python examples/causal_lm.py --quick   # under a minute (loading the model takes most of it)
"""

from __future__ import annotations

import datasets
import torch
from _common import parse_args
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

import petl
from petl.bench.synthetic import make_splits, to_prompt_completion
from petl.modeling.demo import SMOLLM2_GGUF, smollm2_path, smollm2_safetensors_path


def prompt_data(train_size: int, eval_size: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    train, evaluation = make_splits(train_size, eval_size, seed=0)
    return tuple(datasets.Dataset.from_list([to_prompt_completion(e) for e in rows]) for rows in (train, evaluation))


def load(eight_bit: bool) -> torch.nn.Module:
    if not eight_bit:
        return AutoModelForCausalLM.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # transformers cannot quantize while reading GGUF: petl converts it to safetensors once, then loads that.
    return AutoModelForCausalLM.from_pretrained(
        smollm2_safetensors_path(), quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        dtype=torch.float32,
    )


def main() -> None:
    args = parse_args(__doc__)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF)
    train_data, eval_data = prompt_data(16 if args.quick else 400, 8 if args.quick else 100)
    # Starting the prefix from real words (the paper's initialisation) keeps the model sensible from step one.
    words = tokenizer("Is this review positive or negative?", add_special_tokens=False).input_ids
    runs = {
        "prefix (fp32 base)": (False, petl.PrefixConfig(num_virtual_tokens=10, init_token_ids=words), 5e-3),
        "lora (8-bit base)": (True, petl.LoraConfig(r=8), 1e-3),
    }
    for label, (eight_bit, strategy, learning_rate) in runs.items():
        model = petl.wrap(load(eight_bit), strategy)
        config = petl.TrainConfig(
            epochs=1, max_steps=2 if args.quick else None, batch_size=8, learning_rate=learning_rate,
            progress_bar=not args.quick,
        )
        result = petl.train(model, train_data, eval_data, tokenizer=tokenizer, task="causal-lm", config=config,
                            data_options={"max_length": 64})
        m = result.metrics
        print(f"{label:20s} {petl.count_parameters(model)}  eval loss {m['eval_loss']:.3f}  "
              f"perplexity {m['eval_perplexity']:.2f}")


if __name__ == "__main__":
    main()
