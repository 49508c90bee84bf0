"""Percentiles, bootstrap intervals and paired tests for the gates; pure numpy, no I/O.

Written by hand rather than taken from scipy.stats: the plugin must not pull scipy into every CI
image, and two pieces here are faster than the generic routines (an O(1)-per-resample bootstrap
of a percentile, and a multinomial bootstrap for discrete paired differences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray
SeedLike = int | np.random.Generator | None

SUMMARY_QUANTILES = (50, 90, 95, 99)
DEFAULT_RESAMPLES = 4000
_CHUNK_ELEMENTS = 4_000_000  # index-matrix cells per chunk of a brute-force bootstrap (~32 MB)


def as_sample(values: ArrayLike, name: str = "sample") -> np.ndarray:
    """A 1-D float array with no NaN/inf, or a ValueError saying what to fix."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a statistic needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: drop failed requests/items before computing statistics")
    return arr


def rng_from(seed: SeedLike) -> np.random.Generator:
    """A numpy Generator: reuse one that is passed, else seed a fresh one (None = OS entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_q(q: float) -> float:
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q!r} must lie in [0, 100] (e.g. 95 for p95)")
    return float(q)


def percentile(values: ArrayLike, q: float) -> float:
    """The q-th percentile (0-100), numpy's default linear interpolation between order statistics.

    Linear ("type 7") is what numpy, pandas and vLLM's bench report, so numbers here match theirs.
    """
    return float(np.percentile(as_sample(values), _check_q(q)))


def percentiles(values: ArrayLike) -> dict[str, float]:
    """p50/p90/p95/p99 of a sample, keyed "p50" ... "p99"."""
    arr = as_sample(values)
    return {f"p{q}": float(v) for q, v in zip(SUMMARY_QUANTILES, np.percentile(arr, SUMMARY_QUANTILES))}


def normal_quantile(p: float) -> float:
    """Φ⁻¹(p) of the standard normal."""
    return NormalDist().inv_cdf(p)


def student_t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with (possibly fractional, ≥ 1) degrees of freedom.

    Why not an expansion: Welch degrees of freedom can be small and fractional. With
    θ = atan(t/√df) the density of θ is ∝ cos^(df-1) θ on (-π/2, π/2), smooth and bounded for
    df ≥ 1, so a fine cumulative trapezoid inverted by interpolation is accurate to ~1e-8.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} must lie in (0, 1)")
    if math.isinf(df) or df > 1e7:
        return normal_quantile(p)
    df = max(float(df), 1.0)
    theta = np.linspace(0.0, math.pi / 2, 200_001)
    dens = np.cos(theta) ** (df - 1.0)
    cum = np.concatenate(([0.0], np.cumsum((dens[1:] + dens[:-1]) * 0.5 * (theta[1] - theta[0]))))
    cum /= cum[-1]  # self-normalised: the half-distribution integrates to exactly 1
    target = abs(2.0 * p - 1.0)  # P(|T| <= t)
    t = math.sqrt(df) * math.tan(float(np.interp(target, cum, theta)))
    return math.copysign(t, p - 0.5)


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with a two-sided confidence interval [low, high]."""

    estimate: float
    low: float
    high: float
    confidence: float
    se: float  # standard error behind the interval (bootstrap SD or analytic)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _percentile_interval(estimate: float, reps: np.ndarray, confidence: float) -> Interval:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1), e.g. 0.95")
    lo, hi = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(estimate), float(lo), float(hi), confidence, float(np.std(reps, ddof=1)))


def bootstrap_percentile_replicates(values: ArrayLike, q: float, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the q-th percentile, drawn exactly in O(1) per resample.

    A resample's i-th order statistic is sorted[floor(n·U_(i))] with U_(i) the i-th order statistic
    of n uniforms, which is Beta(i, n-i+1); the next one is U_(i) + (1-U_(i))·Beta(1, n-i). So the two
    order statistics the interpolated percentile needs are drawn directly, not by resampling n values.
    """
    xs = np.sort(as_sample(values))
    n = xs.size
    h = (n - 1) * _check_q(q) / 100.0
    k = min(int(math.floor(h)), n - 1)
    frac = h - k
    r = k + 1  # 1-based rank of the lower order statistic
    u1 = rng.beta(r, n - r + 1, size=n_resamples)
    lower = xs[np.minimum((n * u1).astype(np.int64), n - 1)]
    if frac <= 0.0 or r >= n:
        return lower
    u2 = u1 + (1.0 - u1) * rng.beta(1, n - r, size=n_resamples)
    upper = xs[np.minimum((n * u2).astype(np.int64), n - 1)]
    return lower + frac * (upper - lower)


def bootstrap_percentile_ci(
    values: ArrayLike, q: float, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: SeedLike = 0
) -> Interval:
    """Percentile-bootstrap CI of the q-th percentile of one sample."""
    reps = bootstrap_percentile_replicates(values, q, n_resamples, rng_from(seed))
    return _percentile_interval(percentile(values, q), reps, confidence)


def bootstrap_percentile_diff_ci(
    candidate: ArrayLike,
    incumbent: ArrayLike,
    q: float,
    *,
    relative: bool = False,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: SeedLike = 0,
) -> Interval:
    """CI of percentile(candidate) − percentile(incumbent) (or their ratio − 1) for independent samples."""
    rng = rng_from(seed)
    c_reps = bootstrap_percentile_replicates(candidate, q, n_resamples, rng)
    i_reps = bootstrap_percentile_replicates(incumbent, q, n_resamples, rng)
    c, i = percentile(candidate, q), percentile(incumbent, q)
    if not relative:
        return _percentile_interval(c - i, c_reps - i_reps, confidence)
    if i <= 0 or np.any(i_reps <= 0):
        raise ValueError(f"incumbent p{q:g} is {i!r}: a relative change needs a positive incumbent statistic")
    return _percentile_interval(c / i - 1.0, c_reps / i_reps - 1.0, confidence)


def paired_differences(candidate: ArrayLike, baseline: ArrayLike) -> np.ndarray:
    """candidate − baseline per item; both must score the same items in the same order."""
    c, b = as_sample(candidate, "candidate scores"), as_sample(baseline, "baseline scores")
    if c.shape != b.shape:
        raise ValueError(
            f"paired samples differ in length ({c.size} candidate vs {b.size} baseline): "
            "score both targets on the same items, in the same order"
        )
    return c - b


def bootstrap_mean_replicates(values: ArrayLike, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of a sample mean.

    Few distinct values (paired 0/1 outcomes give -1/0/+1) are resampled as multinomial counts over
    the distinct values, O(distinct) per resample and the same distribution as index resampling.
    """
    d = as_sample(values)
    n = d.size
    vals, counts = np.unique(d, return_counts=True)
    if vals.size <= 64:
        weights = rng.multinomial(n, counts / n, size=n_resamples)
        return weights @ vals / n
    reps = np.empty(n_resamples)
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        reps[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return reps


def paired_bootstrap_mean_diff_ci(
    candidate: ArrayLike,
    baseline: ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: SeedLike = 0,
) -> Interval:
    """Paired-bootstrap CI of mean(candidate − baseline): items are resampled, pairs kept together."""
    d = paired_differences(candidate, baseline)
    reps = bootstrap_mean_replicates(d, n_resamples, rng_from(seed))
    return _percentile_interval(float(d.mean()), reps, confidence)


def welch_relative_mean_diff_ci(candidate: ArrayLike, incumbent: ArrayLike, *, confidence: float = 0.95) -> Interval:
    """CI of mean(candidate)/mean(incumbent) − 1 for few independent runs (delta method, Welch df).

    Why not the bootstrap: per-run throughput gives 3-10 values a side, where a bootstrap interval
    is too narrow; the t interval is honest at that size.
    """
    c, i = as_sample(candidate, "candidate"), as_sample(incumbent, "incumbent")
    if c.size < 2 or i.size < 2:
        raise ValueError("a mean comparison needs at least 2 values per side (repeat the run)")
    mc, mi = float(c.mean()), float(i.mean())
    if mi <= 0 or mc <= 0:
        raise ValueError(f"means must be positive for a relative change (candidate {mc}, incumbent {mi})")
    a, b = c.var(ddof=1) / (c.size * mc**2), i.var(ddof=1) / (i.size * mi**2)
    ratio = mc / mi
    se = ratio * math.sqrt(a + b)
    df = math.inf if a + b == 0 else (a + b) ** 2 / (a**2 / (c.size - 1) + b**2 / (i.size - 1))
    t = student_t_quantile((1 + confidence) / 2, df)
    return Interval(ratio - 1.0, ratio - 1.0 - t * se, ratio - 1.0 + t * se, confidence, se)


def relative_mean_vs_value_ci(
    candidate: ArrayLike, reference: float, *, reference_se: float = 0.0, confidence: float = 0.95
) -> Interval:
    """t interval of mean(candidate)/reference − 1 for a stored reference (with its SE, if recorded)."""
    c = as_sample(candidate, "candidate")
    if c.size < 2:
        raise ValueError("a mean comparison needs at least 2 candidate values (repeat the run)")
    if reference <= 0:
        raise ValueError(f"stored value {reference!r} must be positive for a relative comparison")
    ratio = float(c.mean()) / reference
    # delta method for a ratio; the t df of the candidate side keeps it honest for few runs
    se = math.sqrt((float(c.std(ddof=1)) / math.sqrt(c.size) / reference) ** 2 + (ratio * reference_se / reference) ** 2)
    t = student_t_quantile((1 + confidence) / 2, c.size - 1)
    return Interval(ratio - 1.0, ratio - 1.0 - t * se, ratio - 1.0 + t * se, confidence, se)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if p <= 0.0 else 0.0
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1)))))
    i = np.arange(0, k + 1)
    logpmf = log_fact[n] - log_fact[i] - log_fact[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logpmf.max()
    return float(min(1.0, math.exp(top) * np.exp(logpmf - top).sum()))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0.0 or p >= 1.0:
        return 0.0 if p <= 0.0 else float(k <= n)
    return binomial_cdf(n - k, n, 1.0 - p)


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a binomial rate k/n; `n` may be an effective (fractional) sample size.

    Unlike the normal interval it stays inside [0, 1] and is not degenerate at k = 0 (upper bound
    ≈ z²/(n + z²)); n = 0 gives the uninformative [0, 1].
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1), e.g. 0.95")
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return Interval(0.0, 0.0, 1.0, confidence, math.inf)
    z = normal_quantile((1.0 + confidence) / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: rounding would leave 1e-19 above 0
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, low, high, confidence, math.sqrt(p * (1.0 - p) / n))


@dataclass(frozen=True, slots=True)
class McNemarResult:
    """Exact McNemar test of paired 0/1 outcomes; only discordant items carry information."""

    losses: int  # baseline correct, candidate wrong
    wins: int  # baseline wrong, candidate correct
    p_two_sided: float
    p_candidate_worse: float  # one-sided, H1: candidate loses more items than it wins
    p_candidate_better: float

    @property
    def discordant(self) -> int:
        return self.losses + self.wins


def is_binary(values: np.ndarray) -> bool:
    """True when every value is 0 or 1."""
    return bool(np.all((values == 0) | (values == 1)))


def mcnemar_exact(baseline_correct: ArrayLike, candidate_correct: ArrayLike) -> McNemarResult:
    """Exact (binomial) McNemar test: under no change each discordant item is a fair coin."""
    b, c = as_sample(baseline_correct, "baseline outcomes"), as_sample(candidate_correct, "candidate outcomes")
    paired_differences(c, b)  # same-length check with the helpful message
    if not (is_binary(b) and is_binary(c)):
        raise ValueError("McNemar needs 0/1 outcomes per item (correct/incorrect)")
    losses = int(np.sum((b == 1) & (c == 0)))
    wins = int(np.sum((b == 0) & (c == 1)))
    m = losses + wins
    two = min(1.0, 2.0 * binomial_cdf(min(losses, wins), m, 0.5)) if m else 1.0
    return McNemarResult(losses, wins, two, binomial_cdf(wins, m, 0.5), binomial_cdf(losses, m, 0.5))
