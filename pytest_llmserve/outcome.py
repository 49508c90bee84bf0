"""What `llm_load(...)` returns: the measured run plus `assert_slo()` against limits and baselines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import pytest

from .baselines import BaselineError
from .checks.slo import BASELINE_METRICS, SloEvaluation, SloReport, validate_limits
from .config import Target
from .load import RunResult
from .session import LlmserveSession, ResultEntry


@dataclass
class LoadOutcome:
    """A finished load run bound to its test, target and session."""

    result: RunResult
    target: Target
    nodeid: str
    session: LlmserveSession
    marker_limits: Mapping[str, float] = field(default_factory=dict)
    context: list[str] = field(default_factory=list)
    report: SloReport | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.metrics()

    def evaluate(self, **limits: Any) -> SloReport:
        """Build the verdict table (limits: config < marker < keyword arguments)."""
        merged = {**self.target.slo, **self.marker_limits, **validate_limits(limits, self.nodeid)}
        metrics = self.metrics
        try:
            comparisons = self.session.store.compare(
                self.target.name,
                self.nodeid,
                {m: metrics[m] for m in BASELINE_METRICS if m in metrics and self.result.valid},
                self.session.target_tolerances(self.target),
            )
        except BaselineError as exc:
            pytest.fail(str(exc), pytrace=False)
        context = list(self.context)
        if not comparisons and not self.session.store.update:
            others = self.session.store.other_hardware_with(self.target.name, self.nodeid)
            if others:
                context.append(f"baselines exist for hardware {', '.join(others)} only; not compared across hardware")
        evaluation = SloEvaluation(
            metrics=metrics,
            limits=merged,
            comparisons=comparisons,
            invalid_reasons=list(self.result.invalid_reasons),
            errors=dict(self.result.summary.errors),
            context=context,
        )
        spec = self.result.spec
        shape = f"rate {spec.rate}/s" if spec.rate else f"concurrency {spec.concurrency}"
        title = (
            f"SLO {self.nodeid} | target {self.target.name} ({self.target.kind}) | hardware "
            f"{self.session.store.hardware} | {shape}, {self.result.summary.completed} requests, "
            f"{spec.input_len} in / {spec.output_len} out tokens"
        )
        self.report = evaluation.report(title)
        return self.report

    def assert_slo(self, **limits: Any) -> SloReport:
        """Fail the test with the verdict table when a limit, the baseline or run validity says so."""
        report = self.evaluate(**limits)
        self.session.results.append(
            ResultEntry(self.nodeid, self.target.name, "slo", report.passed, report.render(),
                        {"metrics": self.metrics, "result": self.result.to_dict(), "context": list(report.context)})
        )
        if not report.passed:
            pytest.fail(report.render(), pytrace=False)
        return report
