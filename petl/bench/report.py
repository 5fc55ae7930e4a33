"""Writing a benchmark's results: a text table, ``results.json``, ``results.csv``,
``results.md`` and PNG plots (matplotlib is imported only here, when plotting).

Plots:

* ``metric_vs_params.png``: the task metric (mean over seeds, with min-max bars)
  against trainable parameters on a log axis;
* ``memory.png``: peak memory per row, split into "before training" and "added by training";
* ``step_time.png``: median step time per row (min-max bars) from the side-by-side loop;
* ``pareto.png``: the metric (95% interval) against trainable parameters, peak memory and
  step time, dominated rows hollow (:mod:`petl.bench.verdict`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from petl.bench.environment import environment_section
from petl.bench.results import BenchResult, StrategyResult
from petl.bench.verdict import pareto_plot, search_section, stall_note, uncertainty_section
from petl.files import atomic_write_text

__all__ = ["CSV_COLUMNS", "PLOTS", "format_table", "markdown", "write_reports"]

logger = logging.getLogger(__name__)

PLOTS = ("metric_vs_params.png", "memory.png", "step_time.png", "pareto.png")
CSV_COLUMNS = (
    "label", "strategy", "options", "learning_rate", "mixed_precision", "optimizer", "load_in_8bit",
    "trainable_params", "total_params", "trainable_share", "ratio_to_full",
    "memory_kind", "memory_after_load_mib", "peak_memory_mib", "train_memory_mib",
    "step_time_ms", "step_time_ms_min", "step_time_ms_max", "timed_steps", "throughput", "step_time_ratio",
    "metric", "metric_mean", "metric_std", "metric_min", "metric_max", "metric_values", "eval_loss_mean",
    "constant_metric", "stalled_seeds", "seeds", "adapter_bytes", "global_steps", "train_time_s", "wall_time_s",
    "error",
)
TABLE_HEADERS = (
    "strategy", "trainable", "share %", "vs full", "metric", "peak MiB", "train MiB", "step ms", "ex/s",
    "step vs full", "saved", "time s",
)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def _metric(row: StrategyResult) -> str:
    if row.metric_mean is None:
        return "-"
    scale = 100 if row.metric and not any(k in row.metric for k in ("loss", "perplexity")) else 1
    text = f"{scale * row.metric_mean:.2f}"
    if row.metric_std is not None:
        text += f" ± {scale * row.metric_std:.2f}"
    return text


def table_rows(result: BenchResult) -> list[list[str]]:
    """The cells of the summary table, one list per row (same order as :data:`TABLE_HEADERS`)."""
    cells = []
    for row in result.rows:
        cells.append([
            row.label,
            "-" if row.trainable_params is None else f"{row.trainable_params:,}",
            _num(None if row.trainable_share is None else 100 * row.trainable_share, 3),
            _num(row.ratio_to_full, 4),
            _metric(row),
            _num(row.peak_memory_mib, 0),
            _num(row.train_memory_mib, 0),
            _num(row.step_time_ms, 1),
            _num(row.throughput, 1),
            _num(row.step_time_ratio, 2),
            _bytes(row.adapter_bytes),
            _num(row.wall_time_s, 0),
        ])
    return cells


def _metric_title(result: BenchResult) -> str:
    metric = next((r.metric for r in result.rows if r.metric), None) or "metric"
    percent = not any(k in metric for k in ("loss", "perplexity"))
    return f"{metric}{' (%)' if percent else ''}, mean ± std over {len(result.config.get('seeds', []))} seed(s)"


def _unsaid_stall(result: BenchResult, row: StrategyResult) -> bool:
    """Whether ``row`` has seeds that did not learn which the verdict does not already name."""
    note = stall_note(row)
    return note is not None and note not in (result.verdict or "")


def format_table(result: BenchResult) -> str:
    """A fixed-width text table of the results, for the terminal."""
    rows = [list(TABLE_HEADERS)] + table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADERS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"metric: {_metric_title(result)}"] + ([f"verdict: {result.verdict}"] if result.verdict else [])
    notes += [f"{r.label}: ERROR {r.error.splitlines()[0]}" for r in result.rows if r.error]
    notes += [stall_note(r) for r in result.rows if _unsaid_stall(result, r)]
    return "\n".join(lines + [""] + notes)


def markdown(result: BenchResult) -> str:
    """``results.md``: the table, how it was measured, and where."""
    env, timing, data = result.environment, result.timing, result.data
    head = "| " + " | ".join(TABLE_HEADERS) + " |"
    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(TABLE_HEADERS))) + "|"
    body = ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    memory_kind = next((r.memory_kind for r in result.rows if r.memory_kind), "cpu-rss")
    memory_note = (
        "peak resident memory (`ru_maxrss`) of each run's own process; \"train MiB\" is the rise from the peak "
        "before training (data tokenised, model loaded and wrapped)" if memory_kind == "cpu-rss" else
        "`torch.cuda.max_memory_allocated` during training; \"train MiB\" is the rise over the memory allocated "
        "before training (model loaded and wrapped)"
    )
    lines = [
        f"# Benchmark: {result.name}",
        "",
        f"Date {env.get('date')}; wall time {result.wall_time_s:.0f} s on {result.device}.",
        "",
        head, rule, *body,
        "",
        *([f"**Verdict.** {result.verdict}", ""] if result.verdict else []),
        f"* metric: {_metric_title(result)}.",
        f"* memory: {memory_note}.",
        f"* step time: median of {timing.get('steps')} timed steps per row after {timing.get('warmup_steps')} "
        f"warm-up steps, rows interleaved round-robin on the same {timing.get('batches')} fixed batches of "
        f"{timing.get('batch_size')} examples; ex/s = batch size / median step time."
        if timing.get("steps") else "* step time: not measured ([timing] steps = 0).",
        "* saved: bytes written by `petl.save` (full fine-tuning: the model's safetensors).",
        "* time s: wall time of one run's process work (loading, training, evaluation, saving), mean over seeds.",
        "* checkpoint: the weights of the last step are evaluated (the evaluation set picks no checkpoint); search "
        "trials are scored at their best validation evaluation by the task metric.",
    ]
    if "bag_of_words_accuracy" in data:
        lines.append(f"* data: petl's synthetic sentiment set ({data.get('train_examples')} training, "
                     f"{data.get('eval_examples')} evaluation examples); a bag-of-words logistic regression "
                     f"reaches {100 * data['bag_of_words_accuracy']:.1f}% on it.")
    elif data:
        lines.append(f"* data: {data.get('train')} ({data.get('train_examples')} examples), evaluated on "
                     f"{data.get('eval')} ({data.get('eval_examples')} examples), max length {data.get('max_length')}.")
    if "group_by_length" in data:
        lines.append("* batches: " + ("length-grouped (`[train] group_by_length = true`)." if data["group_by_length"]
                                      else "uniformly random (length grouping off)."))
    for row in result.rows:
        if row.error:
            lines.append(f"* {row.label} failed: {row.error.splitlines()[0]}")
        if _unsaid_stall(result, row):
            lines.append(f"* {stall_note(row)}.")
    for row in result.rows:  # every evaluation metric, e.g. exact match next to question answering's F1
        if row.eval_means:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row.eval_means.items())
            lines.append(f"* {row.label} evaluation: {shown}.")
    lines += ["", "## Rows", "",
              "| strategy | name | options | learning rate | precision | optimizer | 8-bit | steps |",
              "|:---|:---|:---|---:|:---|:---|:---|---:|"]
    for row in result.rows:
        options = ", ".join(f"{k}={v}" for k, v in row.options.items()) or "-"
        rate = "trainer default" if row.learning_rate is None else f"{row.learning_rate:g}"
        lines.append(f"| {row.label} | {row.strategy} | {options} | {rate} | {row.mixed_precision} | "
                     f"{row.optimizer} | {'yes' if row.load_in_8bit else 'no'} | {row.global_steps or '-'} |")
    lines += ["", *uncertainty_section(result), *search_section(result), *environment_section(env)]
    return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def csv_text(result: BenchResult) -> str:
    """``results.csv``: one line per row; options, seeds and per-seed values as JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in result.rows:
        values = row.to_dict()
        writer.writerow([_csv_value(values[column]) for column in CSV_COLUMNS])
    return buffer.getvalue()


def write_reports(result: BenchResult, folder: str | os.PathLike[str], *, plots: bool = True) -> list[Path]:
    """Write results.json, results.csv, results.md and (with ``plots``) the PNG plots.

    Returns:
        The paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("results.json", json.dumps(result.to_dict(), indent=2, sort_keys=False) + "\n"),
        ("results.csv", csv_text(result)),
        ("results.md", markdown(result)),
    ):
        atomic_write_text(folder / name, text)
        written.append(folder / name)
    if plots:
        written += write_plots(result, folder)
    return written


def write_plots(result: BenchResult, folder: Path) -> list[Path]:
    """The three PNG plots (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = result.rows
    labels = [r.label for r in rows]
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in rows:
        if row.trainable_params and row.metric_mean is not None:
            low = row.metric_mean - (row.metric_min if row.metric_min is not None else row.metric_mean)
            high = (row.metric_max if row.metric_max is not None else row.metric_mean) - row.metric_mean
            ax.errorbar([row.trainable_params], [row.metric_mean], yerr=[[low], [high]], fmt="o", capsize=3)
            ax.annotate(row.label, (row.trainable_params, row.metric_mean), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(next((r.metric for r in rows if r.metric), "metric"))
    ax.set_title(f"{result.name}: task metric vs trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    paths.append(_save(fig, folder / PLOTS[0]))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    load = [r.memory_after_load_mib or 0.0 for r in rows]
    train = [r.train_memory_mib or 0.0 for r in rows]
    ax.bar(labels, load, label="before training (model loaded)")
    ax.bar(labels, train, bottom=load, label="added by training")
    kind = next((r.memory_kind for r in rows if r.memory_kind), "cpu-rss")
    ax.set_ylabel("peak RSS of the run (MiB)" if kind == "cpu-rss" else "CUDA max allocated (MiB)")
    ax.set_title(f"{result.name}: peak memory per strategy")
    ax.legend()
    paths.append(_save(fig, folder / PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    medians = [r.step_time_ms or 0.0 for r in rows]
    errors = [[m - (r.step_time_ms_min or m) for m, r in zip(medians, rows, strict=True)],
              [(r.step_time_ms_max or m) - m for m, r in zip(medians, rows, strict=True)]]
    ax.bar(labels, medians, yerr=errors, capsize=3)
    ax.set_ylabel("median training step (ms)")
    ax.set_title(f"{result.name}: step time (interleaved, batch {result.timing.get('batch_size')})")
    paths.append(_save(fig, folder / PLOTS[2]))

    pareto_plot(result, folder / PLOTS[3])
    paths.append(folder / PLOTS[3])
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    for label in fig.axes[0].get_xticklabels():
        label.set_rotation(20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
