"""Precision-calibrated equivalence: is the engine farther from fp32 than its own precision is?

Besides the fp32 reference, the Hugging Face model is run in the engine's compute precision (the
*calibration*: bf16 on CPU here, on the GPU where there is one). Both the engine and the calibration
are compared with fp32 on the same prompts, and three per-token statistics are gated:

- divergence per token: prompts that left the fp32 greedy path / tokens at risk (agreed tokens plus
  the divergence), a hazard rate that does not depend on max_tokens;
- chosen-token drift: mean |fp32 logprob − side logprob| of the agreed token (a bug that keeps the
  argmax but shifts logits moves this);
- top-k drift: per agreed token, the mean |Δ logprob| over the tokens in both top-k lists (a logit
  scale change moves the runners-up more than the winner).

Each test: with S_e the engine's statistic, S_c the calibration's, k the margin and f a floor, fail
when the data show S_e − k·S_c > f, i.e. when the one-sided (1 − α/3) lower bound of S_e − k·S_c from a
paired cluster bootstrap over prompts (tokens of one prompt are correlated) exceeds f. α/3 per test
(Bonferroni) keeps the family-wise false-alarm rate of the three at most α. The margin k says how much
noisier than Hugging Face's own kernels in the same precision a correct engine may be; the floor f
covers precisions whose calibration is exact (fp32 compute: the calibration is the reference itself).

The near-tie tolerance of the per-prompt rule (equivalence.py) is calibrated too: the largest log-odds
swing the calibration produced on any agreed (chosen, runner-up) pair, per unit of max(1, |logit|),
times `swing_margin`. Precision components the calibration cannot reproduce (fp8/int weights, an fp8
KV cache) keep the unit-roundoff tolerance for their part, added in quadrature, and make the three
tests informational: the paired accuracy gate decides for those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .cluster_stats import cluster_weights, lower_bound, one_sided_p, ratio, ratio_replicates
from .equivalence import Continuation

# Defaults and where their figures come from (README "Equivalence with the Hugging Face reference").
# Depth calibration from a real GPU (issue 20: HF bf16 vs fp32 on an H200, 22 layers) plugs in here:
# the calibration itself is measured per model at its own depth, so only the margins below need it.
# Measured (README): the CPU vLLM in bf16 sat at 0.99-1.01x HF bf16 on all three statistics on both
# models; broken builds moved them 1.3-30x. A GPU engine whose kernels differ from HF's is still one
# bf16 rounding away from fp32, like the calibration; 1.5 leaves it 50 % more noise.
DEFAULT_MARGIN = 1.5  # engine statistic may be up to 1.5x the HF same-precision one
DEFAULT_SWING_MARGIN = 2.0  # near-tie tolerance = 2x the largest calibration swing per |logit| unit
DEFAULT_ALPHA = 0.05
# Floors apply only when the calibration is exact (fp32 compute: the reference calibrates itself, so
# its statistics are 0): a correct fp32 engine still differs by reduction order (~1e-5 nats).
FLOORS = {"divergence per token": 0.002, "chosen-token drift": 0.002, "top-k drift": 0.002}
N_RESAMPLES = 4000
STATISTICS = tuple(FLOORS)


@dataclass(frozen=True, slots=True)
class PathProfile:
    """How one side's greedy path compares with the fp32 reference on one prompt."""

    agreed: int
    diverged: bool
    gap: float | None  # fp32 lp(r) − lp(c) at the divergence; None: c outside the reference top-k
    chosen_drift: float  # Σ |Δ lp| of the agreed tokens
    topk_drift: float  # Σ over agreed tokens of the mean |Δ lp| over tokens in both top-k
    topk_n: int  # agreed tokens with a shared top-k
    max_swing_units: float  # largest pair log-odds swing on agreed tokens (and the divergence) / max(1,|L|)

    @property
    def at_risk(self) -> int:
        return self.agreed + int(self.diverged)


def profile(reference: Continuation, side: Continuation) -> PathProfile:
    """Compare one side's continuation with the fp32 reference up to (and at) the first divergence."""
    chosen = topk = 0.0
    topk_n = 0
    swing = 0.0
    for i, r in enumerate(reference.tokens):
        if i >= len(side.tokens):
            return PathProfile(i, True, None, chosen, topk, topk_n, swing)
        ref_top, side_top = reference.top_logprobs[i], side.top_logprobs[i]
        unit = max(1.0, abs(reference.logit_scale[i])) if reference.logit_scale else 1.0
        c = side.tokens[i]
        if c != r:
            gap = ref_top[r] - ref_top[c] if c in ref_top and r in ref_top else None
            if gap is not None and r in side_top and c in side_top:
                swing = max(swing, (max(0.0, gap) + max(0.0, side_top[c] - side_top[r])) / unit)
            return PathProfile(i, True, gap, chosen, topk, topk_n, swing)
        if r in ref_top and r in side_top:
            chosen += abs(ref_top[r] - side_top[r])
            shared = [t for t in ref_top if t in side_top]
            if shared:
                topk += sum(abs(ref_top[t] - side_top[t]) for t in shared) / len(shared)
                topk_n += 1
            for t in shared:
                if t != r:
                    swing = max(swing, abs((ref_top[r] - ref_top[t]) - (side_top[r] - side_top[t])) / unit)
    return PathProfile(len(reference.tokens), False, None, chosen, topk, topk_n, swing)


@dataclass(frozen=True, slots=True)
class SideSummary:
    """One side (engine or calibration) against fp32, pooled over prompts."""

    name: str
    prompts: int
    diverged: int
    tokens_at_risk: int
    divergence_rate: float
    chosen_drift: float
    topk_drift: float
    gaps: tuple[float, ...]  # finite fp32 gaps at divergences
    outside_topk: int  # divergences to a token outside the fp32 top-k
    max_swing_units: float

    def value(self, statistic: str) -> float:
        return {"divergence per token": self.divergence_rate, "chosen-token drift": self.chosen_drift,
                "top-k drift": self.topk_drift}[statistic]

    def gap_text(self) -> str:
        if not self.gaps:
            return "-" if not self.outside_topk else f"{self.outside_topk} outside top-k"
        g = np.asarray(self.gaps)
        text = f"med {np.median(g):.3f} max {g.max():.3f}"
        return text + (f", {self.outside_topk} outside top-k" if self.outside_topk else "")


def summarize(name: str, profiles: Sequence[PathProfile]) -> SideSummary:
    at_risk = [p.at_risk for p in profiles]
    return SideSummary(
        name=name, prompts=len(profiles), diverged=sum(p.diverged for p in profiles), tokens_at_risk=sum(at_risk),
        divergence_rate=ratio([p.diverged for p in profiles], at_risk),
        chosen_drift=ratio([p.chosen_drift for p in profiles], [p.agreed for p in profiles]),
        topk_drift=ratio([p.topk_drift for p in profiles], [p.topk_n for p in profiles]),
        gaps=tuple(p.gap for p in profiles if p.diverged and p.gap is not None),
        outside_topk=sum(p.diverged and p.gap is None for p in profiles),
        max_swing_units=max((p.max_swing_units for p in profiles), default=0.0),
    )


def _columns(profiles: Sequence[PathProfile], statistic: str) -> tuple[list[float], list[float]]:
    if statistic == "divergence per token":
        return [float(p.diverged) for p in profiles], [float(p.at_risk) for p in profiles]
    if statistic == "chosen-token drift":
        return [p.chosen_drift for p in profiles], [float(p.agreed) for p in profiles]
    return [p.topk_drift for p in profiles], [float(p.topk_n) for p in profiles]


@dataclass(frozen=True, slots=True)
class StatisticTest:
    """One gated statistic: engine vs margin x calibration + floor, with the bootstrap evidence."""

    statistic: str
    engine: float
    calibration: float
    margin: float
    floor: float
    excess_lower: float  # (1 − α') lower bound of engine − margin·calibration
    p_value: float  # H0: engine − margin·calibration ≤ floor
    alpha: float  # per-test level (α / number of tests)
    gated: bool

    @property
    def limit(self) -> float:
        return self.margin * self.calibration + self.floor

    @property
    def failed(self) -> bool:
        return self.gated and self.excess_lower > self.floor

    @property
    def ratio(self) -> float:
        return self.engine / self.calibration if self.calibration > 0 else math.inf if self.engine > 0 else 1.0


def statistic_tests(engine: Sequence[PathProfile], calibration: Sequence[PathProfile], *, margin: float,
                    alpha: float, gated: bool = True, exact: bool = False, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> tuple[StatisticTest, ...]:
    """The three paired cluster-bootstrap tests (prompts resampled together on both sides)."""
    if len(engine) != len(calibration):
        raise ValueError(f"{len(engine)} engine prompts but {len(calibration)} calibration prompts")
    weights = cluster_weights(len(engine), n_resamples, seed)
    per_test = alpha / len(STATISTICS)
    out = []
    for statistic in STATISTICS:
        e_tot, e_n = _columns(engine, statistic)
        c_tot, c_n = _columns(calibration, statistic)
        reps = ratio_replicates(weights, e_tot, e_n) - margin * ratio_replicates(weights, c_tot, c_n)
        floor = FLOORS[statistic] if exact else 0.0
        out.append(StatisticTest(statistic, ratio(e_tot, e_n), ratio(c_tot, c_n), margin, floor,
                                 lower_bound(reps, per_test), one_sided_p(reps, floor), per_test, gated))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The calibration verdict: both sides' summaries and the three tests, side by side."""

    calibration_label: str  # e.g. "HF bfloat16 (cpu)"
    engine: SideSummary
    calibration: SideSummary
    tests: tuple[StatisticTest, ...]
    swing_units: float  # calibrated near-tie tolerance per max(1, |logit|) unit
    uncovered: tuple[str, ...] = ()  # precision components the calibration cannot reproduce
    notes: tuple[str, ...] = field(default=())

    @property
    def gated(self) -> bool:
        return not self.uncovered

    @property
    def passed(self) -> bool:
        return not any(t.failed for t in self.tests)

    def failures(self) -> list[str]:
        out = []
        for t in self.tests:
            if t.failed:
                out.append(f"{t.statistic} moved: engine {t.engine:.4g} vs {self.calibration_label} {t.calibration:.4g} "
                           f"({t.ratio:.1f}x); the {1 - t.alpha:.1%} lower bound of engine − {t.margin:g}×calibration "
                           f"is {t.excess_lower:.4g} > {t.floor:g} (p = {t.p_value:.3g})")
        return out

    def render(self) -> list[str]:
        e, c = self.engine, self.calibration
        rows = [("", "engine", self.calibration_label, "limit", "verdict")]
        rows.append(("diverged prompts", f"{e.diverged}/{e.prompts}", f"{c.diverged}/{c.prompts}", "", ""))
        rows.append(("fp32 gap at divergence", e.gap_text(), c.gap_text(), "", ""))
        for t in self.tests:
            verdict = ("FAIL" if t.failed else "ok") if t.gated else "not gated"
            rows.append((t.statistic, f"{t.engine:.4g}", f"{t.calibration:.4g}",
                         f"≤ {t.margin:g}x" + (f" + {t.floor:g}" if t.floor else ""), f"{verdict} (p {t.p_value:.3g})"))
        rows.append(("max pair swing / |logit|", f"{e.max_swing_units:.4g}", f"{c.max_swing_units:.4g}", "", ""))
        widths = [max(len(r[j]) for r in rows) for j in range(5)]
        lines = [f"  calibration vs fp32 ({self.calibration_label}; paired cluster bootstrap over prompts, "
                 f"α/{len(self.tests)} per test):"]
        lines += ["    " + "  ".join(col.ljust(w) for col, w in zip(r, widths)).rstrip() for r in rows]
        if self.uncovered:
            lines.append(f"    not gated: the calibration cannot reproduce {', '.join(self.uncovered)}; "
                         "the paired accuracy gate (suites/test_fp8_accuracy.py) decides for those")
        lines += [f"    note: {n}" for n in self.notes]
        return lines

    def to_dict(self) -> dict[str, Any]:
        def side(s: SideSummary) -> dict[str, Any]:
            return {"diverged": s.diverged, "prompts": s.prompts, "tokens_at_risk": s.tokens_at_risk,
                    "divergence_rate": s.divergence_rate, "chosen_drift": s.chosen_drift, "topk_drift": s.topk_drift,
                    "gap_median": float(np.median(s.gaps)) if s.gaps else None,
                    "gap_max": max(s.gaps) if s.gaps else None, "outside_topk": s.outside_topk,
                    "max_swing_units": s.max_swing_units}

        return {"label": self.calibration_label, "engine": side(self.engine), "calibration": side(self.calibration),
                "swing_units": self.swing_units, "uncovered": list(self.uncovered), "passed": self.passed,
                "tests": [{"statistic": t.statistic, "engine": t.engine, "calibration": t.calibration,
                           "margin": t.margin, "floor": t.floor, "excess_lower": t.excess_lower,
                           "p_value": t.p_value, "alpha": t.alpha, "gated": t.gated, "failed": t.failed}
                          for t in self.tests]}


def calibrate(reference: Sequence[Continuation], engine: Sequence[Continuation], calibration: Sequence[Continuation],
              *, label: str, margin: float = DEFAULT_MARGIN, swing_margin: float = DEFAULT_SWING_MARGIN,
              alpha: float = DEFAULT_ALPHA, uncovered: Sequence[str] = (), notes: Sequence[str] = (),
              exact: bool = False, seed: int = 0) -> Calibration:
    """Profile both sides against fp32 and run the tests; `uncovered` makes them informational.

    `exact`: the calibration is the fp32 reference itself (fp32 compute), so the floors apply.
    """
    if not len(reference) == len(engine) == len(calibration):
        raise ValueError(f"{len(reference)} references, {len(engine)} engine and {len(calibration)} calibration runs")
    e = [profile(r, s) for r, s in zip(reference, engine)]
    c = [profile(r, s) for r, s in zip(reference, calibration)]
    tests = statistic_tests(e, c, margin=margin, alpha=alpha, gated=not uncovered, exact=exact, seed=seed)
    cal = summarize(label, c)
    return Calibration(label, summarize("engine", e), cal, tests, swing_margin * cal.max_swing_units,
                       tuple(uncovered), tuple(notes))
