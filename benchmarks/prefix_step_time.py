"""Median training-step time of petl's prefix-tuning against full fine-tuning and peft's
prefix-tuning, on the same decoder model and the same batches.

Each variant is its own copy of the model with its own AdamW. Steps run round-robin
(one step of each variant per round, the order rotating every round), so load from
other processes on a shared machine hits every variant alike; the first
``--warmup`` rounds are discarded. A step is petl's training step
(:class:`petl.training.step.StepRunner`): forward, backward, gradient clipping,
optimizer step and zero_grad. Both prefix variants use the flat form (peft's default) with the same
number of virtual tokens, so they train the same number of parameters; with
``--projection N`` a projected pair (MLP hidden size N) is measured as well.

Both wall-clock and process CPU time are recorded. torch runs one thread by default:
on a small shared machine two threads wait on each other whenever another process
takes a core, which inflates wall times unevenly; ``--threads`` changes it.

    python benchmarks/prefix_step_time.py                      # SmolLM2-135M (GGUF, fp32)
    python benchmarks/prefix_step_time.py --model llama-tiny   # a small Llama config, no download

Writes ``benchmarks/results/prefix_step_time.json`` and ``.md``.
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


def load_model(name: str) -> tuple[nn.Module, str]:
    """The base model in fp32 with sdpa attention, and a description of it."""
    if name == "smollm2":
        from petl.modeling.demo import SMOLLM2_GGUF, smollm2_path

        model = transformers.AutoModelForCausalLM.from_pretrained(
            smollm2_path(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32, attn_implementation="sdpa"
        )
        return model, f"SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, dequantised to fp32)"
    config = transformers.LlamaConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model, "random Llama: 8 layers, hidden 256, 8 heads / 2 KV heads, vocab 8192"


def make_batches(vocab: int, count: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Random token batches, right-padded to different lengths so that masks matter."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(10, vocab, (batch_size, seq_len), generator=g)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=g)
        lengths[0] = seq_len
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return batches


def variants(base: nn.Module, num_virtual_tokens: int, projection: int | None) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {"full fine-tuning": copy.deepcopy(base)}
    forms: list[int | None] = [None] + ([projection] if projection else [])
    for form in forms:
        suffix = "" if form is None else f", projection {form}"
        out[f"petl prefix{suffix}"] = petl.wrap(
            copy.deepcopy(base), "prefix", num_virtual_tokens=num_virtual_tokens, projection=form
        )
        config = peft.PrefixTuningConfig(
            num_virtual_tokens=num_virtual_tokens,
            task_type="CAUSAL_LM",
            prefix_projection=form is not None,
            encoder_hidden_size=form,
        )
        out[f"peft prefix{suffix}"] = peft.get_peft_model(copy.deepcopy(base), config)
    return out


def step_function(model: nn.Module, total_steps: int) -> Callable[[dict[str, torch.Tensor]], tuple[float, float]]:
    """Wall-clock and process CPU seconds of one optimizer step as petl.train takes it (petl.training.step);
    peft's model trains its own prefix parameters through the same step."""
    model.train()
    runner = StepRunner(model, TrainConfig(learning_rate=1e-5), total_steps=total_steps)

    def step(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        runner({**batch, "use_cache": False})
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


def write_markdown(result: dict, path: Path) -> None:
    s = result["setup"]
    lines = [
        "# Training-step time: petl prefix-tuning vs peft prefix-tuning vs full fine-tuning",
        "",
        f"Model: {s['model']}. Batch {s['batch_size']} x {s['seq_len']} tokens (right-padded rows), "
        f"{s['num_virtual_tokens']} virtual tokens, sdpa attention, AdamW, fp32. "
        f"{s['warmup']} warm-up rounds, then {s['steps']} measured rounds, variants interleaved round-robin.",
        "",
        "| variant | trainable parameters | median wall (s) | wall p25-p75 (s) | median CPU (s) "
        "| petl / peft, wall | petl / peft, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        wall, cpu = r.get("ratio_to_peft"), r.get("cpu_ratio_to_peft")
        lines.append(
            f"| {name} | {r['trainable']:,} | {r['median_s']:.3f} | {r['p25_s']:.3f}-{r['p75_s']:.3f} | "
            f"{r['cpu_median_s']:.3f} | {'' if wall is None else f'{wall:.3f}'} | "
            f"{'' if cpu is None else f'{cpu:.3f}'} |"
        )
    e = result["environment"]
    if s["projection"]:
        lines += [
            "",
            "The projected pairs differ in size on grouped-query models: peft embeds the virtual tokens in "
            "kv_heads x head_dim dimensions, petl in the model's hidden size (so that `init_token_ids` can "
            "start from the input embeddings).",
        ]
    lines += [
        "",
        "Ratios are petl median / peft median (below 1: petl is faster). CPU is the process CPU time of "
        "the step, which load from other processes disturbs less than wall-clock time. Full fine-tuning / "
        f"petl prefix (flat): {result['full_over_petl']:.2f} wall, {result['cpu_full_over_petl']:.2f} CPU.",
        "",
        f"Date {e['date']}. The machine may be shared with other processes; interleaving spreads their "
        "load over all variants.",
        "",
        *environment_section(e),
    ]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "llama-tiny"], default="smollm2")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--projection", type=int, default=None, help="also measure projected prefixes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, description = load_model(args.model)
    models = variants(base, args.num_virtual_tokens, args.projection)
    del base
    steps = {name: step_function(model, args.warmup + args.steps) for name, model in models.items()}
    batches = make_batches(models["full fine-tuning"].config.vocab_size, 4, args.batch_size, args.seq_len)
    times: dict[str, list[float]] = {name: [] for name in models}
    cpu_times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_index in range(args.warmup + args.steps):
        batch = batches[round_index % len(batches)]
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = steps[name](batch)
            if round_index >= args.warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)
        print(f"round {round_index + 1}/{args.warmup + args.steps} done", flush=True)

    result: dict = {
        "setup": {
            "model": description,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "num_virtual_tokens": args.num_virtual_tokens,
            "projection": args.projection,
            "warmup": args.warmup,
            "steps": args.steps,
        },
        "environment": collect_environment(),
        "variants": {},
    }
    for name, samples in times.items():
        q = statistics.quantiles(samples, n=4)
        result["variants"][name] = {
            "trainable": petl.count_parameters(models[name]).trainable,
            "median_s": statistics.median(samples),
            "p25_s": q[0],
            "p75_s": q[2],
            "samples_s": samples,
            "cpu_median_s": statistics.median(cpu_times[name]),
            "cpu_samples_s": cpu_times[name],
        }
    for name, entry in result["variants"].items():
        if name.startswith("petl prefix"):
            peer = result["variants"][name.replace("petl", "peft", 1)]
            entry["ratio_to_peft"] = entry["median_s"] / peer["median_s"]
            entry["cpu_ratio_to_peft"] = entry["cpu_median_s"] / peer["cpu_median_s"]
    full, flat = result["variants"]["full fine-tuning"], result["variants"]["petl prefix"]
    result["full_over_petl"] = full["median_s"] / flat["median_s"]
    result["cpu_full_over_petl"] = full["cpu_median_s"] / flat["cpu_median_s"]

    result["environment"]["load_average_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "prefix_step_time.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "prefix_step_time.md")
    print((args.out / "prefix_step_time.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
