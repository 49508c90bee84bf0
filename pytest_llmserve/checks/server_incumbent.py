"""Server-side metrics against the incumbent: what the stored baseline's server reported, and how far below it.

`--update-baselines` keeps the server's own figures of the recorded run in the baseline entry
(`"server": {"spec_acceptance_length": 2.6, "prefix_cache_hit_rate": 0.81}`, beside the statistical
metrics; entries without it still load). A `max_spec_acceptance_drop` limit (a relative fraction)
then fails a candidate whose acceptance length is worse than the incumbent's by more than that:
"acceptance length 2.1 vs incumbent 2.6 (−19 %, limit −10 %)". When either side lacks the figure the
check is *not measurable* and fails, as every server-side gate does (server_slo.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..store.baselines import UPDATE_HINT, round_significant

# server metrics kept in a recorded baseline entry (the "server" field)
STORED_SERVER_METRICS = ("spec_acceptance_length", "prefix_cache_hit_rate")
# limit key -> (metric compared with the incumbent's, how the line names it); the limit is the largest
# relative drop allowed (0.1: the candidate may be at most 10 % below the incumbent)
DROP_KEYS: Mapping[str, tuple[str, str]] = {
    "max_spec_acceptance_drop": ("spec_acceptance_length", "acceptance length"),
}
NOT_MEASURABLE = "not measurable"


def server_field(values: Mapping[str, float]) -> dict[str, Any]:
    """{"server": {...}} for a baseline entry: the run's stored server metrics, rounded; {} when it has none."""
    kept = {m: round_significant(float(values[m])) for m in STORED_SERVER_METRICS
            if m in values and math.isfinite(values[m])}
    return {"server": kept} if kept else {}


def stored_server(entry: Mapping[str, Any] | None) -> dict[str, float]:
    """The server metrics a baseline entry recorded (none for entries written before they were kept)."""
    found = entry.get("server") if entry is not None else None
    if not isinstance(found, dict):
        return {}
    return {m: float(v) for m, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


@dataclass(frozen=True)
class IncumbentCheck:
    """One drop limit: the candidate's figure against the incumbent's, and the verdict."""

    key: str
    metric: str
    limit: float  # largest relative drop allowed
    candidate: float | None
    incumbent: float | None
    verdict: str  # ok | FAIL | not measurable | recorded
    reason: str  # the line the report shows

    @property
    def row_metric(self) -> str:
        return f"{self.metric}_vs_incumbent"

    @property
    def limit_text(self) -> str:
        if self.incumbent is None:
            return f"drop <= {_pct(self.limit)}"
        return f">= {self.incumbent * (1 - self.limit):.3g} ({_signed(-self.limit)} of incumbent)"

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", NOT_MEASURABLE)


def check_drops(limits: Mapping[str, float], values: Mapping[str, float], unmeasurable: Mapping[str, str],
                stored: Mapping[str, float] | None, recording: bool) -> list[IncumbentCheck]:
    """Every drop limit in `limits`: `values` (this run) against `stored` (the incumbent's server metrics;
    None: no baseline entry). While recording, the run becomes the incumbent and nothing is judged."""
    out = []
    for key, (metric, label) in DROP_KEYS.items():
        if key not in limits:
            continue
        limit = float(limits[key])
        cand = values.get(metric)
        base = None if stored is None else stored.get(metric)
        if recording:
            out.append(IncumbentCheck(key, metric, limit, cand, None, "recorded",
                                      f"{label} {_num(cand)} recorded as the incumbent"))
            continue
        if cand is None or base is None:
            why = []
            if cand is None:
                why.append(f"this run: {unmeasurable.get(metric, 'the server reported no ' + label)}")
            if base is None:
                why.append("the incumbent: " + ("no baseline stored for this test on this hardware" if stored is None
                                                else f"its baseline entry has no {label} (recorded before server "
                                                     "metrics were kept, or without them)") + f"; {UPDATE_HINT}")
            out.append(IncumbentCheck(key, metric, limit, cand, base, NOT_MEASURABLE,
                                      f"{label} vs incumbent not measurable: {'; '.join(why)}"))
            continue
        change = cand / base - 1 if base else 0.0
        verdict = "FAIL" if change < -limit else "ok"
        out.append(IncumbentCheck(key, metric, limit, cand, base, verdict,
                                  f"{label} {_num(cand)} vs incumbent {_num(base)} ({_signed(change)}, "
                                  f"limit {_signed(-limit)})"))
    return out


def _num(v: float | None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.3g}"
    return text if "." in text or "e" in text else text + ".0"  # 2.0, not 2


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _signed(x: float) -> str:
    """-0.19 -> '−19 %' (a true minus sign), 0.05 -> '+5 %'."""
    return ("−" if x < 0 else "+") + _pct(abs(x))
