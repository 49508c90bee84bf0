"""Timed trace replay (open loop): a Mooncake-format JSONL trace turned into a LoadSpec, and its lateness report.

Trace format, one JSON object per line (Mooncake's FAST'25 traces, also read by AIPerf, SGLang, GuideLLM):

    {"timestamp": 0, "input_length": 1536, "output_length": 64, "hash_ids": [0, 1, 2]}

`timestamp` is milliseconds from the trace start (sorted on load), `input_length` / `output_length` are
tokens, `hash_ids` names each `block_size`-token block of the prompt (default 512, Mooncake's). The
minimal format is the same without `hash_ids`: every prompt is then unique. Two requests with the
same leading hash ids get the same leading token ids (block h is always the same seeded ids), so the
server's prefix cache sees the sharing the trace recorded; tokens beyond the blocks are unique.

Replay sends each request at its timestamp from a precomputed absolute schedule (the client's open
loop, no concurrency cap): a late send never shifts the next. `lateness()` reports how late each send
was against the schedule (coordinated omission made visible); the client's self-check already makes
the run invalid when the p99 lateness passes `max_send_lag_p99_ms` (default 10 ms).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .prompts import _ID_HIGH, _ID_LOW
from .result import RunResult
from .spec import LoadSpec

DEFAULT_BLOCK_SIZE = 512
SHIPPED_TRACE = Path(__file__).resolve().parents[1] / "data" / "mooncake_small.jsonl"


@dataclass(frozen=True)
class TraceRequest:
    """One line of a trace."""

    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()


def load_trace(path: str | Path) -> tuple[TraceRequest, ...]:
    """Read a Mooncake JSONL trace (or the minimal format without hash_ids), sorted by timestamp."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"trace file {p}: {exc.strerror or exc}") from exc
    out = [parse_line(line, f"{p}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not out:
        raise ValueError(f"{p}: no requests (expected JSON lines like "
                         '{"timestamp": 0, "input_length": 512, "output_length": 64})')
    return tuple(sorted(out, key=lambda r: r.timestamp_ms))


def parse_line(line: str, where: str) -> TraceRequest:
    """One trace line; errors name the place and the field."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: each line must be a JSON object with timestamp, input_length, output_length")
    ts = obj.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise ValueError(f"{where}: \"timestamp\" = {ts!r} must be milliseconds >= 0 from the trace start")
    lengths = []
    for key in ("input_length", "output_length"):
        v = obj.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: \"{key}\" = {v!r} must be an integer >= 1 (tokens)")
        lengths.append(v)
    hashes = obj.get("hash_ids", [])
    if not isinstance(hashes, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hashes):
        raise ValueError(f"{where}: \"hash_ids\" must be a list of integers (one per prompt block)")
    return TraceRequest(float(ts), lengths[0], lengths[1], tuple(hashes))


@dataclass(frozen=True)
class TraceReplay:
    """A trace resolved for one server: the spec to run and how it was sized and timed."""

    spec: LoadSpec
    requests: int
    span_s: float  # schedule length after speed-up
    speed: float
    length_scale: float
    block_size: int  # tokens per hash block as sent (block_size x length_scale)
    shared_blocks: int  # hash ids used by more than one request

    def describe(self) -> str:
        scaled = f", lengths scaled x{self.length_scale:.4f} to fit max_model_len" if self.length_scale < 1 else ""
        return (f"trace replay: {self.requests} requests over {self.span_s:.3f} s (speed x{self.speed:g}), "
                f"{self.block_size}-token hash blocks, {self.shared_blocks} blocks shared by several requests{scaled}")


def trace_spec(trace: tuple[TraceRequest, ...], *, speed: float = 1.0, block_size: int = DEFAULT_BLOCK_SIZE,
               max_model_len: int | None = None, seed: int = 0, vocab_size: int | None = None,
               request_timeout_s: float = 120.0, repeat: int = 1) -> TraceReplay:
    """The open-loop LoadSpec replaying `trace` at `speed` x its timestamps (2.0: twice as fast).

    `repeat`: play the trace that many times back to back (the same hash ids, so the same prefixes).
    """
    if not trace:
        raise ValueError("the trace has no requests")
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"repeat={repeat!r} must be an integer >= 1")
    if repeat > 1:
        t0 = trace[0].timestamp_ms
        period = trace[-1].timestamp_ms - t0 + (trace[-1].timestamp_ms - t0) / max(1, len(trace) - 1)
        trace = tuple(TraceRequest(r.timestamp_ms + k * period, r.input_length, r.output_length, r.hash_ids)
                      for k in range(repeat) for r in trace)
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed={speed!r} must be a number > 0 (1: as recorded, 2: twice as fast)")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be an integer >= 1 (tokens per hash id)")
    longest = max(r.input_length + r.output_length for r in trace)
    scale = min(1.0, max_model_len / longest) if max_model_len else 1.0
    block = max(1, math.floor(block_size * scale))
    high = _ID_HIGH if vocab_size is None else max(_ID_LOW + 1, min(_ID_HIGH, vocab_size - 1))
    blocks: dict[int, list[int]] = {}
    prompts: list[tuple[int, ...]] = []
    outputs: list[int] = []
    for i, r in enumerate(trace):
        n_in = max(1, math.floor(r.input_length * scale))
        ids: list[int] = []
        for h in r.hash_ids:
            if len(ids) >= n_in:
                break
            if h not in blocks:
                blocks[h] = np.random.default_rng([seed, 0x7ACE, h]).integers(_ID_LOW, high, size=block).tolist()
            ids += blocks[h]
        ids = ids[:n_in]
        if len(ids) < n_in:  # beyond the named blocks: this request's own tokens
            ids += np.random.default_rng([seed, 0x7ACF, i]).integers(_ID_LOW, high, size=n_in - len(ids)).tolist()
        prompts.append(tuple(ids))
        outputs.append(max(1, math.floor(r.output_length * scale)))
    t0 = trace[0].timestamp_ms
    times = tuple((r.timestamp_ms - t0) / 1000.0 / speed for r in trace)
    span = times[-1]
    counts: dict[int, int] = {}
    for r in trace:
        for h in set(r.hash_ids):
            counts[h] = counts.get(h, 0) + 1
    spec = LoadSpec(
        concurrency=None, rate=len(trace) / span if span > 0 else float(len(trace)), arrival="trace",
        arrival_times=times, requests=len(trace), warmup=0,
        input_len=max(1, round(sum(map(len, prompts)) / len(prompts))),
        output_len=max(1, round(sum(outputs) / len(outputs))), prompts=tuple(prompts), output_lens=tuple(outputs),
        seed=seed, vocab_size=vocab_size, request_timeout_s=request_timeout_s)
    spec.validate()
    return TraceReplay(spec=spec, requests=len(trace), span_s=span, speed=float(speed), length_scale=scale,
                       block_size=block, shared_blocks=sum(1 for c in counts.values() if c > 1))


@dataclass(frozen=True)
class Lateness:
    """How late each send was against the schedule (actual - scheduled send), in milliseconds."""

    sends: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    late: int  # sends later than tolerance_ms
    tolerance_ms: float
    worst: tuple[tuple[int, float], ...]  # (request index, lateness ms), latest first

    @property
    def on_time(self) -> bool:
        return self.late == 0

    def render(self) -> str:
        head = (f"lateness vs schedule: {self.sends} sends, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
                f"max {self.max_ms:.2f} ms; ")
        if self.on_time:
            return head + f"all within {self.tolerance_ms:g} ms: on time"
        worst = ", ".join(f"#{i} +{ms:.1f} ms" for i, ms in self.worst)
        return head + (f"{self.late} ({self.late / self.sends:.1%}) later than {self.tolerance_ms:g} ms: the client "
                       f"fell behind the schedule (latest: {worst}); latencies from the scheduled send "
                       "(ttft_from_schedule) include that delay")


def lateness(result: RunResult, tolerance_ms: float | None = None) -> Lateness:
    """Per-send lateness of an open-loop run; tolerance defaults to the self-check's p99 send-lag limit."""
    tol = 10.0 if tolerance_ms is None else float(tolerance_ms)
    pairs = [(r.index, (r.t_send_ns - r.t_scheduled_ns) / 1e6) for r in result.records
             if not r.warmup and r.t_scheduled_ns is not None and r.t_send_ns is not None]
    if not pairs:
        return Lateness(0, math.nan, math.nan, math.nan, 0, tol, ())
    lags = np.array([ms for _, ms in pairs])
    worst = tuple(sorted(pairs, key=lambda p: -p[1])[:3])
    return Lateness(sends=len(pairs), p50_ms=float(np.percentile(lags, 50)), p99_ms=float(np.percentile(lags, 99)),
                    max_ms=float(lags.max()), late=int((lags > tol).sum()), tolerance_ms=tol,
                    worst=tuple((i, float(ms)) for i, ms in worst))
