"""Statistics of the experiment: t intervals, paired comparisons, verdicts with a practical margin,
and Holm's correction within a family of comparisons. Pure functions on numbers (scipy.stats).

    d = asymmetric - baseline, paired by seed; oriented so that "better" is the claim's direction.
    Each comparison has a practical margin m > 0 (differences within +-m do not matter) and three
    one-sided t-tests of the mean paired difference (level ALPHA each, after Holm):

      better        H0: d <= +m rejected  (better by more than the margin)
      worse         H0: d >= -m rejected  (worse by more than the margin)
      equivalent    H0: |d| >= m rejected (two one-sided tests, TOST: within the margin)
      inconclusive  none rejected: more seeds narrow the interval.

The three alternatives are disjoint, so at most one can be shown. Without correction, and with
ALPHA = 0.025, they read off the displayed 95 % interval: wholly above +m, wholly below -m, wholly
inside (-m, +m). Within a family (every comparison of one claim), the p-value of each comparison's
most favoured verdict is Holm-adjusted, and only verdicts whose adjusted p stays below ALPHA stand.

When the paired differences are all equal, the t statistic is undefined (no spread): the comparison
is inconclusive with p = NaN, never a p of 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95  # of every interval shown
ALPHA = 0.025  # one-sided level of each verdict's test (matches the 95 % interval)
VERDICTS = ("better", "equivalent", "worse", "inconclusive")


def finite(values: Iterable) -> np.ndarray:
    """The finite numbers of `values` (None, NaN and inf dropped) as a float array."""
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(x)
    return np.asarray(out, dtype=float)


def no_spread(x: np.ndarray) -> bool:
    """True when every value is the same (up to float rounding): the sd is 0 and t undefined."""
    return len(x) >= 2 and float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.max(np.abs(x))))


def mean_ci(values: Iterable, level: float = LEVEL) -> tuple[int, float, float, float]:
    """(n, mean, lo, hi) of the finite values: Student's t interval (scipy.stats.ttest_1samp);
    lo = hi = NaN when n < 2, lo = hi = mean when all values are equal."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return 1, mean, math.nan, math.nan
    if no_spread(x):
        return n, mean, mean, mean
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(level)
    return n, mean, float(ci.low), float(ci.high)


def paired_differences(x: Sequence, y: Sequence) -> np.ndarray:
    """x - y over the pairs where both are finite (same position = same seed)."""
    out = []
    for a, b in zip(x, y):
        pair = finite([a, b])
        if len(pair) == 2:
            out.append(pair[0] - pair[1])
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class Comparison:
    """One paired comparison, oriented: `diff` > 0 is better (see `judge`)."""

    n: int
    diff: float  # mean of d, in the metric's own sign (e.g. a gap difference: negative is better)
    lo: float  # LEVEL t interval of the mean of d
    hi: float
    p: float  # two-sided paired t-test of d = 0
    margin: float  # practical margin, > 0
    better: str  # "higher" | "lower": which sign of d is better
    p_better: float  # one-sided p of H0 "not better by more than the margin"
    p_worse: float
    p_equivalent: float  # TOST
    effect: float  # standardized mean difference d / sd(d) (Cohen's d_z); NaN without spread
    note: str = ""  # why a comparison could not be judged

    @property
    def candidate(self) -> str:
        """The verdict these data favour most (smallest one-sided p), before any correction."""
        options = {"better": self.p_better, "worse": self.p_worse, "equivalent": self.p_equivalent}
        options = {k: v for k, v in options.items() if math.isfinite(v)}
        return min(options, key=options.get) if options else "inconclusive"

    @property
    def p_candidate(self) -> float:
        return {"better": self.p_better, "worse": self.p_worse,
                "equivalent": self.p_equivalent}.get(self.candidate, math.nan)


def compare(d: Iterable, margin: float, better: str = "higher", level: float = LEVEL) -> Comparison:
    """The paired comparison of differences d (one per seed) with a practical margin > 0."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"the margin must be a positive number, got {margin!r}")
    x = finite(d)
    n, mean, lo, hi = mean_ci(x, level)
    nan = math.nan
    if n < 2:
        return Comparison(n, mean, lo, hi, nan, margin, better, nan, nan, nan, nan,
                          f"{n} paired seed{'s' * (n != 1)}: at least 2 are needed")
    if no_spread(x):
        return Comparison(n, mean, mean, mean, nan, margin, better, nan, nan, nan, nan,
                          "the paired differences are all equal: without spread the t-test is undefined")
    sign = 1.0 if better == "higher" else -1.0
    z = sign * x  # oriented: positive is better
    p = float(stats.ttest_1samp(x, 0.0).pvalue)
    p_better = float(stats.ttest_1samp(z, margin, alternative="greater").pvalue)
    p_worse = float(stats.ttest_1samp(z, -margin, alternative="less").pvalue)
    p_equivalent = max(float(stats.ttest_1samp(z, -margin, alternative="greater").pvalue),
                       float(stats.ttest_1samp(z, margin, alternative="less").pvalue))
    effect = float(x.mean() / x.std(ddof=1))
    return Comparison(n, mean, lo, hi, p, margin, better, p_better, p_worse, p_equivalent, effect)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family):
    sorted ascending p_(1) <= ... <= p_(m), adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = [float(x) for x in pvalues]
    order = sorted((i for i, x in enumerate(p) if math.isfinite(x)), key=lambda i: p[i])
    m = len(order)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def judge_family(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> list[tuple[str, float]]:
    """(verdict, Holm-adjusted p of that verdict) of every comparison of one family."""
    adjusted = holm([c.p_candidate for c in comparisons])
    out = []
    for c, p in zip(comparisons, adjusted):
        out.append((c.candidate, p) if math.isfinite(p) and p < alpha else ("inconclusive", p))
    return out


def log_ratio_comparison(sparse: Sequence[float], dense: Sequence[float], margin: float,
                         level: float = LEVEL) -> dict:
    """Timing pairs (one sparse and one dense time per repeat, interleaved) compared on the log
    scale: d = log(sparse) - log(dense), lower is better, margin log(1 + margin) (e.g. 10 %).
    Returns {"comparison", "speedup" (dense / sparse, geometric mean), "speedup_lo", "speedup_hi"}."""
    d = [math.log(s) - math.log(t) for s, t in zip(sparse, dense) if s and t and s > 0 and t > 0]
    c = compare(d, math.log1p(margin), better="lower", level=level)
    speed = (lambda v: math.exp(-v) if math.isfinite(v) else math.nan)
    return {"comparison": c, "speedup": speed(c.diff), "speedup_lo": speed(c.hi), "speedup_hi": speed(c.lo)}
