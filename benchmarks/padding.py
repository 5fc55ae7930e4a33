"""Less padding: training throughput in real (non-pad) tokens per second, and the final
metric, with length-grouped batches against uniformly random ones, and with packed causal-LM
batches against padded ones.

Three cases, each a pair of variants trained in this one process, interleaved (seed 0: A
then B, seed 1: B then A, ...), so that load from other processes on a shared machine falls
on both alike; four seeds by default, to see how much the metric moves between seeds:

* SST-2 (../shared/data/sst2): MiniLM-L6 + LoRA (r 8 on query/key/value/attention output,
  lr 2e-3, the setting of benchmarks/sst2_minilm.toml), all 2,821 training sentences (the whole
  training file), the full 872-sentence validation set, 1 epoch, batch 32, max length 128 (no
  sentence is cut: the longest has 64 tokens): ``group_by_length`` on against off;
* CoNLL-2003 (../shared/data/conll2003): MiniLM-L6 + LoRA token classification (the same
  LoRA), the first 4,000 training sentences, the first 1,000 validation sentences, 1 epoch,
  batch 32, max length 128: grouped against random;
* causal LM: SmolLM2-135M-Instruct + LoRA (r 8, lr 1e-3) on SST-2 as prompt/completion
  ("Review: <sentence>\nSentiment:" -> " positive" / " negative", loss on the completion), the
  first ``--causal-eval`` validation sentences for the loss, max length 128, batch 8,
  ``--causal-steps`` steps of the same random batches: ``packing`` on against off (both
  ``group_by_length=False``). A step of this model takes tens of seconds on 2 CPU cores, so the
  case is short and takes one seed: its two variants train on the same batches, and their
  losses agree up to float rounding. (OpenAssistant replies would need a max length of 512 to
  stay mostly whole, which is out of reach here; cut to 128, most rows fill it and there is
  little padding to remove.)

Throughput counts training time only: each optimizer step's time comes from the trainer's
log (``logging_steps=1``; its throughput excludes evaluation and checkpoints), the first
``--warmup`` steps of each run are left out, and the real and padded tokens of each step are
replayed from the run's own sampler and collator (the order depends only on the seed and the
epoch). ``padded fraction`` is the share of pad positions among all positions computed.

    python benchmarks/padding.py            # the recorded run: about 10 minutes on 2 idle CPU cores
    python benchmarks/padding.py --quick    # seconds: tiny random models and synthetic data
    python benchmarks/padding.py --cases default --name length_grouping_default   # about 5 minutes

Writes ``benchmarks/results/padding.json`` and ``.md`` (``--name`` changes the stem). The
``default`` case is the LoRA row of the built-in ``petl bench`` on its own synthetic data, where
grouping lowers the accuracy: the reason grouping is off by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

import petl
from petl.bench.environment import collect_environment, environment_section, load_average
from petl.data import Collator, TaskData, TokenizedDataset, load_task_data, read_conll
from petl.data.packing import pack_rows
from petl.files import atomic_write_text
from petl.training import TrainConfig, train
from petl.training.sampling import training_order

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
LORA_BERT = {"r": 8, "target_modules": ["query", "key", "value", "attention.output.dense"]}
TARGET_SPEEDUP = 1.3

logger = logging.getLogger("padding")


@dataclass
class Case:
    """One pair of variants on one data set."""

    name: str
    description: str
    data: TaskData
    model: Callable[[int], torch.nn.Module]  # seed -> a freshly loaded, wrapped model
    config: TrainConfig
    variants: dict[str, dict[str, Any]]  # variant name -> config changes; the first is the baseline
    metric: str
    runs: list[dict[str, Any]] = field(default_factory=list)


# -- data and models ------------------------------------------------------------------------------


def _minilm(head: str, num_labels: int, lora: dict[str, Any] | None = None) -> Callable[[int], torch.nn.Module]:
    from petl.modeling.demo import minilm_path

    def build(seed: int) -> torch.nn.Module:
        transformers.set_seed(seed)  # the head and the adapter start from the seed
        auto = getattr(transformers, head)
        model = auto.from_pretrained(minilm_path(), num_labels=num_labels, attn_implementation="sdpa")
        return petl.wrap(model, "lora", **(LORA_BERT if lora is None else lora))

    return build


def _sst2_prompts(split: str, limit: int | None) -> list[dict[str, str]]:
    """SST-2 sentences as prompt -> completion: "Review: <sentence>\nSentiment:" -> " positive" / " negative"."""
    lines = (DATA / "sst2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.rsplit("\t", 1) for line in lines[:limit]]
    return [{"prompt": f"Review: {text}\nSentiment:", "completion": " positive" if label == "1" else " negative"}
            for text, label in rows]


def real_cases(args: argparse.Namespace) -> list[Case]:
    from transformers import AutoTokenizer

    from petl.modeling.demo import minilm_path, smollm2_safetensors_path

    minilm_tok = AutoTokenizer.from_pretrained(minilm_path())
    grouped = {"random order": {"group_by_length": False}, "length-grouped": {"group_by_length": True}}
    if args.cases == ["default"]:  # the built-in benchmark's data alone: skip loading the others
        return [default_case(minilm_tok, grouped)]
    sst2 = load_task_data("sequence-classification", str(DATA / "sst2" / "train.tsv"),
                          str(DATA / "sst2" / "validation.tsv"), tokenizer=minilm_tok, max_length=128)
    conll_train = read_conll(DATA / "conll2003" / "train.txt").select(range(args.conll_train))
    conll_eval = read_conll(DATA / "conll2003" / "valid.txt").select(range(args.conll_eval))
    conll = load_task_data("token-classification", conll_train, conll_eval, tokenizer=minilm_tok, max_length=128)
    base = TrainConfig(epochs=1, batch_size=32, learning_rate=2e-3, logging_steps=1, progress_bar=False,
                       save_steps=10**9)
    smol_path = smollm2_safetensors_path()
    smol_tok = AutoTokenizer.from_pretrained(smol_path)
    causal = load_task_data("causal-lm", _sst2_prompts("train", None), _sst2_prompts("validation", args.causal_eval),
                            tokenizer=smol_tok, max_length=128)

    def smollm2(seed: int) -> torch.nn.Module:
        transformers.set_seed(seed)
        model = transformers.AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32,
                                                                  attn_implementation="sdpa")
        return petl.wrap(model, "lora", r=8)

    return [
        Case("sst2", f"SST-2, MiniLM-L6 + LoRA r 8 (q/k/v/o), {len(sst2.train)} training sentences, "
             f"{len(sst2.eval)} validation, 1 epoch, batch 32, max length 128",
             sst2, _minilm("AutoModelForSequenceClassification", 2), base, grouped, "eval_accuracy"),
        Case("conll2003", f"CoNLL-2003, MiniLM-L6 + LoRA r 8 (q/k/v/o) token classification, first "
             f"{len(conll.train)} training / {len(conll.eval)} validation sentences, 1 epoch, batch 32, max length 128",
             conll, _minilm("AutoModelForTokenClassification", conll.num_labels), base, grouped, "eval_f1"),
        Case("causal", f"SmolLM2-135M-Instruct + LoRA r 8, SST-2 as prompt/completion (\"Review: <sentence>\\n"
             f"Sentiment:\" -> \" positive\"/\" negative\", loss on the completion; {len(causal.train)} training, "
             f"first {len(causal.eval)} validation sentences), max length 128, batch 8, {args.causal_steps} steps",
             causal, smollm2, base.replace(batch_size=8, learning_rate=1e-3, max_steps=args.causal_steps,
                                           group_by_length=False),
             {"padded": {"packing": False}, "packed": {"packing": True}}, "eval_loss"),
        default_case(minilm_tok, grouped),
    ]


def default_case(tokenizer: Any, grouped: dict[str, dict[str, Any]]) -> Case:
    """The LoRA row of the built-in ``petl bench`` on its own data: whether grouping changes its result."""
    from petl.bench.defaults import default_config
    from petl.bench.loading import load_data

    bench = default_config()
    row = next(s for s in bench.strategies if s.name == "lora")
    data = load_data(bench, tokenizer)
    config = TrainConfig(epochs=bench.train.epochs, batch_size=bench.train.batch_size,
                         learning_rate=row.learning_rate, logging_steps=1, progress_bar=False, save_steps=10**9)
    return Case("default", f"petl's synthetic sentiment data as the built-in benchmark has it ({len(data.train)} "
                f"training, {len(data.eval)} evaluation sentences, max length {bench.data.max_length}), MiniLM-L6 + "
                f"LoRA {row.options} (query/value) at lr {row.learning_rate}, {bench.train.epochs} epochs, batch "
                f"{bench.train.batch_size}: single clauses are short, contrasts long, so a grouped step holds one kind",
                data, _minilm("AutoModelForSequenceClassification", 2, dict(row.options)), config, grouped,
                "eval_accuracy")


def _synthetic(task: str, n: int, seed: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g)) if torch.rand(1, generator=g) < 0.8 else \
            int(torch.randint(12, 48, (1,), generator=g))
        ids = torch.randint(3, 256, (length,), generator=g).tolist()
        labels: Any = ids[0] % 2 if task == "sequence-classification" else (
            [i % 3 for i in ids] if task == "token-classification" else [-100] + ids[1:])
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return rows


def quick_cases(args: argparse.Namespace) -> list[Case]:
    """Tiny random models on synthetic skewed lengths: the whole pipeline in seconds."""
    def data(task: str, labels: int | None, names: list[str] | None) -> TaskData:
        return TaskData(train=TokenizedDataset(_synthetic(task, 192, 1)),
                        eval=TokenizedDataset(_synthetic(task, 32, 2)), collator=Collator(0), task=task,
                        num_labels=labels, label_names=names)

    def tiny(head: str, config: Any, labels: int | None = None) -> Callable[[int], torch.nn.Module]:
        def build(seed: int) -> torch.nn.Module:
            transformers.set_seed(seed)
            if labels is not None:
                config.num_labels = labels
            model = getattr(transformers, head).from_config(config, attn_implementation="sdpa")
            return petl.wrap(model, "lora", r=4)
        return build

    bert = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64)
    llama = transformers.LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=64, pad_token_id=0)
    base = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-2, logging_steps=1, progress_bar=False,
                       save_steps=10**9)
    grouped = {"random order": {"group_by_length": False}, "length-grouped": {"group_by_length": True}}
    return [
        Case("sst2", "quick: tiny BERT, synthetic sentences", data("sequence-classification", 2, ["a", "b"]),
             tiny("AutoModelForSequenceClassification", bert, 2), base, grouped, "eval_accuracy"),
        Case("conll2003", "quick: tiny BERT, synthetic tags", data("token-classification", 3, ["O", "B-X", "I-X"]),
             tiny("AutoModelForTokenClassification", bert, 3), base, grouped, "eval_f1"),
        Case("causal", "quick: tiny Llama, synthetic text", data("causal-lm", None, None),
             tiny("AutoModelForCausalLM", llama), base.replace(batch_size=8, max_steps=args.causal_steps,
                                                               group_by_length=False),
             {"padded": {"packing": False}, "packed": {"packing": True}}, "eval_loss"),
    ]


# -- measuring ------------------------------------------------------------------------------------


def replay(data: TaskData, config: TrainConfig, steps: int) -> list[dict[str, int]]:
    """The examples, real tokens and computed positions of each step, from the run's own sampler and collator."""
    lengths = [len(row["input_ids"]) for row in data.train]
    order = training_order(data.train, config)
    batches: list[list[int]] = []
    for epoch in range(-(-steps * config.batch_size // len(data.train)) + 1):  # enough epochs for the steps
        order.set_order(epoch)
        indices = list(order)
        batches += [indices[i:i + config.batch_size] for i in range(0, len(indices), config.batch_size)]
    out = []
    for batch in batches[:steps]:
        sizes = [lengths[i] for i in batch]
        if config.packing:
            computed = len(pack_rows(sizes, max(sizes))) * max(sizes)
        else:
            computed = len(sizes) * max(sizes)
        out.append({"examples": len(batch), "real": sum(sizes), "computed": computed})
    return out


def run_once(case: Case, variant: str, seed: int, warmup: int) -> dict[str, Any]:
    config = case.config.replace(seed=seed, **case.variants[variant])
    model = case.model(seed)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train(model, case.data, config=config.replace(output_dir=folder))
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(folder) / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    batches = replay(case.data, config, len(steps))
    seconds = [b["examples"] / r["samples_per_second"] for b, r in zip(batches, steps, strict=True)]
    kept = slice(min(warmup, len(seconds) - 1), None)
    real, computed = sum(b["real"] for b in batches[kept]), sum(b["computed"] for b in batches[kept])
    measured = sum(seconds[kept])
    return {
        "variant": variant,
        "seed": seed,
        "steps": len(steps),
        "metric": result.metrics[case.metric],
        "metrics": result.metrics,
        "train_seconds": sum(seconds),
        "measured_seconds": measured,
        "run_seconds": wall,
        "real_tokens": sum(b["real"] for b in batches),
        "computed_positions": sum(b["computed"] for b in batches),
        "tokens_per_second": real / measured,
        "padded_fraction": 1 - real / computed,
    }


def summarise(case: Case) -> dict[str, Any]:
    names = list(case.variants)
    summary: dict[str, Any] = {"description": case.description, "metric": case.metric, "variants": {}}
    for name in names:
        runs = [r for r in case.runs if r["variant"] == name]
        summary["variants"][name] = {
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
            "tokens_per_second_runs": [r["tokens_per_second"] for r in runs],
            "padded_fraction": statistics.mean(r["padded_fraction"] for r in runs),
            "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
            "metric_mean": statistics.mean(r["metric"] for r in runs),
            "metric_runs": [r["metric"] for r in runs],
        }
    base, new = (summary["variants"][n] for n in names)
    summary["speedup"] = new["tokens_per_second"] / base["tokens_per_second"]
    per_seed = {}
    for run in case.runs:
        per_seed.setdefault(run["seed"], {})[run["variant"]] = run["metric"]
    summary["metric_difference_by_seed"] = {s: v[names[1]] - v[names[0]] for s, v in per_seed.items()}
    spreads = [max(v["metric_runs"]) - min(v["metric_runs"]) for v in summary["variants"].values()]
    summary["seed_spread"] = max(spreads) if len(per_seed) > 1 else None
    return summary


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Less padding: length-grouped and packed batches",
        "",
        "Real (non-pad) training tokens per second, the padded fraction of the positions computed, and the final "
        f"metric. Each pair ran in one process, interleaved over seeds {result['setup']['seeds']}; the first "
        f"{result['setup']['warmup']} steps of each run are not timed. Throughput is the median over seeds.",
        "",
        "| case | variant | real tokens/s | speed-up | padded fraction | train s | metric (per seed) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, case in result["cases"].items():
        for i, (variant, v) in enumerate(case["variants"].items()):
            speed = f"{case['speedup']:.2f}x" if i else "1.00x"
            values = ", ".join(f"{m:.4f}" for m in v["metric_runs"])
            lines.append(f"| {name} | {variant} | {v['tokens_per_second']:.0f} | {speed} | {v['padded_fraction']:.1%} "
                         f"| {v['train_seconds']:.1f} | {case['metric']} {v['metric_mean']:.4f} ({values}) |")
    lines += ["", "Cases:", ""]
    lines += [f"* **{name}**: {case['description']}." for name, case in result["cases"].items()]
    lines += ["", "Metric noise: the difference between the variants at each seed, and the largest spread between "
              "seeds within a variant (the noise the seeds show):", ""]
    for name, case in result["cases"].items():
        values = list(case["metric_difference_by_seed"].values())
        diffs = ", ".join(f"seed {s}: {d:+.4f}" for s, d in case["metric_difference_by_seed"].items())
        spread = "n/a" if case["seed_spread"] is None else f"{case['seed_spread']:.4f}"
        paired = ""
        if len(values) > 1:
            error = statistics.stdev(values) / len(values) ** 0.5
            paired = f"; mean difference {statistics.mean(values):+.4f} +- {error:.4f} (standard error)"
        lines.append(f"* {name} ({case['metric']}): {diffs}{paired}; spread between seeds {spread}")
    target = result["target"]
    if target["speedups"]:
        lines += ["", f"Target: SST-2 and CoNLL-2003 at least {TARGET_SPEEDUP}x the real tokens per second with "
                  f"length grouping: {', '.join(f'{k} {v:.2f}x' for k, v in target['speedups'].items())} -> "
                  f"{'met' if target['met'] else 'not met'}.", ""]
    lines += [
        "Defaults that follow: `TrainConfig.group_by_length` is off unless set. Grouping changes which examples "
        "share a step: where length goes with the kind of example (the built-in benchmark's synthetic data, "
        "`benchmarks/results/length_grouping_default.md`) a step holds one kind, and token classification, causal "
        "LM and seq2seq average their loss over a batch's tokens, which grouping shifts towards short examples. "
        "Turn it on where the metric holds (`benchmarks/sst2_minilm.toml` does). Packing trains on the same "
        "batches as padding, so its loss equals the padded run's; its padded fraction is the slack of rows as long "
        "as each batch's longest example.",
        "",
    ]
    env = result["environment"]
    lines += [f"Load average (1/5/15 min): {env.get('load_average')} at the start, {env.get('load_average_end')} "
              f"at the end. Total time {result['total_seconds']:.0f} s. Date {env['date']}.", "",
              *environment_section(result["environment"])]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random models and synthetic data (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 (quick: 0)")
    parser.add_argument("--cases", nargs="+", default=["sst2", "conll2003", "causal"],
                        help="also: default (the built-in benchmark's data; ../shared/data not needed)")
    parser.add_argument("--name", default="padding", help="the stem of the result files")
    parser.add_argument("--conll-train", type=int, default=4000)
    parser.add_argument("--conll-eval", type=int, default=1000)
    parser.add_argument("--causal-steps", type=int, default=None, help="default 12 (quick: 4)")
    parser.add_argument("--causal-eval", type=int, default=64, help="validation sentences of the causal case")
    parser.add_argument("--causal-seeds", type=int, nargs="+", default=[0],
                        help="seeds of the causal case (its two variants take the same batches)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3])
    args.causal_steps = args.causal_steps or (4 if args.quick else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for name in ("petl", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)

    started = time.perf_counter()
    environment = collect_environment()  # the load average at the start
    cases = [c for c in (quick_cases(args) if args.quick else real_cases(args)) if c.name in args.cases]
    for case in cases:
        for k, seed in enumerate(args.causal_seeds if case.name == "causal" else args.seeds):
            names = list(case.variants)
            for variant in names if k % 2 == 0 else names[::-1]:  # ABBA: drift falls on both variants
                run = run_once(case, variant, seed, args.warmup)
                case.runs.append(run)
                logger.info("%s / %s / seed %d: %.0f real tokens/s, padded %.1f%%, %s %.4f (%.0f s)", case.name,
                            variant, seed, run["tokens_per_second"], 100 * run["padded_fraction"], case.metric,
                            run["metric"], run["run_seconds"])
    environment["load_average_end"] = load_average()
    summaries = {case.name: summarise(case) for case in cases}
    speedups = {n: summaries[n]["speedup"] for n in ("sst2", "conll2003") if n in summaries}
    result = {
        "setup": {"quick": args.quick, "seeds": args.seeds, "warmup": args.warmup, "causal_steps": args.causal_steps,
                  "causal_seeds": args.causal_seeds, "causal_eval": args.causal_eval,
                  "conll_train": args.conll_train, "conll_eval": args.conll_eval},
        "environment": environment,
        "cases": summaries,
        "runs": {case.name: case.runs for case in cases},
        "target": {"speedup": TARGET_SPEEDUP, "speedups": speedups,
                   "met": bool(speedups) and all(v >= TARGET_SPEEDUP for v in speedups.values())},
        "total_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / f"{args.name}.md")
    print((args.out / f"{args.name}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
