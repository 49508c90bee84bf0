"""What `llm_load(...)` returns: the measured run plus `assert_slo()` against limits and baselines."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import pytest

from ..store.baseline_samples import check_shape, round_of, round_to_dict, shape_of, summary_entry
from ..store.baselines import BaselineError, MetricComparison, default_tolerance, is_statistical, round_significant
from ..checks import server_incumbent, server_slo
from ..checks.slo import BASELINE_METRICS, SloEvaluation, SloReport, validate_limits
from ..checks.optimisations import OptimisationsReport
from ..settings.config import Target
from ..hardware.host import host_difference, host_fingerprint
from ..load import RunResult
from .measure import Measurement, baseline_rounds, gate_checks
from ..evidence.server_metrics import MetricsSummary
from ..session import LlmserveSession, ResultEntry


@dataclass
class LoadOutcome:
    """A finished load run bound to its test, target and session."""

    result: RunResult
    target: Target
    nodeid: str
    baseline_id: str  # what its baseline entries are stored under (baseline_ids.py; the node id but for the suites)
    session: LlmserveSession
    marker_limits: Mapping[str, float] = field(default_factory=dict)
    context: list[str] = field(default_factory=list)
    optimisations: OptimisationsReport | None = None
    server_metrics: MetricsSummary | None = None  # what the server's /metrics said during the run
    item: Any = None  # the pytest item, for JUnit properties (record_property's user_properties)
    report: SloReport | None = None
    metrics_url: str | None = None  # where server_metrics came from (named when it gave nothing)
    measurement: Measurement | None = None  # the rounds behind `result` (several when repeated or sequential)
    comparisons: list[MetricComparison] = field(default_factory=list)
    incumbent_server: dict[str, float] | None = None  # server metrics of the stored baseline entry (None: no entry)

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.metrics()

    def evaluate(self, **limits: Any) -> SloReport:
        """Build the verdict table (limits: config < marker < keyword arguments)."""
        try:
            # errors fail a gate unless the user allows some: a latency table over the survivors
            # of a half-failed run is not a pass
            merged = {"max_error_rate": 0.0, **self.target.slo, **self.marker_limits,
                      **validate_limits(limits, f"{self.nodeid}: assert_slo")}
        except ValueError as exc:
            pytest.fail(str(exc), pytrace=False)
        merged, set_aside = server_slo.applicable_limits(merged, self.result.spec.stream)
        runtime = server_slo.measure(self.server_metrics, self.result, merged, self.metrics_url)
        metrics = {**self.metrics, **runtime.values}
        refused = _errors_refuse_recording(self.result, merged) if self.session.store.update else None
        # never record an invalid run, or one with failed requests, over a baseline
        keep = self.session.store.update and (not self.result.valid or refused is not None)
        notes: list[str] = []
        self.comparisons = []
        self.incumbent_server = None
        try:
            if keep:
                self.session.store.lookup(self.target.name, self.baseline_id)  # still in use, not "unused"
            comparisons = [] if keep else self._compare(metrics, notes)
            self.comparisons = comparisons
        except BaselineError as exc:
            pytest.fail(str(exc), pytrace=False)
        context = list(self.context)
        if self.measurement is not None and (self.measurement.stopped or len(self.measurement.results) > 1
                                             or self.measurement.notes):
            context.append(self.measurement.line())
        context += list(self.measurement.notes if self.measurement is not None else []) + notes
        if keep and refused is None:
            context.append("run invalid: the stored baseline was kept, not overwritten (fix the run, then update)")
        context.append(_client_line(self.result))
        if sessions := self.result.sessions_line():
            context.append(sessions)
        if self.optimisations is not None:
            context += self.optimisations.render().splitlines()
        context += server_lines(self.server_metrics)
        context += runtime.context + set_aside
        if not comparisons and not self.session.store.update:
            others = self.session.store.other_hardware_with(self.target.name, self.baseline_id)
            if others:
                context.append(f"baselines exist for hardware {', '.join(others)} only; not compared across hardware")
        gate = self.session.gate_settings(self.target)
        undecided = [c.metric for c in comparisons if c.verdict == "inconclusive"]
        if undecided:
            say = (f"baseline comparison inconclusive for {', '.join(undecided)} "
                   f"(baseline_gate.inconclusive = {gate.inconclusive!r})")
            if gate.inconclusive == "warn":
                context.append(f"WARNING: {say}: passed with a warning")
                warnings.warn(pytest.PytestWarning(f"{self.nodeid}: {say}"), stacklevel=2)
        evaluation = SloEvaluation(
            metrics=metrics,
            limits=merged,
            comparisons=comparisons,
            invalid_reasons=list(self.result.invalid_reasons) + ([refused] if refused else []),
            errors=dict(self.result.summary.errors),
            context=context,
            unmeasurable=runtime.unmeasurable,
            incumbent=server_incumbent.check_drops(merged, runtime.values, runtime.unmeasurable, self.incumbent_server,
                                                   recording=self.session.store.update),
        )
        spec = self.result.spec
        shape = f"rate {spec.rate}/s" if spec.rate else f"concurrency {spec.concurrency}"
        title = (
            f"SLO {self.nodeid} | target {self.target.name} ({self.target.kind}) | hardware "
            f"{self.session.store.hardware} | {shape}, {self.result.summary.completed} requests, "
            f"{spec.input_len} in / {spec.output_len} out tokens"
        )
        self.report = evaluation.report(title)
        if undecided and gate.inconclusive == "fail":
            self.report = dataclasses.replace(self.report, problems=self.report.problems + (f"{say}: failing",))
        return self.report

    def _ecdf_samples(self) -> dict[str, Any]:
        """TTFT and per-request ITL (TPOT) of the stored baseline and of this run, for the report's figure."""
        from ..checks.baseline_gate import Round

        base: list[Round] = (self.measurement.baseline_rounds if self.measurement and self.measurement.baseline_rounds
                             else [])
        if not base:
            try:
                base = baseline_rounds(self.session.store, self.target.name, self.baseline_id)
            except BaselineError:
                base = []
        run = [round_of(r) for r in self.measurement.results] if self.measurement else []
        pool = (lambda rs, k: [float(x) for r in rs for x in r.samples.get(k, [])])  # noqa: E731
        return {"baseline": {"ttft_ms": pool(base, "ttft_ms"), "tpot_ms": pool(base, "tpot_ms")},
                "run": {"ttft_ms": pool(run, "ttft_ms"), "tpot_ms": pool(run, "tpot_ms")}}

    def _measurement_dict(self) -> dict[str, Any] | None:
        m = self.measurement
        if m is None:
            return None
        return {"rounds": len(m.results), "requests": m.requests, "seconds": round(m.seconds, 2),
                "stopped": m.stopped, "attempt_notes": list(m.notes)}

    def _compare(self, metrics: Mapping[str, float], notes: list[str]) -> list[MetricComparison]:
        """Compare with (or record) the stored baseline: statistically when rounds are stored, else the old way."""
        store, name = self.session.store, self.target.name
        values = {m: metrics[m] for m in BASELINE_METRICS if m in metrics and self.result.valid}
        tolerances = self.session.target_tolerances(self.target)
        gate = self.session.gate_settings(self.target)
        rounds = [round_of(r) for r in self.measurement.results] if self.measurement else [round_of(self.result)]
        if store.update:
            if store.add_start:
                rounds = self._with_stored_starts(rounds, notes)
            checks = gate_checks(rounds, rounds, gate, across_starts=False)
            recorded = (summary_entry(shape_of(self.result.spec), rounds, checks)
                        | server_incumbent.server_field(metrics) | {"host": host_fingerprint()})
            store.record_entry(name, self.baseline_id, recorded, [round_to_dict(r, BASELINE_METRICS) for r in rounds])
            return [MetricComparison(c.metric, c.check.candidate_value, None,
                                     tolerances.get(c.metric) or default_tolerance(c.metric), "recorded")
                    for c in checks]
        entry = store.lookup_entry(name, self.baseline_id)
        self.incumbent_server = server_incumbent.stored_server(entry) if entry is not None else None
        if entry is None or not is_statistical(entry):
            if entry is not None:
                notes.append("baseline entry is in the old one-number format: compared by the old tolerance rule "
                             "(baseline ± rel·|baseline| + abs); re-record with --update-baselines for the "
                             "statistical verdict")
            return store.compare(name, self.baseline_id, values, tolerances)
        check_shape(entry, self.result.spec, store.path_for(name), self.baseline_id)
        stored = (self.measurement.baseline_rounds if self.measurement and self.measurement.baseline_rounds
                  else baseline_rounds(store, name, self.baseline_id))
        out = []
        other_host = host_difference(entry.get("host"), host_fingerprint())
        if other_host is not None:
            notes.append(f"{other_host}: no verdict across hosts (every gated row is inconclusive); record a "
                         "baseline on this host with --update-baselines")
        elif "host" not in entry:
            notes.append("the baseline does not say which CPU recorded it (recorded before hosts were kept): "
                         "re-record it to have another host's run refused a verdict")
        for c in gate_checks(stored, rounds, gate):
            if other_host is not None and c.gated:
                c = dataclasses.replace(c, check=dataclasses.replace(
                    c.check, verdict="inconclusive", reason=f"{other_host}; the change is shown, not judged"))
            verdict = {"pass": "ok"}.get(c.verdict, c.verdict) if c.gated else f"({c.verdict})"
            out.append(MetricComparison(c.metric, c.check.candidate_value, c.check.incumbent_value,
                                        tolerances.get(c.metric) or default_tolerance(c.metric), verdict, gate=c))
            if c.gated and c.verdict != "pass":
                notes.append(f"{c.metric}: {c.verdict}: {c.check.reason}")
        one_start = [c.gate for c in out if c.gate is not None and c.gate.gated and c.gate.starts < 2]
        if one_start and one_start[0].start_spread_assumed:
            notes.append(f"the baseline was recorded in one server start: a spread of {gate.start_spread:.0%} between "
                         "starts is assumed (baseline_gate.start_spread); add starts (--llmserve-add-start, one run "
                         "each) to measure it instead")
        elif any(g.verdict in ("regression", "improvement") for g in one_start):
            notes.append("the baseline was recorded in one server start, so a shift between server starts is not in "
                         "its noise model (baseline_gate.start_spread = 0): add starts (--llmserve-add-start, one "
                         "run each) before trusting a small change")
        return out

    def _with_stored_starts(self, rounds: list[Any], notes: list[str]) -> list[Any]:
        """--llmserve-add-start: the stored rounds plus this run's, labelled as the next server start."""
        store, name = self.session.store, self.target.name
        entry = store.lookup_entry(name, self.baseline_id)
        if entry is None or not is_statistical(entry):
            notes.append("no statistical baseline to add a server start to: recorded as its first start")
            return rounds
        check_shape(entry, self.result.spec, store.path_for(name), self.baseline_id)
        other_host = host_difference(entry.get("host"), host_fingerprint())
        if other_host is not None:
            raise BaselineError(f"{self.baseline_id}: {other_host}; a start from another host is not added (record "
                                "a fresh baseline here with --update-baselines)")
        stored = baseline_rounds(store, name, self.baseline_id)
        start = max(r.start for r in stored) + 1
        notes.append(f"added as server start {start + 1} ({len(rounds)} rounds) to the {len(stored)} stored rounds")
        return stored + [dataclasses.replace(r, start=start) for r in rounds]

    def assert_slo(self, **limits: Any) -> SloReport:
        """Fail the test with the verdict table when a limit, the baseline or run validity says so."""
        report = self.evaluate(**limits)
        self.session.record(
            ResultEntry(self.nodeid, self.target.name, "slo", report.passed, report.render(),
                        {"metrics": self.metrics, "result": self.result.to_dict(), "context": list(report.context),
                         "optimisations": self.optimisations.to_dict() if self.optimisations else None,
                         "server_metrics": asdict(self.server_metrics) if self.server_metrics else None,
                         "rows": slo_rows(report),
                         "baseline_gate": [c.gate.to_dict() for c in self.comparisons if c.gate is not None],
                         "measurement": self._measurement_dict()})
        )
        if self.item is not None:
            self.item.user_properties.extend(junit_properties(self.target.name, report))
        if not report.passed and self.session.report_md is not None and self.comparisons and self.measurement:
            self.session.keep_ecdf(self.nodeid, self._ecdf_samples())
        if not report.passed:
            pytest.fail(report.render(), pytrace=False)
        return report


def _errors_refuse_recording(result: RunResult, limits: Mapping[str, float]) -> str | None:
    """Why a run with failed requests may not become a baseline (None: it may): its percentiles cover
    only the requests that succeeded, so it would poison every later comparison."""
    s = result.summary
    if not s.errors or s.error_rate <= limits.get("max_error_rate", 0.0):
        return None
    counts = ", ".join(f"{k}={v}" for k, v in sorted(s.errors.items()))
    return (f"{s.requests - s.completed} of {s.requests} requests failed ({counts}); a baseline is recorded only "
            "from a run within max_error_rate (default 0); nothing was written")


def slo_rows(report: SloReport) -> list[dict[str, Any]]:
    """The verdict table as rows for the session's combined table and the JSON report."""
    rows: list[dict[str, Any]] = [{"metric": r.metric, "measured": r.measured, "limit": r.limit, "baseline": r.baseline,
                                   "allowed": r.allowed, "verdict": r.verdict,
                                   **({"change": r.change, "margin": r.margin, "detectable": r.detectable, "n": r.n}
                                      if r.change else {})} for r in report.rows]
    invalid = [p.removeprefix("run invalid for SLO checks: ") for p in report.problems if p.startswith("run invalid")]
    if invalid:  # e.g. the client self-check rejected the run: one row, every reason in its note
        rows.append({"metric": "run validity", "measured": "invalid", "verdict": "FAIL", "note": "; ".join(invalid)})
    rows += [{"metric": "problem", "measured": "-", "verdict": "FAIL", "note": p}
             for p in report.problems if not p.startswith("run invalid")]
    return rows


def junit_properties(target: str, report: SloReport) -> list[tuple[str, Any]]:
    """`llmserve.<metric>` = measured (plus .baseline, .limit, .verdict) for JUnit XML's <properties>."""
    props: list[tuple[str, Any]] = [("llmserve.target", target), ("llmserve.verdict", "pass" if report.passed else "fail")]
    for r in report.rows:
        props.append((f"llmserve.{r.metric}", round_significant(r.measured) if r.measured == r.measured else "n/a"))
        if r.limit != "-":
            props.append((f"llmserve.{r.metric}.limit", r.limit))
        if r.baseline is not None:
            props.append((f"llmserve.{r.metric}.baseline", r.baseline))
        props.append((f"llmserve.{r.metric}.verdict", r.verdict))
    props += [("llmserve.problem", p) for p in report.problems]
    return props


def server_lines(summary: MetricsSummary | None) -> list[str]:
    """One line of what the server said about itself, then its warnings (KV cache full, preemptions)."""
    if summary is None or not summary.samples:
        return []
    pct = (lambda v: "n/a" if v is None else f"{100 * v:.1f} %")  # noqa: E731
    num = (lambda v: "n/a" if v is None else f"{v:g}")  # noqa: E731
    queue = "n/a" if summary.queue_time_mean_s is None else f"{1000 * summary.queue_time_mean_s:.2f} ms"
    line = (f"server ({summary.source}, {summary.samples} samples): KV cache max {pct(summary.kv_usage_max)}, "
            f"running max {num(summary.running_max)}, waiting max {num(summary.waiting_max)}, "
            f"preemptions {num(summary.preemptions_delta)}, queue time mean {queue}")
    return [line] + [f"WARNING: {w}" for w in summary.warnings]


def _client_line(result: RunResult) -> str:
    """The client's own verdict on whether it kept up (a saturated client invalidates the run)."""
    check = result.client_check
    verdict = "ok" if check.valid else "INVALID: " + "; ".join(check.reasons)
    stamps = "kernel receive timestamps" if check.kernel_timestamps else "user-space timestamps"
    return f"client self-check: {verdict} (event-loop delay p99 {check.loop_lag_p99_ms:.2f} ms, {stamps})"
