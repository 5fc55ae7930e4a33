"""The paired difference of one row of a ``petl bench`` run from a row of another run.

A rerun of one row (say LoRA with another search setting) need not retrain full fine-tuning:
its seeds, data, metric and training budget are those of the earlier run, so the difference
is paired by seed as within one run. This script checks that the two runs agree on all of
that (it refuses otherwise), then writes the per-seed values, the mean difference and its 95%
Student t interval, as ``petl bench`` computes them within one run.

    python benchmarks/paired_rows.py benchmarks/results/sst2_minilm_tuned full \\
        benchmarks/results/sst2_minilm_lora_trial_seeds lora

Writes ``paired_<row>_vs_<baseline>.{json,md}`` into the second run's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from petl.bench.stats import mean_interval, paired_difference
from petl.files import atomic_write_text

SAME = ("data",)
"""Top-level entries of ``results.json`` the two runs must agree on."""
TIMING_MEASURED = ("timings", "errors", "wall_time_s")
"""Entries of ``results.json``'s ``timing`` that each run measures for its own rows; the rest (the
warm-up, steps, batches and their shapes) is the setup both runs must share."""
SAME_CONFIG = ("task", "metric", "model", "data", "train", "seeds")
"""Entries of the recorded config the two runs must agree on."""


def _row(run: dict[str, Any], label: str, folder: Path) -> dict[str, Any]:
    for row in run["results"]:
        if row["label"] == label:
            return row
    raise SystemExit(f"{folder} has no row {label!r}; it has {', '.join(r['label'] for r in run['results'])}.")


def compare(base_dir: Path, base_label: str, other_dir: Path, other_label: str) -> dict[str, Any]:
    """The comparison record; ``SystemExit`` with a reason when the runs are not comparable."""
    base, other = (json.loads((d / "results.json").read_text(encoding="utf-8")) for d in (base_dir, other_dir))
    for key in SAME:
        if base.get(key) != other.get(key):
            raise SystemExit(f"The runs differ in {key}: {base.get(key)!r} against {other.get(key)!r}.")
    setups = [{k: v for k, v in (run.get("timing") or {}).items() if k not in TIMING_MEASURED} for run in (base, other)]
    if setups[0] != setups[1]:
        raise SystemExit(f"The runs differ in their timing setup: {setups[0]!r} against {setups[1]!r}.")
    for key in SAME_CONFIG:
        if base["config"].get(key) != other["config"].get(key):
            raise SystemExit(f"The runs' configs differ in {key}: {base['config'].get(key)!r} against "
                             f"{other['config'].get(key)!r}.")
    a, b = _row(base, base_label, base_dir), _row(other, other_label, other_dir)
    if a["metric"] != b["metric"]:
        raise SystemExit(f"The rows report different metrics: {a['metric']} against {b['metric']}.")
    diff = paired_difference(b["metric_values"], b["seeds"], a["metric_values"], a["seeds"])
    if diff is None:
        raise SystemExit("The rows share no seed.")
    return {
        "metric": a["metric"],
        "baseline": {"run": str(base_dir), "label": base_label, "date": base["date"], "seeds": a["seeds"],
                     "values": a["metric_values"], "learning_rate": a["learning_rate"], "options": a["options"],
                     "mean": mean_interval(a["metric_values"]).to_dict()},
        "row": {"run": str(other_dir), "label": other_label, "date": other["date"], "seeds": b["seeds"],
                "values": b["metric_values"], "learning_rate": b["learning_rate"], "options": b["options"],
                "mean": mean_interval(b["metric_values"]).to_dict(), "search": b.get("search")},
        "difference": diff.to_dict(),
        "indistinguishable": diff.contains_zero,
    }


def write_markdown(record: dict[str, Any], path: Path) -> None:
    base, row, diff = record["baseline"], record["row"], record["difference"]

    def values(side: dict[str, Any]) -> str:
        return ", ".join(f"seed {s}: {100 * v:.2f}" for s, v in zip(side["seeds"], side["values"], strict=True))

    ci = (f"{100 * diff['low']:+.2f}..{100 * diff['high']:+.2f}" if diff["low"] is not None else "n/a")
    lines = [f"# {row['label']} ({row['run']}) against {base['label']} ({base['run']})", "",
             f"Metric {record['metric']} (%), paired by seed.", "",
             "| row | run | learning rate | options | mean | per seed |", "|:---|:---|---:|:---|---:|:---|"]
    for side in (base, row):
        options = ", ".join(f"{k}={v}" for k, v in side["options"].items()) or "-"
        lines.append(f"| {side['label']} | {side['run']} ({side['date'][:10]}) | {side['learning_rate']:.3g} | "
                     f"{options} | {100 * side['mean']['mean']:.2f} | {values(side)} |")
    lines += ["", f"Difference {row['label']} - {base['label']}: {100 * diff['mean']:+.2f} points, 95% CI {ci} "
              f"over {diff['n']} seeds" + (" (the runs cannot tell them apart)." if record["indistinguishable"]
                                           else "."), ""]
    atomic_write_text(path, "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline_run", type=Path)
    parser.add_argument("baseline_row")
    parser.add_argument("run", type=Path)
    parser.add_argument("row")
    args = parser.parse_args()
    record = compare(args.baseline_run, args.baseline_row, args.run, args.row)
    stem = f"paired_{args.row}_vs_{args.baseline_row}"
    atomic_write_text(args.run / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    write_markdown(record, args.run / f"{stem}.md")
    sys.stdout.write((args.run / f"{stem}.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
