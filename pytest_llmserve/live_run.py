"""One load run against a live endpoint, watched: server /metrics sampled and a heartbeat while it runs.

Shared by the concurrency sweep (sweep.py) and the promotion gate (promotion_run.py), whose runs
differ only in their labels and in what they keep of the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .load import LoadSpec, RunResult
from .progress import Emit, Heartbeat, ServerRequestCounter

if TYPE_CHECKING:
    from .server_metrics import MetricsSummary

Runner = Callable[[str, str, LoadSpec], RunResult]  # (url, model, spec) -> result; run_load by default


@dataclass(frozen=True, slots=True)
class LiveEndpoint:
    """A running server to load; `metrics_url` (vLLM-style /metrics) adds server-side numbers."""

    name: str
    url: str
    model: str
    metrics_url: str | None = None


def run_watched(endpoint: LiveEndpoint, spec: LoadSpec, run: Runner, label: str, *, emit: Emit | None,
                interval_s: float, server_metrics: bool) -> tuple[RunResult, MetricsSummary | None]:
    """Run `spec` on `endpoint`, sampling its /metrics (when asked and known) with a heartbeat line."""
    sampler = None
    if server_metrics and endpoint.metrics_url:
        from .server_metrics import MetricsSampler

        sampler = MetricsSampler(endpoint.metrics_url, interval_s=1.0).start()
    status = ServerRequestCounter(endpoint.metrics_url) if emit is not None and endpoint.metrics_url else None
    try:
        with Heartbeat(emit, label, total=spec.warmup + (spec.requests or 0), interval_s=interval_s,
                       status=status, source="server count"):
            result = run(endpoint.url, endpoint.model, spec)
    finally:
        summary = sampler.stop() if sampler is not None else None
    return result, summary
