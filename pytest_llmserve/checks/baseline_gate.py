"""Run vs stored baseline, per metric: relative change with an interval that includes run-to-run spread.

Both sides are measured in rounds of the same shape (the baseline: `--llmserve-repeats` rounds or more;
the run: as many as the sequential measurement needed). Two estimators:

* per-request latencies (TTFT, TPOT, E2E percentiles): the statistic of all requests pooled; its variance
  is the within-run bootstrap variance plus τ²/rounds, where τ² is the between-round variance of the
  per-round statistic left after its own bootstrap noise, pooled over both sides' rounds and inflated by
  (t/z)² for its few degrees of freedom;
* per-run values (pooled ITL percentiles, throughput): the mean over rounds, with a pooled-variance t
  interval, so the spread between rounds is the whole noise model;
* server starts: a baseline recorded over several starts (`--llmserve-add-start`) labels each round with
  its start. Round-to-round spread is then taken within starts, and the spread between starts left after
  it, σ_s², is added in full to the run (one start of its own) and as Σm²/(Σm)²·σ_s² to the baseline,
  inflated by (t/z)² for its K−1 degrees of freedom. With one start σ_s² cannot be estimated: the gate
  assumes a relative spread (`baseline_gate.start_spread`, default 5 %, measured on the servers here:
  README) for the baseline's start and for the run's, so a shift between pytest runs is not a regression.

The verdict is checks/promotion.py's (`decide`): regression when the worsening is significant at
α/k (k gated metrics, so a test false-alarms at most α) and not ruled below the margin. The sequential
measurement stops on precision alone, (z₁₋α/k + z₁₋β)·se ≤ margin: a margin-sized regression is then
flagged with probability ≥ 1 − β, and because the stopping rule never looks at the estimate, α holds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from .stats import Interval, bootstrap_percentile_replicates, normal_quantile, percentile, student_t_quantile
from .promotion import PromotionCheck, decide, default_min_samples

SAMPLE_FAMILIES = ("ttft_ms", "tpot_ms", "e2e_ms")  # one value per request, kept per round in the sidecar
_SAMPLE_METRIC = re.compile(r"(ttft|tpot|e2e)_(p\d+(?:\.\d+)?)_ms")
_RESAMPLES = 2000


@dataclass(frozen=True)
class Round:
    """One measured round: per-request samples of each family and the round's own metric values."""

    samples: Mapping[str, np.ndarray]
    values: Mapping[str, float]
    start: int = 0  # which server start measured it (0 unless the baseline was recorded over several)

    @property
    def requests(self) -> int:
        return max((len(v) for v in self.samples.values()), default=0)

    @classmethod
    def of(cls, samples: Mapping[str, Sequence[float]], values: Mapping[str, float], start: int = 0) -> Round:
        """A round with NaN/inf samples and values dropped (a request that could not measure a family)."""
        arrays = {k: np.asarray(v, dtype=float) for k, v in samples.items()}
        return cls({k: a[np.isfinite(a)] for k, a in arrays.items()},
                   {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}, start)


@dataclass(frozen=True)
class GateCheck:
    """One metric of one test against its baseline, with what a human needs to judge it."""

    check: PromotionCheck
    gated: bool
    baseline_ci: tuple[float, float]  # 95 % interval of the baseline statistic
    candidate_ci: tuple[float, float]
    run_to_run: float  # relative SD of the statistic between rounds (NaN: not estimable)
    rounds: tuple[int, int]  # baseline, candidate
    requests: tuple[int, int]  # baseline, candidate
    requests_needed: int | None  # candidate requests a decision needs (None: no number suffices)
    precise: bool  # the interval is narrow enough for the margin at the configured power
    starts: int = 1  # server starts the baseline's rounds came from
    start_to_start: float = math.nan  # relative SD between server starts beyond round-to-round (NaN: one start)
    start_spread_assumed: bool = False  # one start: start_to_start is the configured assumption, not a measurement

    @property
    def metric(self) -> str:
        return self.check.metric

    @property
    def verdict(self) -> str:
        return self.check.verdict

    def change_text(self) -> str:
        c = self.check.change
        if math.isnan(c.low):
            return f"{c.estimate:+.1%} [n/a]"
        return f"{c.estimate:+.1%} [{c.low:+.1%}, {c.high:+.1%}]"

    def to_dict(self) -> dict[str, Any]:
        c = self.check
        return {"metric": c.metric, "gated": self.gated, "verdict": c.verdict, "reason": c.reason,
                "baseline": c.incumbent_value, "baseline_ci95": list(self.baseline_ci),
                "measured": c.candidate_value, "measured_ci95": list(self.candidate_ci),
                "change": c.change.estimate, "change_ci": [c.change.low, c.change.high],
                "confidence": c.change.confidence, "margin": c.margin, "alpha": c.alpha,
                "min_detectable": c.min_detectable, "run_to_run": self.run_to_run,
                "rounds": list(self.rounds), "requests": list(self.requests),
                "requests_needed": self.requests_needed, "precise": self.precise, "starts": self.starts,
                "start_to_start": self.start_to_start, "start_spread_assumed": self.start_spread_assumed}


@lru_cache(maxsize=256)
def _t(p: float, df: int) -> float:
    return student_t_quantile(p, df) if df >= 1 else math.inf


def _boot_var(values: np.ndarray, q: float, rng: np.random.Generator) -> float:
    if values.size < 2:
        return math.nan
    return float(np.var(bootstrap_percentile_replicates(values, q, _RESAMPLES, rng), ddof=1))


@dataclass(frozen=True)
class _Side:
    value: float
    var: float  # variance of `value`
    n: int
    rounds: int


def _sample_sides(family: str, q: float, base: Sequence[Round], cand: Sequence[Round], a: float,
                  rng: np.random.Generator) -> tuple[_Side, _Side, float, int]:
    """(baseline, candidate, τ², df of τ²) for a pooled percentile of per-request samples."""
    b_used = [r for r in base if r.samples.get(family) is not None and r.samples[family].size]
    c_used = [r for r in cand if r.samples.get(family) is not None and r.samples[family].size]
    b_rounds, c_rounds = [r.samples[family] for r in b_used], [r.samples[family] for r in c_used]
    b_all, c_all = np.concatenate(b_rounds), np.concatenate(c_rounds)
    ss, df, within = 0.0, 0, []
    for group in _by_start(b_used) + _by_start(c_used):  # round-to-round spread within each server start
        if len(group) >= 2:
            vals = np.array([percentile(r.samples[family], q) for r in group])
            ss += float(np.sum((vals - vals.mean()) ** 2))
            df += len(group) - 1
            within += [_boot_var(r.samples[family], q, rng) for r in group]
    tau2 = math.nan
    if df >= 1:
        w = np.nanmean(within) if within and not all(math.isnan(x) for x in within) else 0.0
        tau2 = max(0.0, ss / df - float(w))
    t2 = 0.0 if math.isnan(tau2) else tau2 * (_t(1 - a, df) / normal_quantile(1 - a)) ** 2
    sb = _Side(percentile(b_all, q), _boot_var(b_all, q, rng) + t2 / len(b_rounds), b_all.size, len(b_rounds))
    sc = _Side(percentile(c_all, q), _boot_var(c_all, q, rng) + t2 / len(c_rounds), c_all.size, len(c_rounds))
    return sb, sc, tau2, df


def _run_sides(metric: str, base: Sequence[Round], cand: Sequence[Round], a: float) -> tuple[_Side, _Side, float, int]:
    """(baseline, candidate, between-round variance, df) for a per-round value (mean over rounds)."""
    b = np.array([r.values[metric] for r in base if metric in r.values])
    c = np.array([r.values[metric] for r in cand if metric in r.values])
    groups = _by_start([r for r in base if metric in r.values]) + _by_start([r for r in cand if metric in r.values])
    ss = sum(float(np.sum((v - v.mean()) ** 2)) for g in groups for v in [np.array([r.values[metric] for r in g])])
    df = sum(len(g) - 1 for g in groups)
    if df < 1 and len(_by_start(base)) >= 2:  # one round per start: the spread of the starts carries all of it
        return (_Side(float(b.mean()), 0.0, sum(r.requests for r in base), b.size),
                _Side(float(c.mean()), 0.0, sum(r.requests for r in cand), c.size), math.nan, 0)
    raw = ss / df if df >= 1 else math.nan
    s2 = raw * (_t(1 - a, df) / normal_quantile(1 - a)) ** 2 if df >= 1 else math.nan
    nb, nc = sum(r.requests for r in base), sum(r.requests for r in cand)
    return (_Side(float(b.mean()), s2 / b.size, nb, b.size), _Side(float(c.mean()), s2 / max(1, c.size), nc, c.size),
            raw, df)


def _by_start(rounds: Sequence[Round]) -> list[list[Round]]:
    groups: dict[int, list[Round]] = {}
    for r in rounds:
        groups.setdefault(r.start, []).append(r)
    return [groups[k] for k in sorted(groups)]


@dataclass(frozen=True)
class StartSpread:
    """Between-start variance of a metric's per-round value in the baseline, beyond its within-start spread."""

    var: float  # σ_s² (absolute units of the metric); NaN with one start
    starts: int
    df: int  # K − 1
    weight: float  # Σm²/(Σm)²: the share of σ_s² left in the baseline's pooled value


def start_spread(metric: str, baseline: Sequence[Round]) -> StartSpread:
    """σ_s² = max(0, var(start means) − s_w²·mean(1/m)); with no within-start replicate, all of var(start means)."""
    groups = [[r.values[metric] for r in g if metric in r.values] for g in _by_start(baseline)]
    groups = [g for g in groups if g]
    k = len(groups)
    if k < 2:
        return StartSpread(math.nan, k, 0, 1.0)
    means = np.array([np.mean(g) for g in groups])
    sizes = np.array([len(g) for g in groups], dtype=float)
    df_w = int(sum(len(g) - 1 for g in groups))
    s_w2 = sum(float(np.sum((np.array(g) - np.mean(g)) ** 2)) for g in groups) / df_w if df_w else 0.0
    var = max(0.0, float(np.var(means, ddof=1)) - s_w2 * float(np.mean(1.0 / sizes)))
    return StartSpread(var, k, k - 1, float(np.sum(sizes**2) / np.sum(sizes) ** 2))


def compare_rounds(
    metric: str,
    baseline: Sequence[Round],
    candidate: Sequence[Round],
    *,
    higher_is_better: bool,
    margin: float | None,
    alpha: float,
    power: float,
    info_margin: float = 0.10,
    seed: int = 0,
    assumed_start_spread: float = 0.0,
) -> GateCheck | None:
    """The metric's verdict from rounds of both sides; None when either side lacks the metric.

    `assumed_start_spread` (relative SD) stands in for σ_s when the baseline has one start (0: left out)."""
    gated = margin is not None
    margin = margin if margin is not None else info_margin
    beta = 1.0 - power
    m = _SAMPLE_METRIC.fullmatch(metric)
    family = f"{m.group(1)}_ms" if m else None
    has_samples = family is not None and all(any(r.samples.get(family) is not None and r.samples[family].size
                                                 for r in side) for side in (baseline, candidate))
    if has_samples and m is not None and family is not None:
        statistic = m.group(2)
        q = float(statistic[1:])
        sb, sc, spread_var, df = _sample_sides(family, q, baseline, candidate, alpha, np.random.default_rng(seed))
        min_samples = default_min_samples(statistic)
    else:
        if not any(metric in r.values for r in baseline) or not any(metric in r.values for r in candidate):
            return None
        statistic = "mean"
        sb, sc, spread_var, df = _run_sides(metric, baseline, candidate, alpha)
        min_samples = 1
    if not (sb.value > 0 and sc.value > 0):
        return None
    spread = start_spread(metric, baseline)
    start_var = 0.0  # σ_s² inflated for its few degrees of freedom; the run's start carries all of it
    assumed = spread.starts < 2 and assumed_start_spread > 0
    if spread.starts >= 2:
        start_var = spread.var * (_t(1 - alpha, spread.df) / normal_quantile(1 - alpha)) ** 2
    elif assumed:  # an assumption, not an estimate: no df to inflate for; the baseline's one start carries it too
        start_var = (assumed_start_spread * sb.value) ** 2
    ratio = sc.value / sb.value
    b_var = sb.var + spread.weight * start_var  # the baseline's share of σ_s² stays in its pooled value
    rel_b = b_var / sb.value**2
    rel_c, rel_start = sc.var / sc.value**2, start_var / sb.value**2  # more requests shrink rel_c only
    se = ratio * math.sqrt(rel_b + rel_c + rel_start) if math.isfinite(rel_b + rel_c) else math.nan
    z_a, z_b = normal_quantile(1 - alpha), normal_quantile(1 - beta)
    half = z_a * se
    change = Interval(ratio - 1.0, ratio - 1.0 - half, ratio - 1.0 + half, 1 - 2 * alpha, se)
    n_c, n_b = (sc.n, sb.n) if has_samples else (sc.rounds, sb.rounds)
    check = decide(metric, statistic, higher_is_better, "samples", n_c, n_b, sc.value, sb.value, change, margin,
                   alpha, beta, min_samples)
    target_var = (margin / (z_a + z_b)) ** 2
    precise = math.isfinite(se) and (z_a + z_b) * se <= margin and min(sc.n, sb.n) >= min_samples
    needed: int | None = None
    fixed = ratio**2 * (rel_b + rel_start)  # what more candidate requests cannot shrink
    if math.isfinite(se) and fixed < target_var:
        needed = max(min_samples, math.ceil(sc.n * ratio**2 * rel_c / (target_var - fixed)))
    if check.verdict == "inconclusive":
        if sb.n < min_samples:  # a tail percentile of few baseline requests: its sample size, not its spread
            per_round = max(1, sb.n // max(1, sb.rounds))
            why = (f"the baseline holds {sb.n} requests, fewer than the {min_samples} a {statistic} needs: re-record "
                   f"with --llmserve-repeats {math.ceil(min_samples / per_round)} (or larger rounds), or gate a median")
        elif needed is None and spread.starts >= 2 and ratio**2 * rel_start >= target_var / 4:
            why = (f"the spread between the baseline's {spread.starts} server starts "
                   f"({math.sqrt(spread.var) / sb.value:.1%}, {spread.df} df) leaves no room: add starts with "
                   "--llmserve-add-start or widen the margin")
        elif needed is None and assumed and ratio**2 * rel_start >= target_var / 4:
            why = (f"the baseline comes from one server start, so a spread of {assumed_start_spread:.0%} between starts "
                   "is assumed (baseline_gate.start_spread) and leaves no room: add starts with --llmserve-add-start "
                   "(their measured spread replaces the assumption), widen the margin, or set start_spread = 0 "
                   "where runs repeat exactly")
        elif needed is None:
            why = ("the baseline's own uncertainty leaves no room: re-record with more repeats "
                   "(--llmserve-repeats) or widen the margin" if math.isfinite(se) else
                   "run-to-run spread is unknown with one round a side: re-record with --llmserve-repeats >= 2")
        else:
            why = f"about {max(0, needed - sc.n)} more requests ({needed} in all) would decide"
        check = dataclasses.replace(check, reason=f"{check.reason.split('; collect')[0]}; {why}",
                                    samples_needed=needed if needed is not None else -1)
    run_spread = math.sqrt(spread_var) / sb.value if math.isfinite(spread_var) else math.nan
    z95 = 1.959964
    ci = (lambda s: (s.value - z95 * math.sqrt(s.var), s.value + z95 * math.sqrt(s.var))  # noqa: E731
          if math.isfinite(s.var) else (math.nan, math.nan))
    between = (math.sqrt(spread.var) / sb.value if spread.starts >= 2 else
               assumed_start_spread if assumed else math.nan)
    sb = dataclasses.replace(sb, var=b_var)
    sc = dataclasses.replace(sc, var=sc.var + start_var)
    return GateCheck(check, gated, ci(sb), ci(sc), run_spread, (sb.rounds, sc.rounds), (sb.n, sc.n), needed, precise,
                     spread.starts, between, assumed)


def all_precise(checks: Sequence[GateCheck]) -> bool:
    """Whether every gated metric is measured precisely enough to decide (the sequential stop rule)."""
    return all(c.precise for c in checks if c.gated)  # nothing gated: nothing to wait for
