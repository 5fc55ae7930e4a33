"""Running a benchmark: one isolated process per (row, seed), one for the timing, then the report.

Each training run happens in a fresh ``python -m petl.bench.worker`` process, so that
its peak resident memory is its own and nothing (allocator caches, the previous
row's tensors, imported state) leaks from one row into the next. The step times of
all rows are measured together, interleaved, in one more process
(:mod:`petl.bench.timing`). The rows run one after the other: on a machine with
few cores, parallel runs would slow each other unevenly.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from petl.bench.config import BenchConfig, check_runnable
from petl.bench.environment import collect_environment, load_average
from petl.bench.results import BenchResult, StrategyResult, add_differences, add_ratios, add_timing, aggregate
from petl.errors import PetlError
from petl.threads import set_wait_policy

__all__ = ["default_output_dir", "run_benchmark"]

logger = logging.getLogger(__name__)

WORK_DIR = ".work"


def default_output_dir() -> Path:
    """``runs/bench-<UTC timestamp>`` under the current directory."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"bench-{stamp}"


def _worker_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU row must not quietly use a GPU
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Spinning OpenMP threads wait for each other when another process holds a core: on a
    # shared 2-core machine a MiniLM step measured 7.0 s with spinning and 0.9 s without.
    set_wait_policy(env)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    checkout = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH")) if p)
    return env


def _spawn(job: dict[str, Any], work: Path, name: str, device: str) -> dict[str, Any]:
    """Run ``job`` in a fresh worker process and return its result (or ``{"error": ...}``)."""
    job_path, result_path = work / f"{name}.job.json", work / f"{name}.result.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "petl.bench.worker", str(job_path), str(result_path)]
    done = subprocess.run(command, env=_worker_env(device), check=False)
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    return {"error": f"the worker process exited with code {done.returncode} without a result "
                     "(killed for memory, or interrupted)"}


def _data_facts(config: BenchConfig) -> dict[str, Any]:
    facts: dict[str, Any] = {"source": "synthetic" if config.data.synthetic else "files",
                             "train": config.data.train, "eval": config.data.eval,
                             "max_length": config.data.max_length,
                             "group_by_length": config.train.group_by_length}
    if config.data.synthetic:
        from petl.bench.synthetic import bag_of_words_accuracy, make_splits

        train, held_out = make_splits(config.data.train_examples or 2000, config.data.eval_examples or 500,
                                      seed=config.data.synthetic_seed)
        facts["bag_of_words_accuracy"] = bag_of_words_accuracy(train, held_out)
        facts["label_share_positive"] = sum(e.label for e in held_out) / len(held_out)
    return facts


def _row_result(config: BenchConfig, row: Any) -> StrategyResult:
    settings = config.resolved(row)
    return StrategyResult(
        label=row.display, strategy=row.name, options=dict(row.options), learning_rate=settings["learning_rate"],
        mixed_precision=settings["mixed_precision"], optimizer=settings["optimizer"],
        load_in_8bit=settings["load_in_8bit"],
    )


def _search(config: BenchConfig, output: Path, work: Path, device: str) -> tuple[BenchConfig, dict[str, Any]]:
    """Run the ``[search]`` study of every row (:mod:`petl.bench.search`); the config with the chosen settings."""
    from petl.bench.search import apply_choice, search_row

    storage = config.search.storage or f"journal://{(output / 'search.journal').resolve()}"
    searches = {}
    for spec in config.strategies:
        logger.info("Searching %s: %d trials, %d at a time (%s)", spec.display, config.search.trials,
                    config.search.jobs, storage)
        searches[spec.display] = search_row(
            config, spec, lambda job, name: _spawn({**job, "device": device}, work, name, device), storage=storage)
        logger.info("%s: chose %s (validation %s)", spec.display, searches[spec.display]["params"],
                    searches[spec.display]["score"])
    rows = tuple(apply_choice(s, searches[s.display]["params"]) for s in config.strategies)
    return config.replace(strategies=rows), searches


def run_benchmark(
    config: BenchConfig, output_dir: str | os.PathLike[str] | None = None, *, progress: bool = True,
    write: bool = True,
) -> BenchResult:
    """Train and measure every row of ``config`` and write the report files.

    Args:
        config: The benchmark (see :class:`~petl.bench.config.BenchConfig`).
        output_dir: The run folder; ``runs/bench-<timestamp>`` when ``None``.
        progress: Show tqdm progress bars (training steps, timing rounds).
        write: Write results.json / .csv / .md and the plots into ``output_dir``.

    Returns:
        The :class:`~petl.bench.results.BenchResult`. A row that fails keeps its
        ``error`` and the others are still measured.

    Raises:
        PetlError: The benchmark needs a device this machine lacks (checked before
            anything runs), or the output folder cannot be created.
    """
    device = check_runnable(config)
    started = time.perf_counter()
    output = Path(output_dir) if output_dir is not None else default_output_dir()
    try:
        output.mkdir(parents=True, exist_ok=True)
        work = output / WORK_DIR
        work.mkdir(exist_ok=True)
    except OSError as exc:
        raise PetlError(f"Cannot create the benchmark folder {output}: {exc}. Pass a writable --output.") from exc
    environment = collect_environment()
    worker_env = _worker_env(device)
    environment["worker_env"] = {k: worker_env.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                               "CUDA_VISIBLE_DEVICES")}
    searches: dict[str, Any] = {}
    try:
        if config.search.enabled:
            config, searches = _search(config, output, work, device)
        base_job = {"config": config.to_dict(), "device": device, "progress": progress}
        rows = [_row_result(config, row) for row in config.strategies]
        for row in rows:
            row.search = searches.get(row.label)
        data = _data_facts(config)
        timing: dict[str, Any] = {"warmup_steps": config.timing.warmup_steps, "steps": config.timing.steps,
                                  "batches": config.timing.batches, "batch_size": config.train.batch_size}
        if config.timing.steps > 0:
            logger.info("Timing %d rows side by side (%d warm-up + %d timed rounds)...", len(rows),
                        config.timing.warmup_steps, config.timing.steps)
            measured = _spawn({**base_job, "mode": "time"}, work, "timing", device)
            timing.update(measured)
            add_timing(rows, measured, config.train.batch_size)
        jobs = [(row, spec) for row, spec in zip(rows, config.strategies, strict=True)]
        total = len(jobs) * len(config.seeds)
        done = 0
        for row, spec in jobs:
            runs = []
            for seed in config.seeds:
                done += 1
                logger.info("[%d/%d] training %s (seed %d)", done, total, row.label, seed)
                run = _spawn({**base_job, "mode": "train", "label": spec.display, "seed": seed}, work,
                             f"train-{done}", device)
                if "error" in run:
                    logger.warning("%s (seed %d) failed: %s", row.label, seed, run["error"].splitlines()[0])
                runs.append(run)
                if "train_examples" in run:
                    data.setdefault("train_examples", run["train_examples"])
                    data.setdefault("eval_examples", run["eval_examples"])
            aggregate(row, runs, list(config.seeds), config.metric_name)
        add_ratios(rows)
        add_differences(rows)
    finally:
        shutil.rmtree(output / WORK_DIR, ignore_errors=True)
    environment["load_average_end"] = load_average()
    result = BenchResult(
        name=config.name, rows=rows, config=config.to_dict(), environment=environment,
        wall_time_s=time.perf_counter() - started, device=device, data=data, timing=timing, output_dir=output,
    )
    from petl.bench.verdict import verdict

    result.verdict = verdict(result, config.tolerance)
    if write:
        from petl.bench.report import write_reports

        write_reports(result, output)
    return result
