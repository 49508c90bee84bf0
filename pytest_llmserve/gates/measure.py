"""How much to measure: rounds of one load shape, re-measured when invalid, repeated until the gate can decide.

* one round = one client run of the test's spec; a round the client marks invalid (its self-check) or that
  lost requests to connection errors is measured again, up to `retries` times, each attempt noted;
* recording (`--update-baselines`): at least `repeats` rounds, more until the baseline alone is precise
  enough for every gated metric's margin (half of the variance the gate may spend), or the budget is spent;
* gating against a statistical baseline (`until_decided`): rounds until every gated metric's interval is
  narrow enough for its margin at the configured power (baseline_gate.all_precise), or the budget is spent.
  The stop rule looks only at interval widths, never at the estimate, so it costs no α.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..store.baselines import BaselineError, higher_is_better, is_statistical
from ..checks.baseline_gate import GateCheck, Round, all_precise, compare_rounds
from ..checks.slo import BASELINE_METRICS
from ..settings.gate import GateSettings
from ..load import RunResult
from ..load.summary import summarize

# connection-level failures a busy machine or a restarting proxy causes; HTTP errors and timeouts are not retried
TRANSIENT_ERRORS = frozenset({"connect_error", "connection_reset", "connection_closed", "connection_error"})
DEFAULT_REPEATS = 5
DEFAULT_RETRIES = 2


@dataclass
class Measurement:
    """What was measured for one test: the rounds, the attempts behind them and why it stopped."""

    results: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0
    baseline_rounds: list[Round] | None = None  # the stored rounds compared with (gate mode)

    @property
    def requests(self) -> int:
        return sum(r.summary.requests for r in self.results)

    def line(self) -> str:
        return (f"measured {len(self.results)} round{'s' if len(self.results) != 1 else ''}, {self.requests} requests "
                f"in {self.seconds:.1f} s" + (f"; stopped: {self.stopped}" if self.stopped else ""))


def retry_reason(result: RunResult) -> str | None:
    """Why a round deserves another attempt (None: it is valid, or measuring again would not help)."""
    why = []
    errors = result.summary.errors
    if errors and set(errors) <= TRANSIENT_ERRORS:
        why.append("transient connection errors: " + ", ".join(f"{k}={v}" for k, v in sorted(errors.items())))
    if not result.client_check.valid:
        why.append("client self-check: " + "; ".join(result.client_check.reasons))
    return "; ".join(why) or None


def run_round(run_once: Callable[[], RunResult], retries: int, label: str, alive: Callable[[], bool],
              notes: list[str]) -> RunResult:
    """One round, measured again (up to `retries` more times) while it is invalid for a transient reason."""
    result = run_once()
    attempt = 1
    while (why := retry_reason(result)) is not None and attempt <= retries and alive():
        notes.append(f"{label}: attempt {attempt} of {retries + 1} not usable ({why}); measured again")
        result = run_once()
        attempt += 1
    if attempt > 1:
        final = "valid" if retry_reason(result) is None and result.valid else "still not usable"
        notes.append(f"{label}: {attempt} attempts, the last {final}")
    return result


def merge_results(results: Sequence[RunResult]) -> RunResult:
    """One RunResult over several rounds: records pooled, throughput over the summed measured time."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    records = [r for res in results for r in res.records]
    summary = summarize(records, first.spec)
    duration = sum(r.summary.duration_s for r in results)
    tokens = sum(r.summary.output_tok_s * r.summary.duration_s for r in results)
    done = sum(r.summary.completed for r in results)
    summary = dataclasses.replace(summary, duration_s=duration, output_tok_s=tokens / duration if duration else 0.0,
                                  requests_s=done / duration if duration else 0.0)
    reasons = [f"round {i + 1}: {why}" for i, r in enumerate(results) for why in r.invalid_reasons]
    check = next((r.client_check for r in results if not r.client_check.valid), results[-1].client_check)
    replies = [r.session_replies for r in results if r.session_replies is not None]
    return RunResult(spec=first.spec, records=records, summary=summary, client_check=check,
                     valid=all(r.valid for r in results), invalid_reasons=reasons,
                     work=dict(first.work),  # every round ran the same fitted work (endpoint, prompts, matching)
                     session_replies=(sum(t for t, _ in replies), sum(s for _, s in replies)) if replies else None)


def gate_checks(baseline: Sequence[Round], candidate: Sequence[Round], gate: GateSettings,
                gated_only: bool = False, across_starts: bool = True) -> list[GateCheck]:
    """Every baseline metric both sides have, gated ones at α/k with their margin, the rest for information.

    across_starts: the candidate is another start than the baseline's (a gate), so a one-start baseline
    gets the assumed start spread; False when a recording is checked against itself."""
    out = []
    for metric in BASELINE_METRICS:
        if gated_only and gate.margin(metric) is None:
            continue
        c = compare_rounds(metric, baseline, candidate, higher_is_better=higher_is_better(metric),
                           margin=gate.margin(metric), alpha=gate.alpha_per_metric, power=gate.power,
                           assumed_start_spread=gate.start_spread if across_starts else 0.0)
        if c is not None:
            out.append(c)
    return out


@dataclass
class Planner:
    """Decides after each round whether to measure another one."""

    gate: GateSettings
    mode: str  # "record" (sequential) | "repeat" (exactly `repeats` rounds) | "gate" | "once"
    repeats: int
    baseline: list[Round] | None = None
    started: float = field(default_factory=time.monotonic)

    def more(self, m: Measurement, rounds: list[Round]) -> bool:
        last = m.results[-1]
        if not last.valid or retry_reason(last) is not None:
            m.stopped = "a round stayed invalid"
            return False
        if self.mode == "once":
            return False
        if self.mode in ("record", "repeat") and last.summary.errors:  # such a run is never recorded anyway
            m.stopped = "a round had failed requests"
            return False
        if self.mode == "repeat":
            if len(rounds) >= self.repeats:
                m.stopped = f"{self.repeats} repeats recorded"
                return False
            return True
        elapsed = time.monotonic() - self.started
        per_round = elapsed / len(rounds)
        if self.mode == "record":
            if len(rounds) < self.repeats:
                return True
            if all_precise(gate_checks(rounds, rounds, self.gate, gated_only=True, across_starts=False)):
                m.stopped = f"the baseline is precise enough for every gated margin (at least {self.repeats} repeats)"
                return False
        else:
            checks = gate_checks(self.baseline or [], rounds, self.gate, gated_only=True)
            if all_precise(checks):
                m.stopped = "every gated metric is measured precisely enough for its margin"
                return False
            hopeless = [c.metric for c in checks if not c.precise and c.requests_needed is None]
            if hopeless and len(rounds) >= 4:  # a few rounds first: τ from two rounds is itself noise
                m.stopped = (f"no number of requests makes {', '.join(hopeless)} precise enough: the baseline's own "
                             "uncertainty (run-to-run spread over its repeats, the spread between its server starts, "
                             "or the start spread assumed for a one-start baseline) is too large for the margin")
                return False
        if elapsed + per_round > self.gate.budget_s:
            m.stopped = f"time budget {self.gate.budget_s:g} s spent"
            return False
        if m.requests + last.summary.requests > self.gate.max_requests:
            m.stopped = f"request budget {self.gate.max_requests} spent"
            return False
        return True


def plan_mode(entry: dict[str, Any] | None, update: bool, sequential: bool, other_host: bool = False) -> str:
    """record | gate (measure until decided) | once; a baseline from another host gets one round: no number
    of rounds would give it a verdict."""
    if update:
        return "record"
    if sequential and entry is not None and is_statistical(entry) and not other_host:
        return "gate"
    return "once"


def measure(run_once: Callable[[int], RunResult], planner: Planner, retries: int,
            alive: Callable[[], bool]) -> Measurement:
    """Rounds until the planner says stop; `run_once(i)` measures round i (0-based)."""
    from ..store.baseline_samples import round_of

    m = Measurement(baseline_rounds=planner.baseline)
    rounds: list[Round] = []
    t0 = time.monotonic()
    while True:
        i = len(m.results)
        result = run_round(lambda: run_once(i), retries, f"round {i + 1}", alive, m.notes)
        m.results.append(result)
        rounds.append(round_of(result))
        if not planner.more(m, rounds):
            break
    m.seconds = time.monotonic() - t0
    return m


def baseline_rounds(store: Any, target: str, test_id: str) -> list[Round]:
    """The stored rounds of a statistical entry (BaselineError when the sidecar is missing or corrupt)."""
    from ..store.baseline_samples import round_from_dict

    rounds = [round_from_dict(r) for r in store.rounds(target, test_id)]
    if not rounds:
        raise BaselineError(f"{test_id}: the stored baseline has no rounds")
    return rounds
