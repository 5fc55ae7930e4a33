"""The benchmark's answer in one sentence, and which rows are worth their cost (Pareto front).

Verdict: among the strategies whose mean metric is within ``tolerance`` points of full
fine-tuning's (percentage points for accuracy and F1, plain units for perplexity and
loss; "within" means at most that much worse), the one with the lowest peak memory:

    "The best strategy within 1.0 point of full fine-tuning at the lowest memory is lora
    (84.86 vs 86.24, -1.38 points, 95% CI -2.1 to -0.7; 1,552 MiB vs 1,810 MiB)."

It says so when no strategy is within the tolerance, and when the paired difference
from full fine-tuning cannot be told apart from noise (its interval contains 0). Rows
with a seed that did not learn (no better than a constant prediction, see
:func:`stall_note`) are named after the sentence: their mean counts a failed run.

Pareto front: a row is dominated on a cost (trainable parameters, peak memory, step time)
when another row has a metric at least as good and a cost at most as high, one of the
two strictly. The plot (:func:`petl.bench.report.write_plots`) marks dominated rows.
"""

from __future__ import annotations

from petl.bench.results import BenchResult, StrategyResult
from petl.training.evaluation import lower_is_better

__all__ = [
    "COSTS", "dominated", "pareto_plot", "points", "search_section", "stall_note", "uncertainty_section", "verdict",
]

COSTS = {"trainable_params": "trainable parameters", "peak_memory_mib": "peak memory (MiB)",
         "step_time_ms": "step time (ms)"}
"""The costs a metric is weighed against in the Pareto plot, and their axis labels."""


def points(metric: str) -> float:
    """How many points one unit of ``metric`` is: 100 for shares (accuracy, F1), 1 for loss and perplexity."""
    return 1.0 if lower_is_better(metric) else 100.0


def _better_or_equal(a: float, b: float, metric: str) -> bool:
    return a <= b if lower_is_better(metric) else a >= b


def dominated(rows: list[StrategyResult], cost: str) -> set[str]:
    """The labels of rows that another row beats on the metric and ``cost`` together."""
    valid = [r for r in rows if r.metric_mean is not None and getattr(r, cost) is not None]
    out = set()
    for row in valid:
        metric = row.metric or ""
        for other in valid:
            if other is row:
                continue
            good = _better_or_equal(other.metric_mean, row.metric_mean, metric)  # type: ignore[arg-type]
            cheap = getattr(other, cost) <= getattr(row, cost)
            strict = other.metric_mean != row.metric_mean or getattr(other, cost) < getattr(row, cost)
            if good and cheap and strict:
                out.add(row.label)
                break
    return out


def _memory(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MiB"


def stall_note(row: StrategyResult) -> str | None:
    """Which seeds of ``row`` did not learn, e.g. ``"lora: seed 2 did not learn (50.92; always predicting
    the most frequent label scores 50.92)"``; ``None`` when every seed learned or no baseline is known."""
    if not row.stalled_seeds or row.constant_metric is None or row.metric is None:
        return None
    scale = points(row.metric)
    by_seed = dict(zip(row.seeds, row.metric_values, strict=False))
    scores = ", ".join(f"{scale * by_seed[s]:.2f}" for s in row.stalled_seeds if s in by_seed)
    which = "seed" if len(row.stalled_seeds) == 1 else "seeds"
    return (f"{row.label}: {which} {', '.join(map(str, row.stalled_seeds))} did not learn ({scores}; always "
            f"predicting the most frequent label scores {scale * row.constant_metric:.2f})")


def verdict(result: BenchResult, tolerance: float = 1.0) -> str | None:
    """The one-sentence verdict (see the module docstring); ``None`` without a full fine-tuning row with a metric."""
    sentence = _verdict(result, tolerance)
    stalls = [note for note in map(stall_note, result.rows) if note]
    if sentence is None or not stalls:
        return sentence
    return (f"{sentence} Beware, {'; '.join(stalls)}: a mean over a failed run says little about the strategy, "
            "so rerun such a row at a lower learning rate before reading the comparison.")


def _verdict(result: BenchResult, tolerance: float) -> str | None:
    full = next((r for r in result.rows if r.strategy == "full" and r.metric_mean is not None), None)
    if full is None or full.metric is None:
        return None
    metric, scale = full.metric, points(full.metric)
    sign = -1.0 if lower_is_better(metric) else 1.0  # gap > 0: worse than full fine-tuning
    others = [r for r in result.rows if r is not full and r.metric_mean is not None]
    if not others:
        return None
    gaps = {r.label: sign * scale * (full.metric_mean - r.metric_mean) for r in others}  # type: ignore[operator]
    unit = "point" if tolerance == 1 else "points"
    within = [r for r in others if gaps[r.label] <= tolerance + 1e-12]
    if not within:
        closest = min(others, key=lambda r: gaps[r.label])
        return (f"No strategy is within {tolerance:g} {unit} of full fine-tuning ({scale * full.metric_mean:.2f}); "
                f"the closest is {closest.label} at {scale * closest.metric_mean:.2f}, "  # type: ignore[operator]
                f"{gaps[closest.label]:.2f} points below{_noise(closest, scale)}.")
    best = min(within, key=lambda r: (r.peak_memory_mib if r.peak_memory_mib is not None else float("inf"),
                                      gaps[r.label]))
    difference = f"{-gaps[best.label]:+.2f} points"
    if best.diff_ci is not None:
        difference += f", 95% CI {scale * best.diff_ci[0]:+.2f} to {scale * best.diff_ci[1]:+.2f}"
    return (f"The best strategy within {tolerance:g} {unit} of full fine-tuning at the lowest memory is "
            f"{best.label} ({scale * best.metric_mean:.2f} vs {scale * full.metric_mean:.2f}, "  # type: ignore[operator]
            f"{difference}; {_memory(best.peak_memory_mib)} vs {_memory(full.peak_memory_mib)})"
            f"{_noise(best, scale)}.")


def _noise(row: StrategyResult, scale: float) -> str:
    if row.indistinguishable is None:
        return "; with one seed there is no interval to tell it from noise" if len(row.seeds) < 2 else ""
    if row.indistinguishable:
        return "; its difference from full fine-tuning cannot be told apart from noise (the 95% interval contains 0)"
    return ""


def _pm(value: float | None, scale: float, signed: bool = False) -> str:
    return "-" if value is None else (f"{scale * value:+.2f}" if signed else f"{scale * value:.2f}")


def uncertainty_section(result: BenchResult) -> list[str]:
    """Markdown: each row's mean with its 95% interval and its paired difference from full fine-tuning."""
    metric = next((r.metric for r in result.rows if r.metric), None)
    if metric is None:
        return []
    scale = points(metric)
    lines = ["## Uncertainty", "",
             f"{metric} in points, {int(100 * 0.95)}% Student t intervals over the seeds; the difference is paired "
             "by seed with full fine-tuning (same seeds), and \"noise\" marks an interval that contains 0.", "",
             "| strategy | seeds | mean | 95% CI | vs full | 95% CI of the difference | tell apart? |",
             "|:---|---:|---:|:---|---:|:---|:---|"]
    for row in result.rows:
        ci = "-" if row.metric_ci is None else f"{_pm(row.metric_ci[0], scale)} to {_pm(row.metric_ci[1], scale)}"
        dci = "-" if row.diff_ci is None else (
            f"{_pm(row.diff_ci[0], scale, True)} to {_pm(row.diff_ci[1], scale, True)}")
        tell = {None: "-", True: "no (noise)", False: "yes"}[row.indistinguishable]
        lines.append(f"| {row.label} | {len(row.seeds)} | {_pm(row.metric_mean, scale)} | {ci} | "
                     f"{_pm(row.diff_to_full, scale, True)} | {dci} | {tell} |")
    return lines + [""]


def search_section(result: BenchResult) -> list[str]:
    """Markdown: what the ``[search]`` chose for each row, and every trial."""
    searched = [r for r in result.rows if r.search]
    if not searched:
        return []
    first = searched[0].search or {}
    lines = ["## Search", "",
             f"Optuna, {first.get('trials_requested')} trials per row, {first.get('sampler')} sampler, "
             f"{first.get('pruner')} pruning on the validation loss; trials scored by {first.get('metric')}"
             + (f" (the mean of {first['trial_seeds']} seeded runs)" if first.get("trial_seeds", 1) > 1 else "")
             + " on a "
             f"validation split of {100 * first.get('validation_fraction', 0):.0f}% carved from the training data "
             "(the evaluation set is not read). Storage: " + f"`{first.get('storage')}`.", "",
             "| strategy | trial | state | params | validation score | chosen |", "|:---|---:|:---|:---|---:|:---|"]
    for row in searched:
        record = row.search or {}
        for trial in record.get("trials", []):
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in trial["params"].items())
            score = "-" if trial.get("score") is None else f"{trial['score']:.4f}"
            if trial.get("seed_scores") and len(trial["seed_scores"]) > 1:
                score += " (" + ", ".join(f"{x:.4f}" for x in trial["seed_scores"]) + ")"
            chosen = "yes" if trial["number"] == record.get("chosen_trial") else ""
            lines.append(f"| {row.label} | {trial['number']} | {trial['state'].lower()} | {params} | {score} | "
                         f"{chosen} |")
    return lines + [""]


def pareto_plot(result: BenchResult, path: object) -> None:
    """``pareto.png``: the metric against each cost, one panel each, dominated rows hollow and greyed."""
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r.metric_mean is not None]
    metric = next((r.metric for r in rows if r.metric), "metric")
    scale = points(metric) if metric != "metric" else 1.0
    fig, axes = plt.subplots(1, len(COSTS), figsize=(13.5, 4.2), sharey=True)
    for ax, (cost, label) in zip(axes, COSTS.items(), strict=True):
        beaten = dominated(rows, cost)
        for row in rows:
            x = getattr(row, cost)
            if x is None:
                continue
            low, high = row.metric_ci if row.metric_ci is not None else (row.metric_mean, row.metric_mean)
            y = scale * row.metric_mean  # type: ignore[operator]
            hollow = row.label in beaten
            ax.errorbar([x], [y], yerr=[[y - scale * low], [scale * high - y]], fmt="o", capsize=3,
                        mfc="white" if hollow else None, color="0.6" if hollow else None)
            ax.annotate(row.label + (" (dominated)" if hollow else ""), (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        if cost == "trainable_params":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"{metric} (points, 95% CI)")
    fig.suptitle(f"{result.name}: metric against cost (hollow: another row is better and cheaper)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
