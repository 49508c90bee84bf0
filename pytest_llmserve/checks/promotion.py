"""Latency/throughput promotion gate: is the candidate build worse than the incumbent, by enough to matter?

Per metric, a CI of the relative change of a statistic (p95 by default) decides among four verdicts:
  regression    the worsening is significant (one-sided α) and could exceed the margin;
  improvement   the mirror image;
  pass          the CI rules out a worsening beyond the margin;
  inconclusive  too few samples, or the CI cannot rule a margin-sized worsening in or out.
Suggested CI exit codes (`EXIT_CODES`): 0 pass/improvement, 1 regression, 2 inconclusive, so a
pipeline can re-run or collect more samples on 2 instead of treating noise as a verdict.

Sample size (benchmarks/gate_simulation.py, lognormal TTFT): with p95/p50 ≈ 1.85, about 1,000 requests
a side catch a 10 % p95 regression 80 % of the time and 2,000 a side 96 %; with p95/p50 ≈ 1.5, 500 a side
suffice. Each check reports what it could detect and how many samples it would need.

Samples must be independent draws: per-request TTFT/E2E, per-interval or per-run throughput. Pooled
per-gap ITL is correlated within a request (and across requests in one batch step), which makes
every interval here too narrow; gate on one ITL/TPOT value per request instead.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

import numpy as np

from .stats import (
    DEFAULT_RESAMPLES,
    ArrayLike,
    Interval,
    SeedLike,
    as_sample,
    bootstrap_percentile_diff_ci,
    bootstrap_percentile_replicates,
    normal_quantile,
    percentile,
    relative_mean_vs_value_ci,
    rng_from,
    welch_relative_mean_diff_ci,
)

Verdict = Literal["pass", "regression", "improvement", "inconclusive"]
EXIT_CODES: Mapping[str, int] = {"pass": 0, "improvement": 0, "regression": 1, "inconclusive": 2}
DEFAULT_MARGIN = 0.10
_TAIL_POINTS = 10  # a percentile gate wants at least this many samples beyond the percentile


def parse_statistic(statistic: str) -> float | None:
    """"p95" → 95.0, "median" → 50.0, "mean" → None; anything else is a ValueError."""
    s = statistic.strip().lower()
    if s == "mean":
        return None
    if s == "median":
        return 50.0
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)", s)
    if not m or not 0 < float(m.group(1)) < 100:
        raise ValueError(f"statistic {statistic!r}: use 'mean', 'median' or a percentile 'p1'..'p99.9' (e.g. 'p95')")
    return float(m.group(1))


def default_min_samples(statistic: str) -> int:
    """Fewest samples per side: 10 beyond a percentile (p95 → 200, p99 → 1000), 3 runs for a mean."""
    q = parse_statistic(statistic)
    if q is None:
        return 3
    return max(20, math.ceil(_TAIL_POINTS / (1 - max(q, 100 - q) / 100) - 1e-9))


@dataclass(frozen=True, slots=True)
class PromotionCheck:
    """One metric's comparison: the relative change with its CI, what it could detect, and the verdict."""

    metric: str
    statistic: str
    higher_is_better: bool
    source: Literal["samples", "stored"]  # two samples, or a candidate sample vs a stored summary value
    n_candidate: int
    n_incumbent: int | None
    candidate_value: float
    incumbent_value: float
    change: Interval  # candidate/incumbent − 1, two-sided (1 − 2α) interval
    margin: float  # relative worsening that matters (tolerance when comparing to a stored value)
    alpha: float
    beta: float
    min_detectable: float  # relative worsening flagged with probability ≥ 1 − β at this n
    min_samples: int
    samples_needed: int  # per side, for power 1 − β against a margin-sized worsening
    verdict: Verdict
    reason: str
    stored_se: bool = False  # source "stored": whether the stored value's own noise is in the interval

    @property
    def worsening(self) -> tuple[float, float, float]:
        """(estimate, low, high) of the change oriented so that positive means worse."""
        c = self.change
        return (-c.estimate, -c.high, -c.low) if self.higher_is_better else (c.estimate, c.low, c.high)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def row(self) -> tuple[str, ...]:
        c = self.change
        n = f"{self.n_candidate}/{self.n_incumbent}" if self.n_incumbent is not None else f"{self.n_candidate}/stored"
        return (
            self.metric, f"{self.statistic} {'↑' if self.higher_is_better else '↓'}",
            f"{self.incumbent_value:.4g}", f"{self.candidate_value:.4g}",
            f"{c.estimate:+.1%} [{c.low:+.1%}, {c.high:+.1%}]",
            f"±{c.half_width:.1%}", f"{self.min_detectable:.1%}", n, self.verdict.upper(),
        )

    def render(self) -> str:
        return PromotionResult((self,)).render()


def _decide(
    metric: str, statistic: str, higher_is_better: bool, source: Literal["samples", "stored"],
    n_c: int, n_i: int | None, cand: float, inc: float, change: Interval,
    margin: float, alpha: float, beta: float, min_samples: int, stored_se: bool = False,
) -> PromotionCheck:
    z_a, z_b = normal_quantile(1 - alpha), normal_quantile(1 - beta)
    se = change.se
    # flagged iff low > 0 and high > margin: power 1−β needs w ≥ (z_a+z_b)·se and w ≥ margin − (z_a−z_b)·se
    min_detectable = max((z_a + z_b) * se, margin - (z_a - z_b) * se)
    n_ref = max(n_c, n_i or 0)
    need = math.ceil(n_ref * ((z_a + z_b) * se / margin) ** 2) if se > 0 else 0
    need = max(need, min_samples)
    est, lo, hi = (-change.estimate, -change.high, -change.low) if higher_is_better else (
        change.estimate, change.low, change.high)
    what = "lower" if higher_is_better else "higher"
    smallest = min(n_c, n_i if n_i is not None else n_c)
    verdict: Verdict
    if smallest < min_samples or math.isnan(lo):
        verdict = "inconclusive"
        reason = (f"{smallest} samples < the {min_samples} a {statistic} needs; collect about {need} per side "
                  f"(for {1 - beta:.0%} power against a {margin:.0%} worsening)")
    elif lo > 0 and hi > margin:
        verdict = "regression"
        reason = (f"{statistic} is {abs(change.estimate):.1%} {what} (worse); CI of the worsening "
                  f"[{lo:+.1%}, {hi:+.1%}] excludes 0 and reaches past the {margin:.0%} margin")
    elif hi <= margin:
        if hi < 0 and lo < -margin:
            verdict = "improvement"
            reason = (f"better by {-est:.1%}; CI [{-hi:+.1%}, {-lo:+.1%}] of the gain excludes 0 "
                      "(record it with --update-baselines so later regressions are measured from here)")
        elif lo > 0:
            verdict = "pass"
            reason = f"worse by {est:.1%}, significant but the CI rules out more than the {margin:.0%} margin"
        else:
            verdict, reason = "pass", f"CI of the worsening [{lo:+.1%}, {hi:+.1%}] stays under the {margin:.0%} margin"
    else:
        verdict = "inconclusive"
        reason = (f"cannot rule a {margin:.0%} worsening in or out (CI of the worsening [{lo:+.1%}, {hi:+.1%}]); "
                  f"collect about {need} samples per side")
    return PromotionCheck(metric, statistic, higher_is_better, source, n_c, n_i, cand, inc, change, margin,
                          alpha, beta, min_detectable, min_samples, need, verdict, reason, stored_se)


decide = _decide  # the four-way verdict from a change interval; the baseline gate (baseline_gate.py) uses it too


def _check_args(margin: float, alpha: float, beta: float) -> None:
    if margin <= 0:
        raise ValueError(f"margin={margin!r} must be a positive relative change, e.g. 0.10 for 10 %")
    if not 0.0 < alpha < 0.5 or not 0.0 < beta < 0.5:
        raise ValueError(f"alpha={alpha!r} and beta={beta!r} must lie in (0, 0.5), e.g. 0.05 and 0.2")


def compare_samples(
    metric: str,
    candidate: ArrayLike,
    incumbent: ArrayLike,
    *,
    higher_is_better: bool = False,
    statistic: str = "p95",
    margin: float = DEFAULT_MARGIN,
    alpha: float = 0.05,
    beta: float = 0.2,
    min_samples: int | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: SeedLike = 0,
) -> PromotionCheck:
    """Compare raw candidate and incumbent samples (independent runs) of one metric.

    Percentiles use a bootstrap of the ratio of the two sample percentiles; "mean" (per-run or
    per-interval throughput) uses a Welch t interval, honest with a handful of runs.
    """
    _check_args(margin, alpha, beta)
    c, i = as_sample(candidate, f"{metric} candidate"), as_sample(incumbent, f"{metric} incumbent")
    q = parse_statistic(statistic)
    conf = 1 - 2 * alpha  # two-sided (1 − 2α): each one-sided decision is at level α
    if q is None:
        cand, inc = float(c.mean()), float(i.mean())
        change = (welch_relative_mean_diff_ci(c, i, confidence=conf) if min(c.size, i.size) >= 2
                  else Interval(cand / inc - 1, math.nan, math.nan, conf, math.nan))
    else:
        cand, inc = percentile(c, q), percentile(i, q)
        change = bootstrap_percentile_diff_ci(c, i, q, relative=True, confidence=conf, n_resamples=n_resamples, seed=seed)
    return _decide(metric, statistic, higher_is_better, "samples", c.size, i.size, cand, inc, change, margin,
                   alpha, beta, min_samples if min_samples is not None else default_min_samples(statistic))


def compare_to_stored(
    metric: str,
    candidate: ArrayLike,
    stored_value: float,
    *,
    higher_is_better: bool = False,
    statistic: str = "p95",
    tolerance: float = DEFAULT_MARGIN,
    stored_se: float | None = None,
    alpha: float = 0.05,
    beta: float = 0.2,
    min_samples: int | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: SeedLike = 0,
) -> PromotionCheck:
    """Compare a candidate sample with a stored summary value (no incumbent samples kept).

    `stored_se`: the standard error of the stored value, recorded with it (e.g. `Interval.se` of its
    bootstrap CI). Without it only the candidate's noise is in the interval, and a value stored from
    one noisy run raises false alarms above α (benchmarks/gate_simulation.py, table c).
    """
    _check_args(tolerance, alpha, beta)
    if not math.isfinite(stored_value) or stored_value <= 0:
        raise ValueError(f"{metric}: stored value {stored_value!r} must be positive; re-record with --update-baselines")
    if stored_se is not None and not (math.isfinite(stored_se) and stored_se >= 0):
        raise ValueError(f"{metric}: stored_se={stored_se!r} must be a finite standard error ≥ 0")
    c = as_sample(candidate, f"{metric} candidate")
    q = parse_statistic(statistic)
    conf = 1 - 2 * alpha
    if q is None:
        cand = float(c.mean())
        change = (relative_mean_vs_value_ci(c, stored_value, reference_se=stored_se or 0.0, confidence=conf)
                  if c.size >= 2 else Interval(cand / stored_value - 1, math.nan, math.nan, conf, math.nan))
    else:
        rng = rng_from(seed)
        cand = percentile(c, q)
        reps = bootstrap_percentile_replicates(c, q, n_resamples, rng)
        # the stored value's own uncertainty, drawn as normal around it (kept positive)
        stored = (np.maximum(stored_value + stored_se * rng.standard_normal(n_resamples), stored_value * 1e-3)
                  if stored_se else stored_value)
        rel = reps / stored - 1.0
        lo, hi = np.quantile(rel, [alpha, 1 - alpha])
        change = Interval(cand / stored_value - 1, float(lo), float(hi), conf, float(np.std(rel, ddof=1)))
    return _decide(metric, statistic, higher_is_better, "stored", c.size, None, cand, float(stored_value), change,
                   tolerance, alpha, beta, min_samples if min_samples is not None else default_min_samples(statistic),
                   stored_se is not None)


@dataclass(frozen=True, slots=True)
class PromotionResult:
    """All metrics of one promotion decision; any regression makes the whole a regression."""

    checks: tuple[PromotionCheck, ...]

    @classmethod
    def of(cls, checks: Iterable[PromotionCheck]) -> PromotionResult:
        return cls(tuple(checks))

    @property
    def verdict(self) -> Verdict:
        verdicts = {c.verdict for c in self.checks}
        if "regression" in verdicts:
            return "regression"
        if "inconclusive" in verdicts or not verdicts:  # nothing compared is not a pass
            return "inconclusive"
        return "improvement" if "improvement" in verdicts else "pass"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def render(self) -> str:
        """A table of every metric, then the reason behind each verdict and the overall verdict."""
        head = ("metric", "stat", "incumbent", "candidate", "change [CI]", "CI ±", "detectable", "n cand/inc",
                "verdict")
        rows = [head] + [c.row() for c in self.checks]
        widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        for c in self.checks:
            conf = c.change.confidence
            against = ("incumbent" if c.source == "samples" else
                       "stored value and its SE" if c.stored_se else "stored value, candidate noise only")
            lines.append(f"- {c.metric}: {c.verdict}: {c.reason} ({conf:.0%} CI vs {against}; margin {c.margin:.0%}, "
                         f"α={c.alpha:g}; detects a {c.min_detectable:.1%} worsening with power {1 - c.beta:.0%})")
        lines.append(f"overall: {self.verdict.upper()} (exit code {self.exit_code}: 0 pass/improvement, "
                     "1 regression, 2 inconclusive)")
        return "\n".join(lines)


def promote(checks: Iterable[PromotionCheck]) -> PromotionResult:
    """Combine per-metric checks into one decision."""
    return PromotionResult.of(checks)
