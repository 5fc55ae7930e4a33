"""Intervals over seeds, paired differences from full fine-tuning, the verdict and the Pareto front,
against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from petl.bench.results import BenchResult, StrategyResult, add_differences
from petl.bench.stats import majority_share, mean_interval, paired_difference, stalled_seeds, t_quantile
from petl.bench.verdict import dominated, stall_note, verdict

# Student t 0.975 quantiles from a printed table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_table(df: int) -> None:
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=6e-4)
    assert t_quantile(0.025, df) == pytest.approx(-T_TABLE[df], abs=6e-4)


def test_t_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 25, 200):
        for q in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)


def test_interval_of_three_values_by_hand() -> None:
    # mean 0.83; deviations -0.03, -0.01, 0.04: sd = sqrt(0.0026 / 2) = 0.0360555; half = 4.30265 * sd / sqrt(3)
    interval = mean_interval([0.80, 0.82, 0.87])
    assert interval is not None and interval.n == 3
    assert interval.mean == pytest.approx(0.83) and interval.sd == pytest.approx(math.sqrt(0.0013))
    assert interval.low == pytest.approx(0.83 - 0.0895669, abs=1e-6)
    assert interval.high == pytest.approx(0.83 + 0.0895669, abs=1e-6)
    single = mean_interval([0.5])
    assert single is not None and single.low is None and single.contains_zero is None
    assert mean_interval([]) is None


def test_paired_difference_by_hand_pairs_by_seed() -> None:
    # differences (seed 0, 1, 2) = -0.02, 0.00, -0.03: mean -0.016667, sd 0.0152753, half 0.0379460
    diff = paired_difference([0.85, 0.84, 0.85], [1, 0, 2], [0.86, 0.85, 0.88], [0, 1, 2])
    assert diff is not None
    assert diff.mean == pytest.approx(-0.05 / 3) and diff.sd == pytest.approx(0.0152753, abs=1e-6)
    assert diff.low == pytest.approx(-0.05 / 3 - 0.0379460, abs=1e-6) and diff.contains_zero is True
    clear = paired_difference([0.70, 0.71, 0.72], [0, 1, 2], [0.86, 0.85, 0.88], [0, 1, 2])
    assert clear is not None and clear.contains_zero is False
    assert paired_difference([0.7], [5], [0.8], [0]) is None  # no shared seed


def _row(label: str, strategy: str, values: list[float], memory: float, step: float = 100.0,
         params: int = 1000) -> StrategyResult:
    row = StrategyResult(label=label, strategy=strategy, options={}, learning_rate=None, mixed_precision="no",
                         optimizer="adamw", load_in_8bit=False, metric="eval_accuracy", metric_values=values,
                         metric_mean=sum(values) / len(values), seeds=list(range(len(values))),
                         peak_memory_mib=memory, step_time_ms=step, trainable_params=params)
    return row


def _result(*rows: StrategyResult) -> BenchResult:
    add_differences(list(rows))
    return BenchResult(name="hand", rows=list(rows), config={}, environment={}, wall_time_s=0.0, device="cpu")


def test_verdict_picks_the_cheapest_row_within_the_tolerance() -> None:
    result = _result(
        _row("full", "full", [0.860, 0.862, 0.858], 1800),
        _row("lora", "lora", [0.856, 0.854, 0.855], 1500),  # 0.5 points below
        _row("bottleneck", "bottleneck", [0.850, 0.854, 0.852], 1300),  # 0.8 points below, least memory within 1
        _row("prefix", "prefix", [0.800, 0.801, 0.799], 1200),  # 6 points below
    )
    text = verdict(result, 1.0)
    assert text is not None
    assert text.startswith("The best strategy within 1 point of full fine-tuning at the lowest memory is bottleneck "
                           "(85.20 vs 86.00, -0.80 points, 95% CI")
    assert "cannot be told apart" not in text  # bottleneck is below full on every seed: the interval excludes 0
    lenient = verdict(result, 7.0)
    assert lenient is not None and "lowest memory is prefix" in lenient
    none = verdict(result, 0.1)
    assert none is not None and none.startswith("No strategy is within 0.1 points of full fine-tuning (86.00); "
                                                "the closest is lora at 85.50, 0.50 points below")


def test_verdict_says_when_the_difference_is_noise() -> None:
    result = _result(_row("full", "full", [0.86, 0.85, 0.88], 1800), _row("lora", "lora", [0.85, 0.84, 0.85], 1500))
    text = verdict(result, 1.0) or ""
    assert "is lora" in text and "cannot be told apart from noise" in text
    one = _result(_row("full", "full", [0.86], 1800), _row("lora", "lora", [0.859], 1500))
    assert "one seed" in (verdict(one, 1.0) or "")
    assert verdict(_result(_row("lora", "lora", [0.8], 1))) is None  # no full fine-tuning row


def test_dominated_rows() -> None:
    rows = [_row("full", "full", [0.86], 1800, params=22_000_000), _row("lora", "lora", [0.855], 1500, params=150_000),
            _row("adalora", "adalora", [0.85], 1600, params=110_000), _row("prefix", "prefix", [0.80], 1200, params=90)]
    assert dominated(rows, "peak_memory_mib") == {"adalora"}  # lora: better and cheaper
    assert dominated(rows, "trainable_params") == set()  # adalora has fewer parameters than lora
    assert dominated(rows, "step_time_ms") == {"lora", "adalora", "prefix"}  # all 100 ms: full is best


def test_majority_share_is_the_constant_predictors_accuracy() -> None:
    assert majority_share([1, 0, 1, 1]) == 0.75
    assert majority_share([2, 2, 0, 1, 1, 2]) == 0.5
    assert majority_share([]) is None
    assert majority_share([[0, 1], [1]]) is None  # token labels: no single constant accuracy
    assert majority_share([True, False]) is None


def test_a_seed_at_the_constant_baseline_is_stalled() -> None:
    # SST-2's validation set: 444 of 872 sentences are positive; 444 / 872 is what one class everywhere scores.
    baseline = 444 / 872
    assert stalled_seeds([0.8498, 0.8440, 444 / 872], [0, 1, 2], baseline, 872) == [2]
    assert stalled_seeds([0.8498, 445 / 872], [0, 1], baseline, 872) == []  # one example better: it learned something
    assert stalled_seeds([0.30, 0.9], [3, 4], baseline, 872) == [3]  # worse than constant
    assert stalled_seeds([0.5], [0], None) == []


def _stalled_result() -> BenchResult:
    full = _row("full", "full", [0.86, 0.85, 0.85], 1800)
    lora = _row("lora", "lora", [0.85, 0.84, 444 / 872], 1500)
    lora.constant_metric = full.constant_metric = 444 / 872
    lora.stalled_seeds = stalled_seeds(lora.metric_values, lora.seeds, lora.constant_metric, 872)
    return _result(full, _row("bottleneck", "bottleneck", [0.855, 0.845, 0.845], 1300), lora)


def test_verdict_names_the_seeds_that_did_not_learn() -> None:
    result = _stalled_result()
    text = verdict(result, 1.0) or ""
    assert text.startswith("The best strategy within 1 point of full fine-tuning at the lowest memory is bottleneck")
    assert ("Beware, lora: seed 2 did not learn (50.92; always predicting the most frequent label scores 50.92)"
            in text)
    assert stall_note(result.row("bottleneck")) is None
    clean = _result(_row("full", "full", [0.86, 0.85], 1800), _row("lora", "lora", [0.85, 0.84], 1500))
    assert "did not learn" not in (verdict(clean, 1.0) or "")
