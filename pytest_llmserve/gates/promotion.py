"""Live promotion runs: a candidate against an incumbent (a second live target, or a stored sample set).

    ab = run_ab(Arm("new", url_new, "m"), Arm("old", url_old, "m"), LoadSpec(concurrency=8, requests=256),
                rounds=4)
    ab.verdict, ab.exit_code, print(ab.render())

Both live: rounds are interleaved in ABBA blocks (incumbent, candidate, candidate, incumbent, ...) with
the same prompts for both sides in a round. Plain alternation A,B,A,B leaves the side that always goes
second half a round later in any linear drift (thermal, cache, a neighbour's load); ABBA cancels it.
Per-request samples (TTFT, TPOT, E2E) are pooled per side and compared by checks/promotion.py's
percentile bootstrap; throughput is one value per round (Welch). Request errors are compared with an
exact conditional binomial test. A stored incumbent is a JSON sample set written by `save_samples`;
it cannot be interleaved, so drift since it was recorded is not cancelled (the report says so).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..checks.promotion import (
    DEFAULT_MARGIN,
    EXIT_CODES,
    PromotionCheck,
    PromotionResult,
    compare_samples,
    parse_statistic,
    promote,
)
from ..load import ClientOptions, LoadSpec, RunResult
from ..load.fit import fit_load
from .live_run import LiveEndpoint, Runner, run_watched
from ..report.progress import Emit
from ..checks.stats import binomial_sf, percentile

DEFAULT_METRICS = ("ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms", "output_tok_s")
SAMPLES_SCHEMA = 1
_METRIC = re.compile(r"^(ttft|tpot|e2e)_(p\d+(?:\.\d+)?|median|mean)_ms$")
_SPEC_KEYS = ("endpoint", "concurrency", "rate", "input_len", "output_len", "ignore_eos")  # what "same work" means
_RANK = {"regression": 3, "inconclusive": 2, "improvement": 1, "pass": 0}


Arm = LiveEndpoint  # one side of the comparison


@dataclass
class ArmSamples:
    """What one side measured: per-request samples kept per round, per-round throughput, errors."""

    name: str
    url: str
    ttft_ms: list[list[float]] = field(default_factory=list)  # one list per round
    tpot_ms: list[list[float]] = field(default_factory=list)
    e2e_ms: list[list[float]] = field(default_factory=list)
    output_tok_s: list[float] = field(default_factory=list)  # one value per round
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    recorded_at: str = ""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def completed(self) -> int:
        return sum(len(r) for r in self.ttft_ms)

    def add(self, result: RunResult, round_no: int, server: Any = None) -> None:
        ok = [r for r in result.records if not r.warmup and r.ok]
        self.ttft_ms.append([x for r in ok if (x := r.ttft_ms) is not None])
        self.tpot_ms.append([x for r in ok if (x := r.tpot_ms) is not None])
        self.e2e_ms.append([x for r in ok if (x := r.e2e_ms) is not None])
        self.output_tok_s.append(result.summary.output_tok_s)
        self.requests += result.summary.requests
        for k, n in result.summary.errors.items():
            self.errors[k] = self.errors.get(k, 0) + n
        self.invalid += [f"round {round_no}: {r}" for r in result.invalid_reasons]
        if server is not None:
            self.warnings += [f"round {round_no}: {w}" for w in server.warnings]

    def sample(self, metric: str) -> tuple[list[float], list[float], str]:
        """(pooled per-request values, one value per round, statistic) for `metric`."""
        if metric == "output_tok_s":
            return list(self.output_tok_s), list(self.output_tok_s), "mean"
        m = _METRIC.match(metric)
        if not m:
            raise ValueError(f"metric {metric!r}: use output_tok_s or <ttft|tpot|e2e>_<p95|p99|median|mean>_ms "
                             "(ITL is gated per request as TPOT: pooled gaps are correlated)")
        rounds = [r for r in getattr(self, f"{m.group(1)}_ms") if r]
        q = parse_statistic(m.group(2))
        per_round = [float(np.mean(r)) if q is None else percentile(r, q) for r in rounds]
        return [x for r in rounds for x in r], per_round, m.group(2)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SAMPLES_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArmSamples:
        if d.get("schema") != SAMPLES_SCHEMA:
            raise ValueError(f"samples file schema {d.get('schema')!r} is not {SAMPLES_SCHEMA}; re-record it")
        return cls(**{k: v for k, v in d.items() if k != "schema"})


def spec_key(spec: LoadSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in _SPEC_KEYS}


def save_samples(arm: ArmSamples, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(arm.to_dict(), indent=1) + "\n")
    return out


def load_samples(path: str | Path, spec: LoadSpec | None = None) -> ArmSamples:
    """A stored sample set; refused when it measured different work than `spec`."""
    try:
        arm = ArmSamples.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"incumbent samples {path}: {exc}; record them with `llmserve promote --record-only "
                         "--candidate-url URL --save-samples FILE`") from None
    if spec is not None and arm.spec and arm.spec != spec_key(spec):
        diff = {k: (arm.spec.get(k), v) for k, v in spec_key(spec).items() if arm.spec.get(k) != v}
        raise ValueError(f"incumbent samples {path} measured other work ({', '.join(f'{k}: stored {a!r}, now {b!r}' for k, (a, b) in diff.items())}); "
                         "use the same load settings or re-record them")
    return arm


def interleaved_order(rounds: int) -> list[tuple[str, str]]:
    """ABBA blocks: (incumbent, candidate), (candidate, incumbent), ... one pair per round."""
    return [("incumbent", "candidate") if k % 2 == 0 else ("candidate", "incumbent") for k in range(rounds)]


@dataclass(frozen=True)
class ABRun:
    """A finished comparison: both sides' samples, the per-metric gate and the overall verdict."""

    candidate: ArmSamples
    incumbent: ArmSamples
    spec: LoadSpec
    rounds: int
    interleaved: bool
    result: PromotionResult
    error_check: tuple[str, str]  # (verdict, reason)
    allow_invalid: bool = False

    @property
    def problems(self) -> list[tuple[str, str]]:
        out = [self.error_check] if self.error_check[0] != "pass" else []
        rounds = {(side.name, r.split(":", 1)[0]) for side in (self.candidate, self.incumbent) for r in side.invalid}
        if rounds and not self.allow_invalid:
            out.append(("inconclusive", f"{len(rounds)} round(s) measured by a client that did not keep up or with "
                                        "unmatched work (see below); their numbers are not trusted "
                                        "(--allow-invalid gates them anyway)"))
        return out

    @property
    def verdict(self) -> str:
        verdicts = [self.result.verdict] + [v for v, _ in self.problems]
        return max(verdicts, key=lambda v: _RANK[v])

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def render(self) -> str:
        s = self.spec
        how = ("live, interleaved ABBA" if self.interleaved else
               f"against stored samples recorded {self.incumbent.recorded_at or 'earlier'} (not interleaved: "
               "drift since then is not cancelled)")
        lines = [f"promotion: candidate {self.candidate.name} ({self.candidate.url}) vs incumbent "
                 f"{self.incumbent.name} ({self.incumbent.url})",
                 f"  {how}; {self.rounds} round(s) per side of {s.requests} requests at concurrency {s.concurrency}, "
                 f"{s.input_len} in / {s.output_len} out tokens; per side "
                 f"{self.candidate.completed}/{self.incumbent.completed} successful requests", ""]
        lines += [self.result.render().replace("overall:", "metrics overall:"), ""]
        lines.append(f"- errors: {self.error_check[0]}: {self.error_check[1]}")
        for side in (self.candidate, self.incumbent):
            lines += [f"  ! {side.name}: {r}" for r in side.invalid]
            lines += [f"  ! {side.name} server: {w}" for w in side.warnings]
        for verdict, reason in self.problems:
            lines.append(f"  -> {verdict}: {reason}")
        lines.append(f"VERDICT: {self.verdict.upper()} (exit code {self.exit_code}: 0 pass/improvement, "
                     "1 regression, 2 inconclusive)")
        return "\n".join(lines)

    def markdown(self) -> str:
        """A pull-request comment: verdict line, the per-metric table, the reasoning collapsed."""
        icon = {"pass": "✅", "improvement": "✅", "regression": "❌", "inconclusive": "⚠️"}[self.verdict]
        head = ("metric", "stat", "incumbent", "candidate", "change [CI]", "CI ±", "detectable", "n cand/inc", "verdict")
        lines = [f"### {icon} promotion: `{self.candidate.name}` vs `{self.incumbent.name}`: **{self.verdict.upper()}**",
                 "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.row()) + " |" for c in self.result.checks]
        lines += ["", f"errors: {self.error_check[0]}: {self.error_check[1]}", "",
                  "<details><summary>how this was decided</summary>", "", "```", self.render(), "```", "", "</details>", ""]
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """Combined-table rows: one per gated metric."""
        rows = [{"metric": f"{c.metric} ({c.statistic})", "measured": c.candidate_value, "baseline": c.incumbent_value,
                 "limit": f"margin {c.margin:.0%}, detects {c.min_detectable:.0%}", "verdict": c.verdict}
                for c in self.result.checks]
        rows.append({"metric": "failed requests", "measured": self.candidate.error_count,
                     "baseline": self.incumbent.error_count, "verdict": self.error_check[0]})
        rows += [{"metric": "run validity", "verdict": v, "limit": reason[:80]} for v, reason in self.problems
                 if v != self.error_check[0] or reason != self.error_check[1]]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "exit_code": self.exit_code, "rounds": self.rounds,
                "interleaved": self.interleaved, "spec": spec_key(self.spec) | {"requests": self.spec.requests},
                "checks": [_check_dict(c) for c in self.result.checks],
                "errors": {"verdict": self.error_check[0], "reason": self.error_check[1],
                           "candidate": self.candidate.errors, "incumbent": self.incumbent.errors},
                "problems": [list(p) for p in self.problems],
                "candidate": {"name": self.candidate.name, "url": self.candidate.url, "invalid": self.candidate.invalid,
                              "warnings": self.candidate.warnings},
                "incumbent": {"name": self.incumbent.name, "url": self.incumbent.url, "invalid": self.incumbent.invalid,
                              "warnings": self.incumbent.warnings}}


def _check_dict(c: PromotionCheck) -> dict[str, Any]:
    d = c.as_dict()
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def error_check(candidate: ArmSamples, incumbent: ArmSamples, alpha: float = 0.05) -> tuple[str, str]:
    """Exact one-sided test that the candidate fails requests more often (conditional binomial)."""
    kc, ki, nc, ni = candidate.error_count, incumbent.error_count, candidate.requests, incumbent.requests
    if kc == 0:
        return "pass", f"no failed requests in {nc} (incumbent {ki} of {ni})"
    # given kc + ki errors in total, under equal rates kc ~ Binomial(kc + ki, nc / (nc + ni))
    p = binomial_sf(kc, kc + ki, nc / (nc + ni))
    if p < alpha:
        return "regression", f"{kc} of {nc} candidate requests failed vs {ki} of {ni} (one-sided p={p:.3g} < α={alpha:g})"
    return "pass", f"{kc} of {nc} candidate requests failed vs {ki} of {ni}: not more than chance (p={p:.3g})"


def gate(candidate: ArmSamples, incumbent: ArmSamples, *, metrics: Sequence[str] = DEFAULT_METRICS,
         margin: float = DEFAULT_MARGIN, alpha: float = 0.05, beta: float = 0.2) -> PromotionResult:
    """Per-metric promotion checks (checks/promotion.compare_samples) combined into one result.

    A latency percentile is compared twice: pooled over requests (bootstrap) and with the round as
    the unit (Welch on one value per round). Requests of one round share the machine's state, so
    when rounds differ more than request sampling explains, the pooled interval is too narrow: the
    wider of the two decides. With fewer than 3 rounds a side the round-level check cannot run.
    """
    checks = []
    for metric in metrics:
        cand, cand_rounds, stat = candidate.sample(metric)
        inc, inc_rounds, _ = incumbent.sample(metric)
        if not cand or not inc:
            raise ValueError(f"{metric}: no successful samples ({len(cand)} candidate, {len(inc)} incumbent)")
        kw: dict[str, Any] = {"higher_is_better": metric == "output_tok_s", "margin": margin, "alpha": alpha,
                              "beta": beta}
        if metric == "output_tok_s":
            checks.append(compare_samples(metric, cand, inc, statistic="mean", **kw))
            continue
        pooled = compare_samples(metric, cand, inc, statistic=stat, **kw)
        if min(len(cand_rounds), len(inc_rounds)) < 3:
            checks.append(dataclasses.replace(pooled, reason=pooled.reason + "; round-to-round variation not "
                                              "checked (fewer than 3 rounds a side)"))
            continue
        by_round = compare_samples(metric, cand_rounds, inc_rounds, statistic="mean", **kw)
        if by_round.change.half_width > pooled.change.half_width:
            checks.append(dataclasses.replace(
                by_round, statistic=f"{stat}/round",
                reason=by_round.reason.replace("samples per side", "rounds per side").replace("mean", f"{stat}")
                + f"; the by-round interval (±{by_round.change.half_width:.1%}) is wider than the pooled one "
                  f"(±{pooled.change.half_width:.1%}): rounds vary more than request sampling explains, or there "
                  "are too few rounds to rule that out, so the round is the unit"))
        else:
            checks.append(dataclasses.replace(pooled, reason=pooled.reason + f"; by-round CI ±{by_round.change.half_width:.1%} "
                                              "is not wider"))
    # the generic hint names --update-baselines; here the incumbent is a live target or a sample set
    hint = ("record it with --update-baselines", "promote it and record its samples (llmserve promote --save-samples)")
    return promote(dataclasses.replace(c, reason=c.reason.replace(*hint)) for c in checks)


def run_rounds(arm: Arm, spec: LoadSpec, rounds: int, **kw: Any) -> ArmSamples:
    """Measure one side alone (to record a stored incumbent sample set)."""
    samples = ArmSamples(arm.name, arm.url, spec=spec_key(spec), recorded_at=_now())
    for k in range(rounds):
        _one_round(arm, samples, spec, k, **kw)
    return samples


def run_ab(candidate: Arm, incumbent: Arm | ArmSamples, spec: LoadSpec, *, rounds: int = 4,
           metrics: Sequence[str] = DEFAULT_METRICS, margin: float = DEFAULT_MARGIN, alpha: float = 0.05,
           beta: float = 0.2, allow_invalid: bool = False, **kw: Any) -> ABRun:
    """Run the comparison (interleaved when the incumbent is live) and gate it.

    `kw`: options (ClientOptions), emit (progress), interval_s, runner (tests), server_metrics, capabilities
    (what both servers accept: servers.capabilities.common of their probes; the work is fitted to it).
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be >= 1 (4 or more lets the throughput check see noise)")
    for m in metrics:
        ArmSamples("", "").sample(m)  # fail fast on an unknown metric name
    cand = ArmSamples(candidate.name, candidate.url, spec=spec_key(spec), recorded_at=_now())
    if isinstance(incumbent, ArmSamples):
        inc, live = incumbent, False
        for k in range(rounds):
            _one_round(candidate, cand, spec, k, **kw)
    else:
        inc, live = ArmSamples(incumbent.name, incumbent.url, spec=spec_key(spec), recorded_at=_now()), True
        arms = {"candidate": (candidate, cand), "incumbent": (incumbent, inc)}
        for k, pair in enumerate(interleaved_order(rounds)):
            for side in pair:
                _one_round(*arms[side], spec, k, **kw)
    result = gate(cand, inc, metrics=metrics, margin=margin, alpha=alpha, beta=beta)
    return ABRun(cand, inc, spec, rounds, live, result, error_check(cand, inc, alpha), allow_invalid)


def _one_round(arm: Arm, samples: ArmSamples, spec: LoadSpec, k: int, *, options: ClientOptions | None = None,
               emit: Emit | None = None, interval_s: float = 10.0, runner: Runner | None = None,
               server_metrics: bool = True, capabilities: Any = None, explicit: Sequence[str] = ()) -> None:
    round_spec = dataclasses.replace(spec, seed=spec.seed + k)  # both sides of a round get the same prompts
    fitted = fit_load(round_spec, capabilities, explicit)  # endpoint, prompt form, matched work: as both accept
    label = f"promote {arm.name} round {k + 1}"
    result, summary = run_watched(arm, fitted.spec, label, options=options, runner=runner, emit=emit,
                                  interval_s=interval_s, server_metrics=server_metrics)
    result = fitted.check(result)
    samples.add(result, k + 1, summary)
    if emit is not None:
        s = result.summary
        emit(f"llmserve: {label} done: {s.completed}/{s.requests} ok, {s.errors and sum(s.errors.values()) or 0} "
             f"errors, TTFT p95 {result.metrics()['ttft_p95_ms']:.1f} ms, {s.output_tok_s:,.0f} tok/s, "
             f"{s.duration_s:.1f} s" + ("" if result.valid else " (INVALID)"))


def arm_of(handle: Any) -> Arm:
    """A running server (ServerHandle) as one side of the comparison."""
    return Arm(handle.target.name, handle.base_url, handle.model, handle.metrics_url)


def capabilities_of(*handles: Any) -> Any:
    """What every one of the servers accepts (None when one was not probed): the work both sides get."""
    from ..servers.capabilities import common

    caps = [h.capabilities for h in handles]
    return None if any(c is None for c in caps) else common(caps)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
