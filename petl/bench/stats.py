"""How sure a benchmark is: Student t intervals over seeds and paired differences from full fine-tuning.

For ``n`` seeds with metric values ``x_1 .. x_n`` (mean ``x̄``, sample standard deviation
``s``) the 95% confidence interval of the mean is

    x̄ ± t_{0.975, n-1} · s / √n

with ``t_{q, ν}`` the ``q`` quantile of Student's t distribution with ``ν`` degrees of
freedom. A strategy and full fine-tuning trained on the same seeds (the same head
initialisation, data order and dropout draws) are compared through the per-seed
differences ``d_s = x_s - f_s``: the same interval over the ``d_s`` is much narrower than
the two separate intervals when the seeds move both rows alike. An interval that
contains 0 means these runs cannot tell the strategy from full fine-tuning. With one
seed there is no interval (``None``).

The t quantile is computed here (the regularised incomplete beta function by its
continued fraction, Numerical Recipes §6.4, inverted by bisection), so the harness needs
no SciPy; it agrees with ``scipy.stats.t.ppf`` to about 1e-10.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Interval", "majority_share", "mean_interval", "paired_difference", "stalled_seeds", "t_cdf", "t_quantile"]

LEVEL = 0.95


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``0 < q < 1``)."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}.")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < q:
            low = middle
        else:
            high = middle
        if high - low < 1e-13 * max(1.0, high):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its confidence interval."""

    mean: float
    low: float | None
    """Lower end of the interval; ``None`` with fewer than two values."""
    high: float | None
    n: int
    sd: float | None
    """Sample standard deviation (``n - 1`` in the denominator)."""
    level: float = LEVEL

    @property
    def contains_zero(self) -> bool | None:
        """Whether 0 lies inside the interval (``None`` without one)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """The mean of ``values`` with its Student t interval (``None`` for no values)."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean, n = statistics.fmean(values), len(values)
    if n < 2:
        return Interval(mean=mean, low=None, high=None, n=n, sd=None, level=level)
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean=mean, low=mean - half, high=mean + half, n=n, sd=sd, level=level)


def paired_difference(values: Sequence[float], seeds: Sequence[int], baseline: Sequence[float],
                      baseline_seeds: Sequence[int], level: float = LEVEL) -> Interval | None:
    """The interval of ``values - baseline`` over the seeds both were run with (``None``: no common seed)."""
    ours = dict(zip(seeds, values, strict=True))
    theirs = dict(zip(baseline_seeds, baseline, strict=True))
    common = [seed for seed in seeds if seed in theirs]
    return mean_interval([ours[s] - theirs[s] for s in common], level)


def majority_share(labels: Sequence[Any]) -> float | None:
    """The accuracy of always predicting the most frequent label: the share of ``labels`` equal to it.

    ``None`` for no labels or labels that are not one class per example (lists, as in
    token classification): there the constant predictor has no single accuracy."""
    if not labels or not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        return None
    return max(Counter(labels).values()) / len(labels)


def stalled_seeds(values: Sequence[float], seeds: Sequence[int], baseline: float | None,
                  examples: int | None = None) -> list[int]:
    """The seeds whose metric is no better than ``baseline``, what a constant prediction scores.

    Such a run did not learn the task (it collapsed onto one class, typically from a learning
    rate at the edge of stability); its number says nothing about the strategy's quality at a
    working setting. ``examples`` (the evaluation set's size) allows half an example of slack
    for rounding; without it the comparison is exact up to 1e-9."""
    if baseline is None:
        return []
    slack = 0.5 / examples if examples else 1e-9
    return [seed for seed, value in zip(seeds, values, strict=True) if value <= baseline + slack]
