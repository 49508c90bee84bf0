"""RunResult: every request record, the summary, the self-check and the run's validity."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .check import ClientCheck, evaluate
from .client import Shard
from .records import RequestRecord, decode
from .spec import ClientOptions, LoadSpec
from .summary import LoadSummary, Percentiles, summarize

_FAMILIES = ("ttft", "itl", "tpot", "e2e")


@dataclass
class RunResult:
    """A finished load run. `valid` is False when its numbers should not be judged against SLOs."""

    spec: LoadSpec
    records: list[RequestRecord]  # every request, warm-up included (flagged), errors included
    summary: LoadSummary  # non-warm-up records only
    client_check: ClientCheck
    valid: bool
    invalid_reasons: list[str]
    work: dict[str, Any] = field(default_factory=dict)  # how the work was fitted to the server (load/fit.py)
    # multi-turn: (later turns sent with the previous turn's real reply, of them with stand-in ids: text-only replies)
    session_replies: tuple[int, int] | None = None

    def sessions_line(self) -> str | None:
        """What multi-turn sessions fed back, for the report (None: no sessions)."""
        if self.session_replies is None:
            return None
        turns, standins = self.session_replies
        line = f"multi-turn: {turns} later turns sent the previous turn's real reply"
        if standins:
            line += (f"; {standins} of them with stand-in token ids of the reply's length (the server answered "
                     "token-id prompts with text only: it ignores return_token_ids)")
        return line

    def metrics(self) -> dict[str, float]:
        """Flat metrics: <ttft|itl|tpot|e2e>_<p50|p90|p95|p99|mean>_ms, output_tok_s, requests_s, error_rate."""
        s = self.summary
        out: dict[str, float] = {}
        for fam in _FAMILIES:
            p: Percentiles = getattr(s, f"{fam}_ms")
            for q in ("p50", "p90", "p95", "p99", "mean"):
                out[f"{fam}_{q}_ms"] = getattr(p, q)
        if s.ttft_from_schedule_ms is not None:
            for q in ("p50", "p90", "p95", "p99"):
                out[f"ttft_from_schedule_{q}_ms"] = getattr(s.ttft_from_schedule_ms, q)
                out[f"e2e_from_schedule_{q}_ms"] = getattr(s.e2e_from_schedule_ms, q)
        out["output_tok_s"] = s.output_tok_s
        out["requests_s"] = s.requests_s
        out["error_rate"] = s.error_rate
        return out

    def to_dict(self, include_records: bool = False) -> dict[str, Any]:
        """JSON-able summary (NaN becomes null); per-request records only when asked for."""
        s = self.summary
        spec = {f: getattr(self.spec, f) for f in self.spec.__dataclass_fields__}
        if self.spec.prompts is not None:
            spec["prompts"] = f"{len(self.spec.prompts)} prompts"
        if self.spec.output_lens is not None:
            spec["output_lens"] = f"{len(self.spec.output_lens)} lengths, mean {_mean(self.spec.output_lens):.1f}"
        if self.spec.arrival_times is not None:
            spec["arrival_times"] = f"{len(self.spec.arrival_times)} send offsets over {self.spec.arrival_times[-1]:.3f} s"
        spec["extra_body"] = dict(self.spec.extra_body) if self.spec.extra_body else None
        spec["sessions"] = self.sessions_line()
        d: dict[str, Any] = {
            "valid": self.valid,
            "invalid_reasons": list(self.invalid_reasons),
            **{f"{fam}_ms": getattr(s, f"{fam}_ms").to_dict() for fam in _FAMILIES},
            "ttft_from_schedule_ms": s.ttft_from_schedule_ms.to_dict() if s.ttft_from_schedule_ms else None,
            "e2e_from_schedule_ms": s.e2e_from_schedule_ms.to_dict() if s.e2e_from_schedule_ms else None,
            "output_tok_s": s.output_tok_s,
            "requests_s": s.requests_s,
            "requests": s.requests,
            "completed": s.completed,
            "errors": dict(s.errors),
            "error_rate": s.error_rate,
            "token_mismatches": s.token_mismatches,
            "usage_missing": s.usage_missing,
            "duration_s": s.duration_s,
            "client_check": self.client_check.to_dict(),
            "metrics": self.metrics(),
            "spec": spec,
            "work": dict(self.work),
            "definitions": {
                "clock": "CLOCK_REALTIME ns; arrivals are kernel receive timestamps (SO_TIMESTAMPNS)",
                "ttft_ms": "first chunk with non-empty text (not role-only) minus send",
                "itl_ms": "every gap between token-bearing chunks, pooled over requests",
                "tpot_ms": "per request (e2e - ttft) / (output_tokens - 1)",
                "e2e_ms": "last token-bearing chunk minus send",
                "output_tok_s": "usage.completion_tokens of successful requests / duration_s",
                "percentiles": "numpy.percentile method='linear' over successful requests",
            },
        }
        if include_records:
            d["records"] = [r.to_dict() for r in self.records]
        return _nan_to_none(d)


@dataclass(frozen=True, slots=True)
class MatchedWork:
    """How a client's responses are counted against output_len, and where to look when they differ."""

    counted: str = "decode exactly"  # "N responses did not <counted> output_len=L <unit>"
    unit: str = "tokens"
    hint: str = "check that the server honours ignore_eos and min_tokens"


def invalid_reasons(check: ClientCheck, summary: LoadSummary, records: Sequence[RequestRecord], spec: LoadSpec, *,
                    gave_up: str | None = None, matched: MatchedWork = MatchedWork()) -> list[str]:
    """Why a run's numbers must not be judged (empty: valid), for every client alike: the self-check,
    every request failed, fewer requests issued than asked, the server refusing connections mid-run
    (`gave_up`: the error the unsent requests carry), responses that did not do the work asked for."""
    reasons = list(check.reasons)
    if summary.requests and summary.completed == 0:
        kinds = ", ".join(f"{k} x{n}" for k, n in summary.errors.items())
        first = next((r for r in records if not r.warmup and not r.ok), None)
        reasons.append(f"all {summary.requests} requests failed ({kinds})"
                       + (f"; first: {first.error_message}" if first and first.error_message else ""))
    if spec.requests is not None and summary.requests < spec.requests:  # never silently a smaller run
        reasons.append(f"only {summary.requests} of the {spec.requests} requests asked for were issued")
    if gave_up is not None and summary.completed:  # (when none completed, the reason above says it all)
        unsent = sum(1 for r in records if not r.warmup and r.error_message == gave_up)
        reasons.append(f"the server stopped accepting connections mid-run: {unsent} of {summary.requests} requests "
                       f"were {gave_up}")
    if summary.token_mismatches:
        reasons.append(
            f"{summary.token_mismatches} of {summary.completed} responses did not {matched.counted} "
            f"{'the output_lens each asked for' if spec.output_lens else f'output_len={spec.output_len} {matched.unit}'} "
            f"({'; '.join(summary.mismatch_examples)}): the work is not matched; {matched.hint}"
        )
    return reasons


def build_result(spec: LoadSpec, shards: Sequence[Shard], options: ClientOptions) -> RunResult:
    """Decode raw requests, summarize, self-check and decide validity."""
    raws = sorted((r for s in shards for r in s.raws), key=lambda r: r.index)
    records = [decode(r, stream=spec.stream) for r in raws]
    summary = summarize(records, spec)
    check = evaluate(shards, summary, spec, options.limits, records)
    reasons = invalid_reasons(check, summary, records, spec, gave_up=next((s.gave_up for s in shards if s.gave_up), None))
    replies = ((sum(s.session_turns for s in shards), sum(s.session_standins for s in shards))
               if spec.sessions is not None else None)
    return RunResult(spec=spec, records=records, summary=summary, client_check=check,
                     valid=not reasons, invalid_reasons=reasons, session_replies=replies)


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x
