"""The client's self-check: did it keep up well enough that its numbers mean what they say?

Inputs measured during the run: event-loop delay (a 5 ms probe), read lag (processing time minus
kernel arrival time of each read), open-loop send lag (actual minus scheduled send), closed-loop
turnaround (next send minus previous response end on the same connection), and "merged" token
chunks (two token chunks of one request in a single read share the later arrival time, so the earlier
one is stamped late by up to one inter-token gap). Kernel arrival timestamps make loop delay harmless
by itself; it matters when it merges chunks or delays scheduled sends, which is what the verdict tests.
A merge counts against the client only when the client was late at that moment (a server that sends
chunks back to back, e.g. when it is itself behind, merges them with a prompt client too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .client import Shard
from .records import RequestRecord
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
    merged_by_client_frac: float  # the larger of the two shares merged while the client was late
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


def _client_merges(shards: Sequence[Any], records: Sequence[RequestRecord], tolerance_ns: int,
                   fallback_ns: int) -> tuple[int, int]:
    """Merged token chunks (and first tokens) the client is to blame for.

    Two chunks i, i+1 share a read (stamped T, the later arrival) when nobody read the socket between
    their arrivals: the server sent them together (harmless: their true gap is tiny), or the client was
    stalled from chunk i's arrival through T (a long loop iteration or being descheduled), so that
    chunk i is stamped late by its true gap. Only a stall that was still going on at T can do that; one
    that ended before T let the loop read chunk i alone. A probe firing at `fire` with delay `lag` saw
    the loop busy over about [fire - lag - interval, fire]; a merge counts against the client when such
    a stall longer than the tolerance covers T, or when the read itself came later than that after T.
    """
    probes = sorted((t, lag) for s in shards for t, lag in zip(getattr(s, "probe_at_ns", ()), s.loop_lag_ns))
    at = np.array([t for t, _ in probes], dtype=np.int64)
    lag = np.array([x for _, x in probes], dtype=np.int64)
    interval = int(np.median(np.diff(at))) if len(at) > 2 else 5_000_000
    horizon = int(lag.max()) + interval if len(lag) else 0
    processed: dict[int, int] = {}
    for s in shards:
        processed.update(getattr(s, "multi_reads", {}))
    cache: dict[int, bool] = {}

    def late(t_read: int) -> bool:
        if t_read not in cache:
            t_proc = processed.get(t_read)
            if t_proc is None or not len(at):
                worst = fallback_ns
            else:
                i0, i1 = np.searchsorted(at, [t_read, t_read + horizon])
                fire, delay = at[i0:i1], lag[i0:i1]
                covering = delay[fire - delay - interval <= t_read]
                worst = max(int(covering.max()) if len(covering) else 0, t_proc - t_read)
            cache[t_read] = worst > tolerance_ns
        return cache[t_read]

    chunks = firsts = 0
    for r in records:
        t = r.token_times_ns
        if r.warmup or not r.ok or r.merged_chunks == 0:
            continue
        for i in range(len(t) - 1):
            if t[i] == t[i + 1] and late(t[i + 1]):
                chunks += 1
                firsts += i == 0
    return chunks, firsts


def evaluate(shards: Sequence[Shard], summary: LoadSummary, spec: LoadSpec, limits: CheckLimits,
             records: Sequence[RequestRecord] | None = None) -> ClientCheck:
    """Combine the samples of every shard and judge them against `limits` (records: attribute merges)."""
    loop = [x for s in shards for x in s.loop_lag_ns]
    read = [x for s in shards for x in s.read_lag_ns]
    send = [x for s in shards for x in s.send_lag_ns]
    turn = [x for s in shards for x in s.turnaround_ns]
    kernel = all(s.kernel_timestamps for s in shards)
    merged_frac = summary.merged_chunks / summary.token_chunks if summary.token_chunks else 0.0
    first_frac = summary.merged_first_tokens / summary.completed if summary.completed else 0.0
    loop_p99 = _ms(loop, 99)
    loop_max = max(loop, default=0) / 1e6
    send_p99 = _ms(send, 99) if spec.rate is not None else None
    reasons: list[str] = []
    notes: list[str] = []
    client_frac = client_first_frac = 0.0
    if summary.merged_chunks:
        tolerance_ns = int(limits.merged_lag_tolerance_ms * 1e6)
        if records is not None:
            chunks, firsts = _client_merges(shards, records, tolerance_ns, int(loop_max * 1e6))
        elif loop:  # no records: the worst loop delay stands for every merge
            late = loop_max * 1e6 > tolerance_ns
            chunks, firsts = (summary.merged_chunks, summary.merged_first_tokens) if late else (0, 0)
        else:
            chunks = firsts = 0
            notes.append("no event-loop delay was measured: merged chunks are not judged")
        client_frac = chunks / summary.token_chunks if summary.token_chunks else 0.0
        client_first_frac = firsts / summary.completed if summary.completed else 0.0
        what = (f"{merged_frac:.1%} of token chunks (first tokens: {first_frac:.1%} of requests) arrived in the "
                f"same read as the next chunk")
        if max(client_frac, client_first_frac) > limits.max_merged_token_frac:
            reasons.append(
                f"{what}; {client_frac:.1%} (first tokens: {client_first_frac:.1%}) while the client was more than "
                f"{limits.merged_lag_tolerance_ms:g} ms late (limit {limits.max_merged_token_frac:.1%}): the client "
                f"fell behind (event-loop delay max {loop_max:.1f} ms), so those times may be late by as much; "
                "lower the concurrency/rate or use more client cores (workers)")
        elif max(merged_frac, first_frac) > limits.max_merged_token_frac:
            notes.append(f"{what} while the client was on time (within {limits.merged_lag_tolerance_ms:g} ms): the "
                         "server sent them together")
    if send_p99 is not None and send_p99 > limits.max_send_lag_p99_ms:
        reasons.append(f"sends were late against the arrival schedule: p99 {send_p99:.1f} ms "
                       f"(limit {limits.max_send_lag_p99_ms:g} ms); the offered load was not the requested rate")
    if loop_p99 > limits.max_loop_lag_p99_ms:
        reasons.append(f"event-loop delay p99 {loop_p99:.1f} ms (limit {limits.max_loop_lag_p99_ms:g} ms): "
                       "the client could not keep up with the load")
    if not kernel:
        notes.append("kernel receive timestamps unavailable: arrival times are taken after each read")
    if any(getattr(s, "parser_fallback", False) for s in shards):
        from .client import NO_HTTPTOOLS

        notes.append(NO_HTTPTOOLS)
    return ClientCheck(
        valid=not reasons, reasons=reasons,
        loop_lag_p50_ms=_ms(loop, 50), loop_lag_p99_ms=loop_p99, loop_lag_max_ms=loop_max,
        read_lag_p50_ms=_ms(read, 50), read_lag_p99_ms=_ms(read, 99),
        send_lag_p50_ms=_ms(send, 50) if spec.rate is not None else None, send_lag_p99_ms=send_p99,
        send_lag_max_ms=max(send, default=0) / 1e6 if spec.rate is not None else None,
        turnaround_p99_ms=_ms(turn, 99) if spec.rate is None else None,
        merged_token_frac=merged_frac, merged_first_token_frac=first_frac,
        merged_by_client_frac=max(client_frac, client_first_frac), kernel_timestamps=kernel,
        reconnects=sum(s.reconnects for s in shards), workers=len(shards), notes=notes,
    )
