"""Score a candidate target and its reference target on the same tasks, gate the paired delta.

Both servers are scored through their APIs, one after the other (they share the machine). The
decision is the paired accuracy gate (checks/accuracy_gate.py) on per-item 0/1 correctness; the
per-item log-likelihood delta is shown beside it as evidence, and stored absolute references
(accuracy_refs.py) add a check that the two sides did not drift together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..store.accuracy_refs import AccuracyReferences, ReferenceRow
from ..reference.accuracy_tasks import DEFAULT_CONCURRENCY, Task, TaskScores, check_tokenizer, paired_arrays, score_task
from ..checks.accuracy_gate import AccuracyGateResult, accuracy_gate
from ..evidence.precision import PrecisionInfo, precision_of
from ..checks.stats import Interval, paired_bootstrap_mean_diff_ci

DEFAULT_TOLERANCE = 0.01  # δ: 1 percentage point of accuracy may be lost by design (FP8's usual budget)
DEFAULT_DETECTABLE_FACTOR = 3.0  # a task must detect (power 1 − β) a drop of 3·δ, else it is inconclusive


def item_group(item_id: str) -> str:
    """The cluster an item belongs to: next_token positions "passage@pos" group by passage; others stand alone."""
    return item_id.rsplit("@", 1)[0]


@dataclass(frozen=True, slots=True)
class ScoredTarget:
    """One target's scores on one task, with the precision it reported and how long scoring took."""

    target: str
    precision: PrecisionInfo
    scores: TaskScores
    seconds: float


@dataclass(frozen=True, slots=True)
class AccuracyComparison:
    """The verdict for one task: the paired gate, the log-likelihood delta and reference rows."""

    task: Task
    baseline: ScoredTarget
    candidate: ScoredTarget
    gate: AccuracyGateResult
    loglik_delta: Interval  # mean per-item log-likelihood, candidate − baseline (nats)
    references: tuple[ReferenceRow, ...] = ()

    @property
    def passed(self) -> bool:
        return self.gate.passed and not any(r.verdict == "regression" for r in self.references)

    def render(self) -> str:
        b, c = self.baseline, self.candidate
        lines = [
            f"task {self.task.name} ({self.task.kind}, {len(self.task.items)} items → n={self.gate.n} scored, "
            f"{self.task.source}, sha256 {self.task.sha256[:12]})",
            f"  baseline  {b.target}: {b.precision.describe()}; scored in {b.seconds:.1f} s",
            f"  candidate {c.target}: {c.precision.describe()}; scored in {c.seconds:.1f} s",
            self.gate.render(),
            f"  mean log-likelihood: baseline {b.scores.summary()['mean_loglik']:.4f}, candidate "
            f"{c.scores.summary()['mean_loglik']:.4f} nats/item; delta {self.loglik_delta.estimate:+.4f} "
            f"{self.loglik_delta.confidence:.0%} CI [{self.loglik_delta.low:+.4f}, {self.loglik_delta.high:+.4f}] "
            "(evidence only, not gated)",
        ]
        if self.references:
            lines.append("  stored references (TensorRT-LLM-style unpaired threshold):")
            lines += [f"    {r.render()}" for r in self.references]
        if self.gate.verdict == "inconclusive":
            lines.append("  INCONCLUSIVE: too few effective items to detect the required drop (not a pass)")
        if not self.passed and self.gate.passed:
            lines.append("  FAIL: a stored reference regressed although the paired gate passed")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """Summary-table rows (report/summary.py): the gate, then each stored reference; scores in %."""
        g = self.gate
        pct = (lambda x: 100 * x) if g.binary else (lambda x: x)
        out = [{"metric": f"{self.task.name} accuracy %", "measured": pct(g.candidate_score), "limit": pct(g.threshold),
                "baseline": pct(g.baseline_score), "verdict": g.verdict}]
        for r in self.references:
            verdict = "not stored" if r.verdict == "missing" else r.verdict  # informational, not a failure
            out.append({"metric": f"ref {r.key} %", "measured": 100 * r.measured,
                        "limit": None if r.threshold is None else 100 * r.threshold,
                        "baseline": None if r.stored is None else 100 * r.stored, "verdict": verdict})
        return out

    def data(self) -> dict[str, Any]:
        """JSON-ready evidence for reports."""
        return {
            "rows": self.rows(),
            "task": self.task.name, "task_sha256": self.task.sha256,
            "baseline": {"target": self.baseline.target, "precision": self.baseline.precision.key(),
                         "source": self.baseline.precision.source, **self.baseline.scores.summary()},
            "candidate": {"target": self.candidate.target, "precision": self.candidate.precision.key(),
                          "source": self.candidate.precision.source, **self.candidate.scores.summary()},
            "gate": self.gate.as_dict(),
            "loglik_delta": [self.loglik_delta.estimate, self.loglik_delta.low, self.loglik_delta.high],
            "references": [r.render() for r in self.references],
        }


def score_server(handle: Any, task: Task, concurrency: int = DEFAULT_CONCURRENCY) -> ScoredTarget:
    """Score `task` on a running server (a ServerHandle) and read the precision it runs."""
    check_tokenizer(task, handle.target.model)
    precision = precision_of(handle.target, handle.log_text())
    started = time.perf_counter()
    scores = score_task(handle.base_url, handle.model, task, target=handle.target.name, concurrency=concurrency)
    return ScoredTarget(handle.target.name, precision, scores, time.perf_counter() - started)


def compare_scored(task: Task, baseline: ScoredTarget, candidate: ScoredTarget, *, tolerance: float = DEFAULT_TOLERANCE,
                   alpha: float = 0.05, beta: float = 0.2, references: AccuracyReferences | None = None,
                   require_detectable: float | None = None) -> AccuracyComparison:
    """Gate already-scored targets: paired accuracy delta (bootstrap over passages), log-likelihood delta, references.

    `require_detectable` (default 3·δ): a task whose effective n cannot detect a drop that large is inconclusive.
    """
    base_ok, cand_ok = paired_arrays(baseline.scores, candidate.scores, "correct")
    groups = [item_group(i.id) for i in baseline.scores.items]
    detectable = require_detectable if require_detectable is not None else DEFAULT_DETECTABLE_FACTOR * tolerance
    gate = accuracy_gate(base_ok, cand_ok, metric=f"{task.name} accuracy", tolerance=tolerance, alpha=alpha, beta=beta,
                         groups=groups, require_detectable=detectable if detectable > tolerance else None)
    base_ll, cand_ll = paired_arrays(baseline.scores, candidate.scores, "loglik")
    ll = paired_bootstrap_mean_diff_ci(cand_ll, base_ll, confidence=1 - 2 * alpha)
    rows: tuple[ReferenceRow, ...] = ()
    if references is not None:
        sides = [baseline] if baseline.precision.key() == candidate.precision.key() and baseline.target == candidate.target \
            else [baseline, candidate]
        rows = tuple(references.check(task.name, task.sha256, s.precision, s.scores.summary()) for s in sides)
    return AccuracyComparison(task, baseline, candidate, gate, ll, rows)


def compare_targets(baseline: Any, candidate: Any, tasks: Sequence[Task], *, tolerance: float = DEFAULT_TOLERANCE,
                    alpha: float = 0.05, beta: float = 0.2, concurrency: int = DEFAULT_CONCURRENCY,
                    references: AccuracyReferences | None = None,
                    require_detectable: float | None = None) -> list[AccuracyComparison]:
    """Score both servers on every task and gate each at α/m (Bonferroni over the m tasks).

    Multiplicity: the suite fails when any task fails, so each of m tasks is tested at α/m and the
    chance that a change within δ fails somewhere stays ≤ α (and power is that of α/m per task).
    """
    out = []
    per_task = alpha / max(1, len(tasks))
    for task in tasks:
        base = score_server(baseline, task, concurrency)
        cand = score_server(candidate, task, concurrency)
        out.append(compare_scored(task, base, cand, tolerance=tolerance, alpha=per_task, beta=beta,
                                  references=references, require_detectable=require_detectable))
    return out
