"""SLO verdicts: measured metrics against absolute limits and stored baselines, as one table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..store.baselines import UPDATE_HINT, MetricComparison
from .server_incumbent import DROP_KEYS, IncumbentCheck
from .server_slo import GOODPUT_PARAMS, SERVER_LIMIT_KEYS, check_value

# marker/config key -> (metric in RunResult.metrics(), the limit is an upper bound)
LIMIT_KEYS: Mapping[str, tuple[str, bool]] = {
    "ttft_p50_ms": ("ttft_p50_ms", True),
    "ttft_p95_ms": ("ttft_p95_ms", True),
    "ttft_p99_ms": ("ttft_p99_ms", True),
    "itl_p95_ms": ("itl_p95_ms", True),
    "itl_p99_ms": ("itl_p99_ms", True),
    "tpot_p95_ms": ("tpot_p95_ms", True),
    "e2e_p95_ms": ("e2e_p95_ms", True),
    "e2e_p99_ms": ("e2e_p99_ms", True),
    "min_output_tok_s": ("output_tok_s", False),
    "min_requests_s": ("requests_s", False),
    "max_error_rate": ("error_rate", True),
    **SERVER_LIMIT_KEYS,  # what the server did (server_slo.py): prefix-cache hit rate, KV usage, goodput, ...
}
# metrics compared with the stored baseline (error_rate is judged by its limit only)
BASELINE_METRICS = (
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p95_ms", "tpot_p95_ms",
    "e2e_p95_ms", "output_tok_s", "requests_s",
)


def validate_limits(limits: Mapping[str, Any], where: str) -> dict[str, float]:
    """Check SLO keyword arguments: known keys, non-negative numbers; errors name the bad one."""
    out = {}
    for key, value in limits.items():
        if key not in LIMIT_KEYS and key not in GOODPUT_PARAMS and key not in DROP_KEYS:
            raise ValueError(f"{where}: unknown SLO {key}={value!r}; "
                             f"known: {', '.join([*LIMIT_KEYS, *GOODPUT_PARAMS, *DROP_KEYS])}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{where}: SLO {key}={value!r} must be a non-negative number "
                f"({'milliseconds' if key.endswith('_ms') else 'a rate' if 'rate' in key else 'per second'})"
            )
        problem = check_value(key, float(value))
        if problem:
            raise ValueError(f"{where}: SLO {key}={value!r} {problem}")
        out[key] = float(value)
    return out


NOT_MEASURABLE = "not measurable"


@dataclass(frozen=True)
class SloRow:
    """One line of the verdict table."""

    metric: str
    measured: float
    limit: str
    baseline: float | None
    allowed: float | None
    verdict: str
    change: str = ""  # statistical baseline comparison: "+3.1% [-0.4%, +6.6%]"
    margin: float | None = None
    detectable: float | None = None  # smallest worsening this sample size flags at the configured power
    n: str = ""  # "run/baseline" requests

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "regression", "missing", NOT_MEASURABLE)


@dataclass(frozen=True)
class SloReport:
    """Everything needed to decide and to explain: rows, run validity, context lines."""

    title: str
    rows: tuple[SloRow, ...]
    problems: tuple[str, ...] = ()
    context: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems and not any(row.failed for row in self.rows)

    def render(self) -> str:
        header: tuple[str, ...] = ("metric", "measured", "limit", "baseline", "allowed", "verdict")
        body: list[tuple[str, ...]] = [
            (r.metric, _fmt(r.measured), r.limit, _fmt(r.baseline), _fmt(r.allowed, prefix=_direction(r.metric)), r.verdict)
            for r in self.rows
        ]
        if any(r.change for r in self.rows):  # compared statistically with the stored baseline
            header += ("change [CI]", "margin", "detectable", "n run/base")
            body = [b + (r.change or "-", f"{r.margin:.0%}" if r.margin is not None else "-",
                         f"{r.detectable:.1%}" if r.detectable is not None else "-", r.n or "-")
                    for b, r in zip(body, self.rows)]
        widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
        lines = [self.title]
        for line in [header, *body]:
            lines.append("  ".join(str(cell).rjust(w) if i in (1, 3, 4) else str(cell).ljust(w)
                                   for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
        lines += [f"  ! {p}" for p in self.problems]
        lines += [f"  {c}" for c in self.context]
        return "\n".join(lines)


@dataclass
class SloEvaluation:
    """Builds an SloReport from metrics, limits, baseline comparisons and run validity."""

    metrics: Mapping[str, float]
    limits: Mapping[str, float]
    comparisons: list[MetricComparison] = field(default_factory=list)
    invalid_reasons: list[str] = field(default_factory=list)
    errors: Mapping[str, int] = field(default_factory=dict)
    context: list[str] = field(default_factory=list)
    unmeasurable: Mapping[str, str] = field(default_factory=dict)  # metric -> why the server cannot report it
    incumbent: list[IncumbentCheck] = field(default_factory=list)  # server metrics against the stored baseline's

    def report(self, title: str) -> SloReport:
        by_metric = {c.metric: c for c in self.comparisons}
        limit_for = {LIMIT_KEYS[k][0]: (k, v) for k, v in self.limits.items() if k in LIMIT_KEYS}
        gaps: list[str] = []
        rows = []
        for metric in sorted(set(by_metric) | set(limit_for)):
            measured = self.metrics.get(metric, float("nan"))
            limit_text, verdict = "-", "ok"
            if metric in limit_for:
                key, bound = limit_for[metric]
                upper = LIMIT_KEYS[key][1]
                limit_text = f"{'<=' if upper else '>='} {_fmt(bound)}"
                within = measured <= bound if upper else measured >= bound
                verdict = "ok" if within else "FAIL"
                if metric not in self.metrics and metric in self.unmeasurable:
                    verdict = NOT_MEASURABLE
                    gaps.append(f"{key}: {self.unmeasurable[metric]}")
            comp = by_metric.get(metric)
            if comp is not None and verdict == "ok" and comp.verdict != "ok":
                verdict = comp.verdict
            g = comp.gate if comp else None
            rows.append(SloRow(metric, measured, limit_text, comp.baseline if comp else None,
                               comp.bound if comp else None, verdict,
                               *((g.change_text(), g.check.margin if g.gated else None, g.check.min_detectable,
                                  f"{g.requests[1]}/{g.requests[0]}") if g is not None else ())))
        for c in self.incumbent:
            rows.append(SloRow(c.row_metric, c.candidate if c.candidate is not None else float("nan"), c.limit_text,
                               c.incumbent, None, c.verdict))
            if c.failed:
                gaps.append(f"{c.key}: {c.reason}")
            elif c.verdict == "ok":
                self.context.append(c.reason)
        problems = [f"run invalid for SLO checks: {r}" for r in self.invalid_reasons] + gaps
        if any(r.verdict == "missing" for r in rows):
            problems.append(f"no baseline stored for this test on this hardware; {UPDATE_HINT}")
        if self.errors:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
            self.context.insert(0, f"errors: {counts} (percentiles cover successful requests only)")
        return SloReport(title=title, rows=tuple(rows), problems=tuple(problems), context=tuple(self.context))


def _direction(metric: str) -> str:
    from ..store.baselines import higher_is_better

    return ">= " if higher_is_better(metric) else "<= "


def _fmt(value: float | None, prefix: str = "") -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    return f"{prefix}{value:,.3f}" if abs(value) < 100 else f"{prefix}{value:,.1f}"
