"""Run statistics from records: percentiles (numpy linear interpolation), rates, errors, token checks.

Percentile definition: `numpy.percentile(..., method="linear")` (numpy's default, type 7 of Hyndman &
Fan): the value at rank (n - 1) * q / 100, interpolated between the two nearest order statistics.
Latency percentiles are over successful requests only; errors are counted, never dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .records import NS_PER_MS, RequestRecord
from .spec import LoadSpec

QUANTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Percentiles:
    """p50/p90/p95/p99 and mean of a sample (NaN when it is empty, n says so)."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Percentiles:
        a = np.fromiter(values, dtype=np.float64)
        if a.size == 0:
            nan = math.nan
            return cls(nan, nan, nan, nan, nan, 0)
        q = np.percentile(a, QUANTILES, method="linear")
        return cls(float(q[0]), float(q[1]), float(q[2]), float(q[3]), float(a.mean()), int(a.size))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class LoadSummary:
    """Statistics of the measured (non-warm-up) requests of a run."""

    ttft_ms: Percentiles
    itl_ms: Percentiles  # every gap between token-bearing chunks, pooled over requests
    tpot_ms: Percentiles  # per request (E2E - TTFT) / (N - 1)
    e2e_ms: Percentiles  # send to last token
    output_tok_s: float  # decoded tokens of successful requests / duration_s
    requests_s: float  # successful requests / duration_s
    completed: int  # successful requests
    requests: int  # measured requests sent (successful + failed)
    errors: dict[str, int]  # error kind -> count
    error_rate: float
    token_mismatches: int  # successful requests that did not decode output_len tokens (matched work)
    duration_s: float  # first measured send to last measured arrival
    ttft_from_schedule_ms: Percentiles | None = None  # open loop: from the scheduled send time
    e2e_from_schedule_ms: Percentiles | None = None
    usage_missing: int = 0  # successful requests without usage counts (output_tokens from chunk count)
    merged_chunks: int = 0  # token chunks whose arrival time is that of a later chunk (client lag)
    merged_first_tokens: int = 0  # successful requests whose first token shares its read with the second
    token_chunks: int = 0
    mismatch_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = v.to_dict() if isinstance(v, Percentiles) else v
        return out


def _end_ns(r: RequestRecord) -> int:
    """A successful request ends at its last token; a failed one at the last thing seen of it (it was sent)."""
    if r.ok and r.t_last_token_ns is not None:  # a successful request always has a token
        return r.t_last_token_ns
    return max(t for t in (r.t_send_ns, r.t_last_token_ns, r.t_end_ns) if t is not None)


def summarize(records: Sequence[RequestRecord], spec: LoadSpec) -> LoadSummary:
    """Summarize the non-warm-up records of a run."""
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    errors = dict(sorted(Counter(k for r in measured if (k := r.error_kind) is not None).items()))  # the failed
    starts = [r.t_send_ns for r in measured if r.t_send_ns is not None]
    ends = [_end_ns(r) for r in measured if r.t_send_ns is not None]
    duration_s = (max(ends) - min(starts)) / 1e9 if starts and ends and max(ends) > min(starts) else 0.0
    tokens = sum(r.output_tokens for r in ok)
    mismatches = []
    if spec.ignore_eos:
        mismatches = [r for r in ok if r.output_tokens != spec.output_len_for(r.index)]
    open_loop = spec.rate is not None
    return LoadSummary(
        ttft_ms=Percentiles.of(x for r in ok if (x := r.ttft_ms) is not None),  # every successful one has it
        itl_ms=Percentiles.of(g for r in ok for g in r.itl_ms),
        tpot_ms=Percentiles.of(x for r in ok if (x := r.tpot_ms) is not None),
        e2e_ms=Percentiles.of(x for r in ok if (x := r.e2e_ms) is not None),
        output_tok_s=tokens / duration_s if duration_s > 0 else 0.0,
        requests_s=len(ok) / duration_s if duration_s > 0 else 0.0,
        completed=len(ok),
        requests=len(measured),
        errors=errors,
        error_rate=(len(measured) - len(ok)) / len(measured) if measured else 0.0,
        token_mismatches=len(mismatches),
        duration_s=duration_s,
        ttft_from_schedule_ms=Percentiles.of(
            (r.t_first_token_ns - r.t_scheduled_ns) / NS_PER_MS for r in ok
            if r.t_scheduled_ns is not None and r.t_first_token_ns is not None
        ) if open_loop else None,
        e2e_from_schedule_ms=Percentiles.of(
            (r.t_last_token_ns - r.t_scheduled_ns) / NS_PER_MS for r in ok
            if r.t_scheduled_ns is not None and r.t_last_token_ns is not None
        ) if open_loop else None,
        usage_missing=sum(1 for r in ok if r.completion_tokens is None),
        merged_chunks=sum(r.merged_chunks for r in ok),
        merged_first_tokens=sum(1 for r in ok if len(r.token_times_ns) > 1 and r.token_times_ns[0] == r.token_times_ns[1]),
        token_chunks=sum(len(r.token_times_ns) for r in ok),
        mismatch_examples=[
            f"request {r.index}: {r.output_tokens} tokens"
            f"{'' if r.completion_tokens is not None else ' (chunks; no usage)'}, finish_reason={r.finish_reason}"
            for r in mismatches[:3]
        ],
    )
