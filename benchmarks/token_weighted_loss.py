"""Length grouping on CoNLL-2003 with and without ``token_weighted_loss``: does weighing each
batch by its labelled tokens win back the F1 that grouping lost in ``padding.md``?

Token classification averages its loss over a batch's labelled tokens, so with random batches
every token of an epoch weighs about the same, while with length-grouped batches a token of a
batch of short sentences weighs several times as much as one in a batch of long ones.
``TrainConfig(token_weighted_loss=True)`` multiplies each batch's loss by its labelled tokens
over those of an average batch, which puts the per-token weights back to equal.

Three variants of the CoNLL-2003 case of ``benchmarks/padding.py`` (MiniLM-L6 + LoRA r 8 on
query/key/value/attention output, lr 2e-3, the first 4,000 training and 1,000 validation
sentences, 1 epoch, batch 32, max length 128), run in this one process, interleaved over the
seeds (the variant order rotates from seed to seed): random order, length-grouped, and
length-grouped with the token-weighted loss. Reported: entity F1 per seed, the mean, each
grouped variant's paired difference from random order, and real tokens per second.

    python benchmarks/token_weighted_loss.py             # about 10 minutes on 2 idle CPU cores
    python benchmarks/token_weighted_loss.py --quick     # seconds: a tiny model, synthetic tags

Writes ``benchmarks/results/token_weighted_loss.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the padding benchmark's pieces

from padding import DATA, RESULTS, Case, _minilm, quick_cases, run_once  # noqa: E402

from petl.bench.environment import collect_environment, environment_section, load_average  # noqa: E402
from petl.data import load_task_data, read_conll  # noqa: E402
from petl.files import atomic_write_text  # noqa: E402
from petl.training import TrainConfig  # noqa: E402

logger = logging.getLogger("token_weighted_loss")

VARIANTS = {
    "random order": {"group_by_length": False, "token_weighted_loss": False},
    "length-grouped": {"group_by_length": True, "token_weighted_loss": False},
    "length-grouped, token-weighted": {"group_by_length": True, "token_weighted_loss": True},
}


def conll_case(args: argparse.Namespace) -> Case:
    if args.quick:
        quick = next(c for c in quick_cases(args) if c.name == "conll2003")
        return Case("conll2003", quick.description, quick.data, quick.model, quick.config, VARIANTS, "eval_f1")
    from transformers import AutoTokenizer

    from petl.modeling.demo import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = read_conll(DATA / "conll2003" / "train.txt").select(range(args.conll_train))
    valid = read_conll(DATA / "conll2003" / "valid.txt").select(range(args.conll_eval))
    data = load_task_data("token-classification", train, valid, tokenizer=tokenizer, max_length=128)
    base = TrainConfig(epochs=1, batch_size=32, learning_rate=2e-3, logging_steps=1, progress_bar=False,
                       save_steps=10**9)
    return Case("conll2003", f"CoNLL-2003, MiniLM-L6 + LoRA r 8 (q/k/v/o) token classification, first "
                f"{len(data.train)} training / {len(data.eval)} validation sentences, 1 epoch, batch 32, "
                "max length 128, lr 2e-3", data, _minilm("AutoModelForTokenClassification", data.num_labels),
                base, VARIANTS, "eval_f1")


def summarise(case: Case) -> dict[str, Any]:
    names = list(case.variants)
    by_seed: dict[int, dict[str, float]] = {}
    for run in case.runs:
        by_seed.setdefault(run["seed"], {})[run["variant"]] = run["metric"]
    out: dict[str, Any] = {"description": case.description, "metric": case.metric, "variants": {}}
    for name in names:
        runs = [r for r in case.runs if r["variant"] == name]
        entry: dict[str, Any] = {
            "metric_mean": statistics.mean(r["metric"] for r in runs),
            "metric_runs": {r["seed"]: r["metric"] for r in runs},
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
            "padded_fraction": statistics.mean(r["padded_fraction"] for r in runs),
        }
        if name != names[0]:
            diffs = [v[name] - v[names[0]] for v in by_seed.values()]
            entry["difference_by_seed"] = diffs
            entry["difference_mean"] = statistics.mean(diffs)
            entry["difference_se"] = (statistics.stdev(diffs) / len(diffs) ** 0.5) if len(diffs) > 1 else None
            entry["speedup"] = entry["tokens_per_second"] / statistics.median(
                r["tokens_per_second"] for r in case.runs if r["variant"] == names[0])
        out["variants"][name] = entry
    return out


def write_markdown(result: dict[str, Any], path: Path) -> None:
    summary = result["case"]
    lines = ["# Length grouping with a token-weighted loss (CoNLL-2003)", "",
             f"{summary['description']}. Seeds {result['setup']['seeds']}, interleaved in one process; the first "
             f"{result['setup']['warmup']} steps of each run are not timed.", "",
             "| variant | real tokens/s | speed-up | padded fraction | F1 mean | F1 per seed | vs random order "
             "(mean ± s.e.) |", "|---|---:|---:|---:|---:|---|---|"]
    for name, v in summary["variants"].items():
        seeds = ", ".join(f"{x:.4f}" for x in v["metric_runs"].values())
        if "difference_mean" in v:
            se = f" ± {v['difference_se']:.4f}" if v["difference_se"] is not None else ""
            diff = f"{v['difference_mean']:+.4f}{se} (" + ", ".join(f"{d:+.4f}" for d in v["difference_by_seed"]) + ")"
            speed = f"{v['speedup']:.2f}x"
        else:
            diff, speed = "-", "1.00x"
        lines.append(f"| {name} | {v['tokens_per_second']:.0f} | {speed} | {100 * v['padded_fraction']:.1f}% | "
                     f"{v['metric_mean']:.4f} | {seeds} | {diff} |")
    lines += ["", f"Total time {result['total_seconds']:.0f} s.", "", *environment_section(result["environment"])]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random model and synthetic tags (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 (quick: 0)")
    parser.add_argument("--conll-train", type=int, default=4000)
    parser.add_argument("--conll-eval", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default 3, quick 1)")
    parser.add_argument("--name", default="token_weighted_loss", help="the stem of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3])
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.causal_steps = 4  # read by the padding benchmark's quick cases
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for name in ("petl", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.perf_counter()
    environment = collect_environment()
    case = conll_case(args)
    names = list(case.variants)
    for k, seed in enumerate(args.seeds):
        for variant in names[k % len(names):] + names[:k % len(names)]:  # rotate: drift falls on every variant
            run = run_once(case, variant, seed, args.warmup)
            case.runs.append(run)
            logger.info("%s / seed %d: %.0f real tokens/s, F1 %.4f (%.0f s)", variant, seed,
                        run["tokens_per_second"], run["metric"], run["run_seconds"])
    environment["load_average_end"] = load_average()
    result = {"setup": {"quick": args.quick, "seeds": args.seeds, "warmup": args.warmup,
                        "conll_train": args.conll_train, "conll_eval": args.conll_eval},
              "environment": environment, "case": summarise(case), "runs": case.runs,
              "total_seconds": time.perf_counter() - started, "torch_threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.name}.json", json.dumps(result, indent=2, default=str) + "\n")
    write_markdown(result, args.out / f"{args.name}.md")
    print((args.out / f"{args.name}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
