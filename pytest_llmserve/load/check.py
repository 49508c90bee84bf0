"""The client's self-check: did it keep up well enough that its numbers mean what they say?

Inputs measured during the run: event-loop delay (a 5 ms probe), read lag (processing time minus
kernel arrival time of each read), open-loop send lag (actual minus scheduled send), closed-loop
turnaround (next send minus previous response end on the same connection), and "merged" token
chunks (two token chunks of one request in a single read share the later arrival time, so the earlier
one is stamped late by up to one inter-token gap). Kernel arrival timestamps make loop delay harmless
by itself; it matters when it merges chunks or delays scheduled sends, which is what the verdict tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .client import Shard
from .spec import CheckLimits, LoadSpec
from .summary import LoadSummary


@dataclass(frozen=True)
class ClientCheck:
    """Verdict of the self-check with the numbers behind it (milliseconds unless named otherwise)."""

    valid: bool
    reasons: list[str]
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    read_lag_p50_ms: float
    read_lag_p99_ms: float
    send_lag_p50_ms: float | None  # open loop only
    send_lag_p99_ms: float | None
    send_lag_max_ms: float | None
    turnaround_p99_ms: float | None  # closed loop only
    merged_token_frac: float
    merged_first_token_frac: float  # TTFT and TPOT depend on these
    kernel_timestamps: bool
    reconnects: int
    workers: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(values: Sequence[int], q: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) / 1e6


def evaluate(shards: Sequence[Shard], summary: LoadSummary, spec: LoadSpec, limits: CheckLimits) -> ClientCheck:
    """Combine the samples of every shard and judge them against `limits`."""
    loop = [x for s in shards for x in s.loop_lag_ns]
    read = [x for s in shards for x in s.read_lag_ns]
    send = [x for s in shards for x in s.send_lag_ns]
    turn = [x for s in shards for x in s.turnaround_ns]
    kernel = all(s.kernel_timestamps for s in shards)
    merged_frac = summary.merged_chunks / summary.token_chunks if summary.token_chunks else 0.0
    first_frac = summary.merged_first_tokens / summary.completed if summary.completed else 0.0
    loop_p99 = _ms(loop, 99)
    send_p99 = _ms(send, 99) if spec.rate is not None else None
    reasons: list[str] = []
    notes: list[str] = []
    loop_max = max(loop, default=0) / 1e6
    if max(merged_frac, first_frac) > limits.max_merged_token_frac:
        # A chunk merges with the next when nobody read the socket between their arrivals: either the
        # server sent them together (harmless) or the client was late. The client was never later than
        # its worst event-loop delay, so that bounds the error of every merged chunk's time.
        what = (f"{merged_frac:.1%} of token chunks (first tokens: {first_frac:.1%} of requests) arrived in the "
                f"same read as the next chunk")
        if not loop:
            notes.append(f"{what}; no event-loop delay was measured, so they are not judged")
        elif loop_max <= limits.merged_lag_tolerance_ms:
            notes.append(f"{what}, while the event loop was never more than {loop_max:.1f} ms late: the server "
                         f"sent them together; their times are within {loop_max:.1f} ms")
        else:
            reasons.append(f"{what} (limit {limits.max_merged_token_frac:.1%}) and the event loop was up to "
                           f"{loop_max:.1f} ms late (tolerance {limits.merged_lag_tolerance_ms:g} ms): the client "
                           "fell behind, so those times may be late by as much; lower the concurrency/rate or "
                           "use more client cores (workers)")
    if send_p99 is not None and send_p99 > limits.max_send_lag_p99_ms:
        reasons.append(f"sends were late against the arrival schedule: p99 {send_p99:.1f} ms "
                       f"(limit {limits.max_send_lag_p99_ms:g} ms); the offered load was not the requested rate")
    if loop_p99 > limits.max_loop_lag_p99_ms:
        reasons.append(f"event-loop delay p99 {loop_p99:.1f} ms (limit {limits.max_loop_lag_p99_ms:g} ms): "
                       "the client could not keep up with the load")
    if not kernel:
        notes.append("kernel receive timestamps unavailable: arrival times are taken after each read")
    return ClientCheck(
        valid=not reasons, reasons=reasons,
        loop_lag_p50_ms=_ms(loop, 50), loop_lag_p99_ms=loop_p99, loop_lag_max_ms=loop_max,
        read_lag_p50_ms=_ms(read, 50), read_lag_p99_ms=_ms(read, 99),
        send_lag_p50_ms=_ms(send, 50) if spec.rate is not None else None, send_lag_p99_ms=send_p99,
        send_lag_max_ms=max(send, default=0) / 1e6 if spec.rate is not None else None,
        turnaround_p99_ms=_ms(turn, 99) if spec.rate is None else None,
        merged_token_frac=merged_frac, merged_first_token_frac=first_frac, kernel_timestamps=kernel,
        reconnects=sum(s.reconnects for s in shards), workers=len(shards), notes=notes,
    )
