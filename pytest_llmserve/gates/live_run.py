"""One load run against a live endpoint, watched: server /metrics sampled and a heartbeat while it runs.

Shared by the concurrency sweep (gates/sweep.py) and the promotion gate (gates/promotion.py), whose runs
differ only in their labels and in what they keep of the result. The run itself, the metrics
sampling (out of process) and the progress count follow drive.py, as the pytest fixture's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .drive import client_count, drive, start_metrics
from ..load import ClientOptions, LoadProgress, LoadSpec, RunResult
from ..report.progress import Emit, Heartbeat

if TYPE_CHECKING:
    from ..evidence.server_metrics import MetricsSummary

Runner = Callable[[str, str, LoadSpec], RunResult]  # (url, model, spec) -> result; drive.drive by default


@dataclass(frozen=True, slots=True)
class LiveEndpoint:
    """A running server to load; `metrics_url` (vLLM-style /metrics) adds server-side numbers."""

    name: str
    url: str
    model: str
    metrics_url: str | None = None


def run_watched(endpoint: LiveEndpoint, spec: LoadSpec, label: str, *, options: ClientOptions | None = None,
                runner: Runner | None = None, emit: Emit | None, interval_s: float,
                server_metrics: bool) -> tuple[RunResult, MetricsSummary | None]:
    """Run `spec` on `endpoint` (through `runner` when given), sampling its /metrics when asked and known,
    with a heartbeat line counting the client's finished requests."""
    sampler = start_metrics(endpoint.metrics_url if server_metrics else None)
    counted = LoadProgress()
    try:
        with Heartbeat(emit, label, total=spec.warmup + spec.requests if spec.requests else None,
                       interval_s=interval_s, status=client_count(counted)):
            if runner is not None:
                result = runner(endpoint.url, endpoint.model, spec)
            else:
                result = drive(endpoint.url, endpoint.model, spec, options, progress=counted)
    finally:
        summary = sampler.stop() if sampler is not None else None
    return result, summary
