"""Median training-step time of petl's LoRA against raw peft LoRA and full fine-tuning,
on MiniLM-L6 (sequence classification) with the same batches.

Each variant is its own copy of the model with its own AdamW, stepped by petl's training
step (:class:`petl.training.step.StepRunner`: forward, backward, clipping, optimizer step,
zero_grad). peft's variant is ``peft.get_peft_model`` with the same LoRA config (query and
value, r=8, alpha 16), so both train the same parameters. Steps run round-robin with the
order rotating every round, so load from other processes hits every variant alike; the
first ``--warmup`` rounds are discarded. Wall-clock and process CPU time are recorded.

Targets (issue #16): petl's LoRA step within 2% of raw peft's, that is petl / peft at most
1.02 (the target is petl's overhead: a faster petl step meets it), and LoRA / full fine-tuning
at or below 0.72.

    python benchmarks/lora_step_time.py            # MiniLM-L6, batch 32 x 64, a few minutes
    python benchmarks/lora_step_time.py --quick    # a tiny BERT, seconds (for the test suite)

Writes ``benchmarks/results/lora_step_time.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import peft
import torch
import transformers
from torch import nn

import petl
from petl.bench.environment import collect_environment, environment_section, load_average
from petl.files import atomic_write_text
from petl.training import TrainConfig
from petl.training.step import StepRunner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = ("query", "value")


def load_model(quick: bool) -> tuple[nn.Module, str]:
    if quick:
        config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, vocab_size=1000, num_labels=2)
        torch.manual_seed(0)
        return transformers.AutoModelForSequenceClassification.from_config(config), "tiny BERT (hidden 64, 2 layers)"
    from petl.modeling.demo import minilm_path

    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    return model, "MiniLM-L6 (all-MiniLM-L6-v2), sequence classification, 2 labels"


def make_batches(vocab: int, count: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1000 if vocab > 2000 else 5, vocab, (batch_size, seq_len), generator=g),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,), generator=g)} for _ in range(count)]


def variants(base: nn.Module) -> dict[str, nn.Module]:
    peft_config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), modules_to_save=["classifier"])
    return {
        "full fine-tuning": copy.deepcopy(base),
        "petl lora": petl.wrap(copy.deepcopy(base), "lora", r=8, alpha=16, target_modules=list(TARGETS)),
        "peft lora": peft.get_peft_model(copy.deepcopy(base), peft_config),
    }


def step_function(model: nn.Module, total_steps: int) -> Callable[[dict[str, torch.Tensor]], tuple[float, float]]:
    model.train()
    runner = StepRunner(model, TrainConfig(learning_rate=1e-5), total_steps=total_steps)

    def step(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        runner(batch)
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    base, description = load_model(args.quick)
    models = variants(base)
    batches = make_batches(base.config.vocab_size, 4, args.batch_size, args.seq_len)
    total = args.warmup + args.steps
    steps = {name: step_function(model, total) for name, model in models.items()}
    names = list(steps)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    environment = collect_environment()  # its load average is the one at the start
    load_before = load_average()
    for round_ in range(total):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            wall, cpu = steps[name](batches[round_ % len(batches)])
            if round_ >= args.warmup:
                walls[name].append(wall)
                cpus[name].append(cpu)
    result: dict = {"setup": {"model": description, "batch_size": args.batch_size, "seq_len": args.seq_len,
                              "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
                              "target_modules": list(TARGETS), "r": 8},
                    "load_average_before": load_before, "load_average_after": load_average(), "variants": {}}
    for name in names:
        trainable = sum(p.numel() for p in models[name].parameters() if p.requires_grad)
        p25, p75 = _iqr(walls[name])
        result["variants"][name] = {"trainable": trainable, "median_s": statistics.median(walls[name]),
                                    "p25_s": p25, "p75_s": p75, "cpu_median_s": statistics.median(cpus[name])}
    v = result["variants"]
    for key, unit in (("median_s", ""), ("cpu_median_s", "cpu_")):
        result[f"{unit}petl_over_peft"] = v["petl lora"][key] / v["peft lora"][key]
        result[f"{unit}lora_over_full"] = v["petl lora"][key] / v["full fine-tuning"][key]
    # Paired by round: both steps ran back to back on the same batch, so slow drifts of the machine cancel.
    paired = [a / b for a, b in zip(walls["petl lora"], walls["peft lora"], strict=True)]
    result["paired_petl_over_peft"] = statistics.median(paired)
    result["paired_petl_over_peft_iqr"] = _iqr(paired)
    result["targets"] = {"petl_at_most_2pct_slower_than_peft": result["petl_over_peft"] <= 1.02,
                         "lora_at_most_0.72_of_full": result["lora_over_full"] <= 0.72}
    result["environment"] = environment
    environment["load_average_end"] = load_average()
    return result


def _iqr(values: list[float]) -> list[float]:
    """The first and third quartiles of ``values``."""
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def write_markdown(result: dict, path: Path) -> None:
    s = result["setup"]
    lines = [
        "# Training-step time: petl LoRA vs peft LoRA vs full fine-tuning",
        "",
        f"Model: {s['model']}. Batch {s['batch_size']} x {s['seq_len']} tokens, LoRA r={s['r']} on "
        f"{', '.join(s['target_modules'])} (plus the classifier), AdamW, fp32, {s['threads']} thread(s). "
        f"{s['warmup']} warm-up rounds, then {s['steps']} measured rounds, variants interleaved round-robin.",
        "",
        "| variant | trainable parameters | median wall (s) | wall p25-p75 (s) | median CPU (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        lines.append(f"| {name} | {r['trainable']:,} | {r['median_s']:.3f} | {r['p25_s']:.3f}-{r['p75_s']:.3f} | "
                     f"{r['cpu_median_s']:.3f} |")
    t = result["targets"]
    lines += [
        "",
        f"petl / peft: {result['petl_over_peft']:.3f} wall, {result['cpu_petl_over_peft']:.3f} CPU "
        f"(target at most 2% slower: {'met' if t['petl_at_most_2pct_slower_than_peft'] else 'MISSED'}). "
        f"LoRA / full fine-tuning: {result['lora_over_full']:.3f} wall, {result['cpu_lora_over_full']:.3f} CPU "
        f"(target at most 0.72: {'met' if t['lora_at_most_0.72_of_full'] else 'MISSED'}).",
        "",
        f"Paired by round (petl's step over peft's in the same round, same batch): median "
        f"{result['paired_petl_over_peft']:.3f}, interquartile range {result['paired_petl_over_peft_iqr'][0]:.3f}-"
        f"{result['paired_petl_over_peft_iqr'][1]:.3f}.",
        "",
        f"Load average before {result['load_average_before']}, after {result['load_average_after']} "
        "(the machine may be shared; interleaving spreads other load over all variants).",
        "",
        *environment_section(result["environment"]),
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny BERT and a few steps (seconds)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the results (default: benchmarks/results)")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.seq_len, args.warmup, args.steps = 4, 16, 1, 4
    result = measure(args)
    out = args.out or RESULTS
    if args.quick and args.out is None:
        print(json.dumps({k: result[k] for k in ("petl_over_peft", "lora_over_full")}))
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "lora_step_time.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result, out / "lora_step_time.md")
    print((out / "lora_step_time.md").read_text())


if __name__ == "__main__":
    main()
