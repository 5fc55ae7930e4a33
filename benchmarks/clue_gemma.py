"""CLUE (TNEWS, EPRSTMT, OCNLI) with Gemma 3 270M: every strategy against full fine-tuning,
on documented subsets small enough for a shared CPU.

For each task this reads ``benchmarks/clue_<task>_gemma.toml``, draws the subsets (a
seeded shuffle of the training and dev files, then the first N rows: TNEWS's files are
sorted by class, so the first rows alone would be one class), writes them as JSON lines
into a temporary folder (never into the repository), runs ``petl bench`` on them (the
harness of :func:`petl.bench.runner.run_benchmark`, each row in its own process) and
writes its report into ``benchmarks/results/clue_gemma_<task>/``. The summary
(``benchmarks/results/clue_gemma/summary.{json,md}``) puts each row's dev accuracy next to
the majority-class rate of the same dev rows and of the training subset's majority
class, and lists the row ids of every subset.

    python benchmarks/clue_gemma.py --threads 1                       # the recorded run
    python benchmarks/clue_gemma.py --tasks eprstmt --strategies lora full
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TASKS = ("tnews", "eprstmt", "ocnli")
# Rows per task (train, dev); None = the whole file. EPRSTMT is small enough to use whole.
SIZES = {"tnews": (160, 160), "eprstmt": (None, None), "ocnli": (160, 160)}


def _rows(path: str) -> list[dict]:
    from petl.data import read_dataset

    return read_dataset(path).to_list()  # through petl's reader: OCNLI's "-" rows are dropped here


def _subset(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or n >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in sorted(order[:n])]


def _write_jsonl(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run_task(task: str, args: argparse.Namespace, scratch: Path) -> dict:
    from petl.bench.config import load_config
    from petl.bench.report import format_table, write_reports
    from petl.bench.runner import run_benchmark

    config = load_config(HERE / f"clue_{task}_gemma.toml")
    if args.strategies:
        config = config.select(args.strategies)
    label = config.data.label_column or "label"
    n_train, n_eval = SIZES[task]
    train = _subset(_rows(config.data.train), args.train_examples or n_train, seed=0)
    dev = _subset(_rows(config.data.eval), args.eval_examples or n_eval, seed=1)
    data = dataclasses.replace(config.data, train=_write_jsonl(train, scratch / f"{task}-train.jsonl"),
                               eval=_write_jsonl(dev, scratch / f"{task}-dev.jsonl"))
    train_spec = config.train if args.epochs is None else dataclasses.replace(config.train, epochs=args.epochs)
    config = config.replace(data=data, train=train_spec)
    output = RESULTS / f"clue_gemma_{task}"
    started = time.perf_counter()
    result = run_benchmark(config, output, progress=False, write=False)
    write_reports(result, output, plots=False)
    print(format_table(result), flush=True)
    dev_counts, train_counts = Counter(r[label] for r in dev), Counter(r[label] for r in train)
    train_major = train_counts.most_common(1)[0][0]
    return {
        "task": task, "config": f"benchmarks/clue_{task}_gemma.toml", "results": f"benchmarks/results/{output.name}/",
        "train_rows": len(train), "dev_rows": len(dev), "classes": len(dev_counts | train_counts),
        "train_subset_ids": [r.get("id") for r in train], "dev_subset_ids": [r.get("id") for r in dev],
        "majority_dev_rate": round(100 * dev_counts.most_common(1)[0][1] / len(dev), 2),
        "train_majority_class": train_major,
        "train_majority_on_dev": round(100 * dev_counts[train_major] / len(dev), 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": [{"label": r.label, "accuracy": r.metric_mean, "trainable_params": r.trainable_params,
                  "train_time_s": r.train_time_s, "steps": r.global_steps, "error": r.error} for r in result.rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--strategies", nargs="+", default=None, help="row labels to run (default: all)")
    parser.add_argument("--train-examples", type=int, default=None, help="override the training subset size")
    parser.add_argument("--eval-examples", type=int, default=None, help="override the dev subset size")
    parser.add_argument("--epochs", type=int, default=None, help="override [train] epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--rebuild", type=Path, default=None,
                        help="only rewrite the markdown of this summary JSON file (no training)")
    args = parser.parse_args()
    if args.rebuild is not None:
        write_summary_markdown(json.loads(args.rebuild.read_text(encoding="utf-8")), args.rebuild.with_suffix(".md"))
        return
    import petl.threads

    petl.threads.configure(threads=args.threads)  # the row workers inherit the environment it sets
    from petl.bench.environment import collect_environment, load_average
    from petl.files import atomic_write_text

    started, summary = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="petl-clue-") as scratch:
        for task in args.tasks:
            summary.append(run_task(task, args, Path(scratch)))
    env = collect_environment()
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "wall_s": round(time.perf_counter() - started),
           "load_average_end": load_average(), "tasks": summary, "environment": env}
    (RESULTS / "clue_gemma").mkdir(parents=True, exist_ok=True)
    name = "summary" if set(args.tasks) == set(TASKS) else "summary_" + "_".join(args.tasks)
    atomic_write_text(RESULTS / "clue_gemma" / f"{name}.json", json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    write_summary_markdown(out, RESULTS / "clue_gemma" / f"{name}.md")


def write_summary_markdown(out: dict, path: Path) -> None:
    """The summary table: dev accuracy in % (``accuracy`` in the JSON is a fraction) next to the baselines."""
    from petl.bench.environment import environment_section
    from petl.files import atomic_write_text

    summary = out["tasks"]
    lines = ["# CLUE with Gemma 3 270M: dev accuracy (%) per strategy", "",
             f"Command: `{out['command']}`; wall time {out['wall_s']} s; load average at the end "
             f"{out['load_average_end']}. One seed (0). Subsets: a seeded shuffle of each file, then the first N rows "
             "(ids in the JSON file next to this one).", "",
             "| task | train / dev rows | classes | majority class on dev | train-majority class on dev | "
             + " | ".join(r["label"] for r in summary[0]["rows"]) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in summary[0]["rows"]) + " |"]
    for t in summary:
        cells = [f"{100 * r['accuracy']:.2f}" if r["accuracy"] is not None else f"failed ({r['error']:.60})"
                 for r in t["rows"]]
        lines.append(f"| {t['task']} | {t['train_rows']} / {t['dev_rows']} | {t['classes']} "
                     f"| {t['majority_dev_rate']:.2f} | {t['train_majority_on_dev']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Per-row details (trainable parameters, steps, training time) are in each task's results.md.", "",
              *environment_section(out["environment"])]
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
