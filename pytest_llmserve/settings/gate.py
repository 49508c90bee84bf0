"""Settings of the statistical baseline gate: gated metrics and margins, error rates, budgets.

Read from `baseline_gate` in `[tool.llmserve]` (project-wide) and in a target (which wins, key by key;
its `margin` table is merged metric by metric). Every bad value is one ConfigError naming file, key and value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

# One gated metric per family the gate promises to watch: first-token latency (a tail), decode speed
# (inter-token latency, median of the pooled gaps) and throughput. Every other baseline metric is still
# compared and shown, with its interval, as information.
DEFAULT_MARGINS: Mapping[str, float] = {"ttft_p95_ms": 0.10, "itl_p50_ms": 0.10, "output_tok_s": 0.10}
INCONCLUSIVE = ("warn", "fail")
GATE_KEYS = ("margin", "inconclusive", "alpha", "power", "budget_s", "max_requests", "repeats", "retries",
             "start_spread")
# Relative SD between server starts (pytest runs) assumed for a baseline recorded in one start. Measured
# (README, Baselines): 0-6.4 % per gated metric over 5 sessions of the CPU vLLM here, 4.9-7.7 % over 3
# runs of transformers serve on the H200, 4-7 % over 5 runs of transformers serve on this CPU.
DEFAULT_START_SPREAD = 0.05


@dataclass(frozen=True)
class GateSettings:
    """How the gate decides and how much it may measure to decide."""

    margins: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    inconclusive: str = "warn"  # warn: pass with a warning; fail: fail the test
    alpha: float = 0.05  # false-regression rate per test, split evenly over the gated metrics
    power: float = 0.90  # chance of flagging a margin-sized regression once the measurement stops
    budget_s: float = 120.0  # wall time the sequential measurement of one test may take
    max_requests: int = 4000  # measured requests one test may spend
    repeats: int | None = None  # rounds recorded by --update-baselines (None: the option's default)
    retries: int | None = None  # re-measurements of an invalid round (None: the option's default)
    start_spread: float = DEFAULT_START_SPREAD  # assumed between-start relative SD when the baseline has one start

    @property
    def alpha_per_metric(self) -> float:
        return self.alpha / max(1, len(self.margins))

    def margin(self, metric: str) -> float | None:
        """The metric's margin when it is gated, else None (compared for information only)."""
        return self.margins.get(metric)

    def merged(self, raw: Mapping[str, Any], where: str, fail: Callable[[str, Any, str], None]) -> GateSettings:
        """These settings overlaid with a validated `baseline_gate` table."""
        if not isinstance(raw, Mapping):
            fail(where, raw, "must be a table, e.g. { margin = { ttft_p95_ms = 0.1 }, inconclusive = 'warn' }")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            at = f"{where}.{key}"
            if key not in GATE_KEYS:
                fail(at, value, f"unknown key; allowed: {', '.join(GATE_KEYS)}")
            if key == "margin":
                if not isinstance(value, Mapping) or not value:
                    fail(at, value, "must be a non-empty table of metric = relative margin, e.g. { ttft_p95_ms = 0.1 }")
                from ..checks.slo import BASELINE_METRICS

                margins = {}
                for metric, m in value.items():
                    if metric not in BASELINE_METRICS:
                        fail(f"{at}.{metric}", m, f"not a baseline metric; known: {', '.join(BASELINE_METRICS)}")
                    if not _number(m) or not 0 <= m < 10:
                        fail(f"{at}.{metric}", m, "must be a relative margin >= 0 (0.1 = 10 %; 0: not gated)")
                    margins[metric] = float(m)
                merged = {**self.margins, **margins}
                out["margins"] = {k: v for k, v in merged.items() if v > 0}  # 0 takes a metric out of the gate
            elif key == "inconclusive":
                if value not in INCONCLUSIVE:
                    fail(at, value, f"must be one of {', '.join(INCONCLUSIVE)}")
                out[key] = value
            elif key in ("alpha", "power"):
                lo, hi = (0.0, 0.5) if key == "alpha" else (0.5, 1.0)
                if not _number(value) or not lo < value < hi:
                    fail(at, value, f"must lie strictly between {lo} and {hi}")
                out[key] = float(value)
            elif key == "start_spread":
                if not _number(value) or not 0 <= value < 1:
                    fail(at, value, "must be a relative spread >= 0 and < 1 (0.05 = 5 %; 0: assume none)")
                out[key] = float(value)
            elif key == "budget_s":
                if not _number(value) or not 0 < value < math.inf:
                    fail(at, value, "must be a positive number of seconds")
                out[key] = float(value)
            else:  # max_requests, repeats, retries
                least = 0 if key == "retries" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    fail(at, value, f"must be an integer >= {least}")
                out[key] = value
        return replace(self, **out)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
