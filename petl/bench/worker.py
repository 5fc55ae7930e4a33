"""One isolated benchmark process: ``python -m petl.bench.worker JOB.json RESULT.json``.

The harness starts a fresh interpreter for every (row, seed) training run, so that
the peak resident memory it reads with ``getrusage`` belongs to that run alone, and
one more for the side-by-side timing of all rows (:mod:`petl.bench.timing`). The job
file holds the benchmark config (``BenchConfig.to_dict``) and what to do; the result
file receives the measurements, or ``{"error": ...}`` when the run failed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main", "run_job"]

logger = logging.getLogger("petl.bench.worker")


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from petl.bench.config import BenchConfig
    from petl.bench.loading import build_row_model, load_data, load_tokenizer
    from petl.bench.measure import cuda_memory_mib, peak_rss_mib, saved_size
    from petl.bench.schema import row_quantization
    from petl.core.params import count_parameters
    from petl.training import TrainConfig, train

    started = time.perf_counter()
    config = BenchConfig.from_dict(job["config"])
    row, seed = config.row(job["label"]), int(job["seed"])
    settings = config.resolved(row)
    cuda = job["device"] == "cuda"
    rss_start = peak_rss_mib()
    tokenizer = load_tokenizer(config)
    data = load_data(config, tokenizer)
    rss_data = peak_rss_mib()
    model = build_row_model(config, row, data, tokenizer, seed)
    loaded_s = time.perf_counter() - started
    out: dict[str, Any] = {"rss_start_mib": rss_start, "rss_after_data_mib": rss_data}
    if cuda:
        if row_quantization(config.model, row) is None:  # bitsandbytes placed a quantized base already
            model.to("cuda")
        torch.cuda.synchronize()
        out["memory_after_load_mib"] = cuda_memory_mib(peak=False)
        torch.cuda.reset_peak_memory_stats()
    else:
        out["memory_after_load_mib"] = peak_rss_mib()
    count = count_parameters(model)
    train_config = TrainConfig(
        epochs=config.train.epochs, max_steps=config.train.max_steps, batch_size=config.train.batch_size,
        learning_rate=settings["learning_rate"], mixed_precision=settings["mixed_precision"],
        optimizer=settings["optimizer"], seed=seed, metric_for_best=config.metric_name,
        group_by_length=config.train.group_by_length,
        load_best_at_end=False,  # report the final evaluation: no model selection on the evaluation set
        progress_bar=bool(job.get("progress", True)), logging_steps=10_000,
    )
    result = train(model, data, config=train_config)
    if cuda:
        torch.cuda.synchronize()
        out["peak_memory_mib"] = max(cuda_memory_mib(peak=True), out["memory_after_load_mib"])
    else:
        out["peak_memory_mib"] = peak_rss_mib()
    out.update(
        memory_kind="cuda" if cuda else "cpu-rss",
        trainable_params=count.trainable,
        total_params=count.total,
        metrics={k: float(v) for k, v in result.metrics.items()},
        global_step=result.global_step,
        checkpoint="last",  # load_best_at_end is off: the evaluation set must not pick the checkpoint
        train_loss=result.train_loss,
        train_time_s=result.runtime_s,
        load_time_s=loaded_s,
        train_examples=len(data.train),
        eval_examples=len(data.eval) if data.eval is not None else 0,
        constant_metric=_constant_metric(config.metric_name, data),
    )
    try:
        out["saved_bytes"] = saved_size(model, full=row.is_full)
    except Exception as exc:  # the training measurements stand even if saving fails
        out["saved_bytes"] = None
        out["notes"] = [f"saving failed: {type(exc).__name__}: {exc}"]
    out["wall_time_s"] = time.perf_counter() - started
    return out


def _constant_metric(metric: str, data: Any) -> float | None:
    """What always predicting the most frequent evaluation label scores on ``metric`` (accuracy of a
    sequence-classification task only, else ``None``): the line below which a run did not learn."""
    from petl.bench.stats import majority_share

    if metric != "eval_accuracy" or data.task != "sequence-classification" or data.eval is None:
        return None
    return majority_share([data.eval[i]["labels"] for i in range(len(data.eval))])


def _time_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from petl.bench.config import BenchConfig
    from petl.bench.loading import build_row_model, load_data, load_tokenizer
    from petl.bench.timing import fixed_batches, make_subject, time_rows

    started = time.perf_counter()
    config = BenchConfig.from_dict(job["config"])
    device = torch.device(job["device"])
    tokenizer = load_tokenizer(config)
    data = load_data(config, tokenizer)
    seed = config.seeds[0]
    batches = fixed_batches(data, config.train.batch_size, config.timing.batches, seed, device)
    # Strategies with a schedule (AdaLoRA's rank budget) plan for the real run's length.
    planned = config.train.max_steps or config.train.epochs * math.ceil(len(data.train) / config.train.batch_size)
    total = max(planned, config.timing.warmup_steps + config.timing.steps)
    subjects, errors = [], {}
    for row in config.strategies:
        try:
            model = build_row_model(config, row, data, tokenizer, seed)
            subjects.append(make_subject(config, row, model, device, total))
        except Exception as exc:  # one row failing must not hide the others' timings
            errors[row.display] = f"{type(exc).__name__}: {exc}"
            logger.warning("Timing skips %s: %s", row.display, errors[row.display])
    times = time_rows(subjects, batches, warmup=config.timing.warmup_steps, steps=config.timing.steps,
                      progress=bool(job.get("progress", True))) if subjects else {}
    return {
        "timings": times,
        "errors": errors,
        "batch_size": config.train.batch_size,
        "batch_shapes": [list(b["input_ids"].shape) for b in batches],
        "wall_time_s": time.perf_counter() - started,
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (``mode`` ``"train"``, ``"time"`` or ``"trial"``) in this process and return its result."""
    if job["mode"] == "train":
        return _train_job(job)
    if job["mode"] == "time":
        return _time_job(job)
    if job["mode"] == "trial":  # one trial of a [search] study: petl.bench.search
        from petl.bench.search import trial_job

        return trial_job(job)
    raise ValueError(f"Unknown worker mode {job['mode']!r}.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process; returns 0 on success, 1 when the job failed."""
    args = sys.argv[1:] if argv is None else argv
    job_path, result_path = Path(args[0]), Path(args[1])
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    from petl.files import atomic_write_json

    hf_logging.disable_progress_bar()  # per-file loading bars would bury the training bar
    job = json.loads(job_path.read_text(encoding="utf-8"))
    try:
        result = run_job(job)
    except Exception as exc:
        from petl.errors import PetlError

        message = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, PetlError):
            message += "\n" + traceback.format_exc(limit=8)
        atomic_write_json(result_path, {"error": message})
        return 1
    atomic_write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
