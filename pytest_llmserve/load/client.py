"""The load driver: load shapes (closed loop, open-loop schedules, warm-up, duration) over the transport.

One ShardRunner runs one shard of a LoadSpec on the running event loop; several processes each run
a shard (runner.py). Around the measured window gc is frozen and disabled (no collector pauses),
the event loop's own delay is probed every 5 ms, and each open-loop send's lateness against its
schedule is recorded: the self-check's inputs (check.py). The hot path is in connection.py.
A server that refuses every reconnect for `give_up_unreachable_s` ends a closed-loop run at once:
the requests left are recorded as not sent and the run is invalid (result.py).
"""

from __future__ import annotations

import asyncio
import gc
import warnings
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from .connection import SO_TIMESTAMPNS, Conn, Endpoint, Transport, _httptools
from .prompts import BodyPool
from .records import RawRequest
from .schedule import arrival_offsets
from .sessions import SessionFeed
from .spec import ClientOptions, LoadSpec

__all__ = ["SO_TIMESTAMPNS", "Endpoint", "LoadProgress", "Shard", "ShardRunner"]
NO_HTTPTOOLS = ("httptools is not installed: the load client parses HTTP with h11, ~25x slower per chunk (the README's "
                "ablation went INVALID at 512 streams); pip install httptools")


@dataclass
class LoadProgress:
    """Requests this process's client has finished so far (warm-up included), for a progress thread to read.

    `live` turns True when a client in this process starts counting (not with several client processes)."""

    done: int = 0
    live: bool = False


@dataclass
class Shard:
    """What one client (process) measured: raw requests plus the self-check's samples."""

    raws: list[RawRequest]
    loop_lag_ns: list[int] = field(default_factory=list)
    read_lag_ns: list[int] = field(default_factory=list)
    send_lag_ns: list[int] = field(default_factory=list)
    turnaround_ns: list[int] = field(default_factory=list)
    kernel_timestamps: bool = True
    reconnects: int = 0
    probe_at_ns: list[int] = field(default_factory=list)  # when each loop_lag_ns sample was taken
    multi_reads: dict[int, int] = field(default_factory=dict)  # reads with 2+ events: arrival -> processed at
    gave_up: str | None = None  # why the requests left were not sent (the server stopped accepting connections)
    parser_fallback: bool = False  # http_parser="auto" found no httptools and fell back to h11
    session_turns: int = 0  # multi-turn: later turns sent with the previous turn's real reply
    session_standins: int = 0  # ... of which carried stand-in ids (the server answered with text only)


class ShardRunner(Transport):
    """Runs one shard of a load spec on the running event loop; `await run()` returns a Shard."""

    def __init__(self, base_url: str, model: str, spec: LoadSpec, options: ClientOptions,
                 shard: int = 0, shards: int = 1, progress: LoadProgress | None = None) -> None:
        spec.validate()
        self.progress = progress if progress is not None else LoadProgress()
        self.progress.live = True
        self.ep = Endpoint.parse(base_url)
        self.spec, self.opt, self.model = spec, options, model
        self.shard, self.shards = shard, shards
        path = "/v1/completions" if spec.endpoint == "completions" else "/v1/chat/completions"
        self.target = (self.ep.prefix + path).encode()
        self.headers = [("host", self.ep.host_header), ("content-type", "application/json"),
                        ("accept", "text/event-stream"), ("user-agent", "pytest-llmserve"), *options.headers]
        self.timeout_ns = int(spec.request_timeout_s * 1e9)
        if options.http_parser not in ("auto", "httptools", "h11"):
            raise ValueError(f"http_parser={options.http_parser!r}: use auto, httptools or h11")
        if options.http_parser == "httptools" and _httptools is None:
            raise ValueError("http_parser='httptools' but httptools is not installed (pip install httptools)")
        self.fast = _httptools is not None and options.http_parser != "h11"
        self.out = Shard(raws=[], kernel_timestamps=options.kernel_timestamps,
                         parser_fallback=_httptools is None and options.http_parser == "auto")
        if self.out.parser_fallback:
            warnings.warn(NO_HTTPTOOLS, RuntimeWarning, stacklevel=2)
        self._buf = bytearray(options.read_buffer)
        self._bufs = [memoryview(self._buf)]
        self._busy: set[Conn] = set()
        self._idle: list[Conn] = []
        self._tasks: set[asyncio.Future] = set()
        self._outstanding = 0
        self._measured = False
        self._indices: Iterator[int] = iter(())
        self._stop_ns: int | None = None
        self._queue: deque[RawRequest] = deque()  # open loop: arrivals waiting for the concurrency cap
        self._cap: int | None = None
        self._done: asyncio.Future | None = None
        self._probe_due = 0
        self._pending_sends = 0  # open loop: requests waiting for a new connection
        self._unreachable_since: float | None = None  # first of the reconnects failing in a row
        self._feed: SessionFeed | None = None  # multi-turn sessions: later turns' bodies, built as replies finish

    def _my_share(self, n: int) -> range:
        return range(self.shard, n, self.shards)

    def _pool_size(self) -> int:
        spec = self.spec
        if spec.rate is None:
            return len(self._my_share(spec.concurrency or 1))
        if spec.concurrency is not None:
            return len(self._my_share(spec.concurrency))
        return max(4, min(1024, math.ceil(spec.rate / self.shards)))  # open loop: grows on demand

    async def run(self, start_barrier=None) -> Shard:  # noqa: ANN001 - callable returning a start time
        self.loop = loop = asyncio.get_running_loop()
        spec = self.spec
        self._addr = await self._resolve()
        n_needed = spec.warmup + (spec.requests or 0) if spec.requests else 4096
        self.bodies = BodyPool(spec, self.model, n_needed)
        self.render_requests()
        if spec.sessions is not None:
            self._feed = SessionFeed(spec, self.model, self.shard, self.shards)
        conns = await self._open_many(max(1, self._pool_size()))
        self._idle = conns
        self._sweep_handle = loop.call_later(self._sweep_period(), self._sweep)
        prev_handler = self._prev_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        try:
            warm = self._my_share(spec.warmup)
            if len(warm):
                await self._closed_phase(iter(warm), min(len(warm), len(self._idle) or 1))
            t_start = start_barrier() if start_barrier is not None else None
            gc_was = gc.isenabled()
            if self.opt.gc_freeze:
                gc.collect()
                gc.freeze()
                gc.disable()
            self._measured = True
            self._probe_due = time.perf_counter_ns() + int(self.opt.probe_interval_s * 1e9)
            self._probe_handle = loop.call_later(self.opt.probe_interval_s, self._probe)
            try:
                if spec.rate is None:
                    await self._closed_measured(t_start)
                else:
                    await self._open_measured(t_start)
            finally:
                self._probe_handle.cancel()
                if self.opt.gc_freeze:
                    gc.unfreeze()
                    if gc_was:
                        gc.enable()
        finally:
            loop.set_exception_handler(prev_handler)
            self._sweep_handle.cancel()
            for c in list(self._idle) + list(self._busy):
                self._close(c)
            for t in list(self._tasks):
                t.cancel()
        if self._feed is not None:
            self.out.session_turns, self.out.session_standins = self._feed.turns, self._feed.standins
        return self.out

    async def _closed_measured(self, t_start: int | None) -> None:
        spec = self.spec
        base = spec.warmup
        if self._feed is not None:  # sessions: a later turn only once its previous one has finished
            idx: Iterator[int] = self._feed
        elif spec.requests is not None:
            idx = iter(range(base + self.shard, base + spec.requests, self.shards))
        else:
            idx = iter(range(base + self.shard, 1 << 62, self.shards))
        if t_start is not None:
            await self._sleep_until(t_start)
        if spec.duration_s is not None:
            self._stop_ns = time.time_ns() + int(spec.duration_s * 1e9)
        await self._closed_phase(idx, len(self._idle))

    async def _closed_phase(self, indices: Iterator[int], width: int) -> None:
        self._indices = indices
        self._done = self.loop.create_future()
        if self.out.gave_up is not None:  # the server went away in an earlier phase (warm-up)
            self._fail_rest()
            await self._done
            return
        starters, self._idle = self._idle[:width], self._idle[width:]
        for c in starters:
            c.t_free = 0
            self._on_free(c)
        if not self._done.done():
            self._maybe_done()
        await self._done

    async def _open_measured(self, t_start: int | None) -> None:
        spec = self.spec
        offsets = arrival_offsets(spec)
        mine = self._my_share(len(offsets))
        self._cap = len(self._my_share(spec.concurrency)) if spec.concurrency is not None else None
        self._offsets, self._mine_iter = offsets, iter(mine)
        self._done = self.loop.create_future()
        wall0 = t_start if t_start is not None else time.time_ns() + 1_000_000
        self._wall0 = wall0
        self._loop0 = self.loop.time() + (wall0 - time.time_ns()) / 1e9
        self._next_arrival = next(self._mine_iter, None)
        if self._next_arrival is None:
            self._maybe_done()
        else:
            self._arm()
        await self._done

    def _arm(self) -> None:
        i = self._next_arrival
        self.loop.call_at(self._loop0 + float(self._offsets[i]), self._arrive)

    def _arrive(self) -> None:
        """Send every arrival that is due (late ones at once), then arm the timer for the next."""
        offsets, wall0 = self._offsets, self._wall0
        while self._next_arrival is not None:
            i = self._next_arrival
            t_sched = wall0 + int(offsets[i] * 1e9)
            if t_sched > time.time_ns() + 200_000:
                self._arm()
                return
            self._next_arrival = next(self._mine_iter, None)
            raw = RawRequest(self.spec.warmup + i, False, t_sched)
            self.out.raws.append(raw)
            self._outstanding += 1
            if self._cap is not None and len(self._busy) + self._pending_sends >= self._cap:
                self._queue.append(raw)  # waits for a slot: that wait shows in *_from_schedule latencies
            elif self._idle:
                self._send(self._idle.pop(), raw, count_lag=True)
            else:
                self._spawn(self._connect_and_send(raw))
        self._maybe_done()

    def _can_issue(self) -> bool:
        return self._stop_ns is None or time.time_ns() < self._stop_ns

    def _on_free(self, conn: Conn) -> None:
        """A connection finished a request: start the next one on it, or park it."""
        if self.spec.rate is not None and self._measured:
            if self._queue:
                self._send(conn, self._queue.popleft(), count_lag=False)
            else:
                self._idle.append(conn)
                self._maybe_done()
            return
        if self._can_issue():
            i = next(self._indices, None)
            if i is not None:
                raw = RawRequest(i, not self._measured, None)
                self.out.raws.append(raw)
                self._outstanding += 1
                if conn.t_free and self._measured:
                    self.out.turnaround_ns.append(time.time_ns() - conn.t_free)
                self._send(conn, raw, count_lag=False)
                return
        self._idle.append(conn)
        self._maybe_done()

    def _finished(self, raw: RawRequest) -> None:
        self._outstanding -= 1
        self.progress.done += 1
        if self._feed is not None:
            self._feed.finished(raw)

    async def _reopen(self) -> None:
        try:
            conn = await self._open(warm=False)
        except OSError as exc:
            if self._done is None or self._done.done():
                return
            # no connection: the request this slot would send fails now; retry a little later
            if self.spec.rate is None and self._can_issue():
                now = time.monotonic()
                if self._unreachable_since is None:
                    self._unreachable_since = now
                if now - self._unreachable_since >= self.opt.give_up_unreachable_s:
                    self._give_up(exc)
                    return
                i = next(self._indices, None)
                if i is not None:
                    self._fail_unsent(i, f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)
                    self._spawn(self._reopen())
            return
        self._unreachable_since = None
        self._on_free(conn)

    def _fail_unsent(self, index: int, message: str) -> None:
        raw = RawRequest(index, not self._measured, None)
        raw.t_send = raw.t_end = time.time_ns()
        raw.fail("connect_error", message)
        self.out.raws.append(raw)
        if self._feed is not None:
            self._feed.finished(raw)

    def _give_up(self, exc: OSError) -> None:
        """Every reconnect failed for give_up_unreachable_s: fail what is left at once and stop issuing."""
        self.out.gave_up = (
            f"not sent: every connection to the server failed for {self.opt.give_up_unreachable_s:g} s "
            f"(last: {type(exc).__name__}: {exc})")
        self._fail_rest()

    def _fail_rest(self) -> None:
        if self.spec.requests is not None or not self._measured:  # finite: record each unsent request
            for i in self._indices:
                self._fail_unsent(i, self.out.gave_up or "")
        self._indices = iter(())
        self._maybe_done()

    async def _connect_and_send(self, raw: RawRequest, count_lag: bool = True) -> None:
        self._pending_sends += 1
        try:
            conn = await self._open(warm=False)
        except OSError as exc:
            raw.t_send = raw.t_end = time.time_ns()
            raw.fail("connect_error", f"{type(exc).__name__}: {exc}")
            self._finished(raw)
            if self.spec.rate is None:  # closed loop: this slot goes on (or gives up) like any other
                self._spawn(self._reopen())
            return
        finally:
            self._pending_sends -= 1
        self._send(conn, raw, count_lag=count_lag)

    def _maybe_done(self) -> None:
        d = self._done
        if d is None or d.done() or self._outstanding or self._tasks or self._busy:
            return
        if self.spec.rate is not None and self._measured:
            if self._next_arrival is None and not self._queue:
                d.set_result(None)
            return
        # closed loop: nothing in flight and no connection pending means every slot found no more work
        d.set_result(None)

    def _sweep_period(self) -> float:
        return min(0.25, max(0.01, self.spec.request_timeout_s / 4))

    def _sweep(self) -> None:
        now = time.time_ns()
        for conn in list(self._busy):
            raw = conn.req
            if raw is not None and now - raw.t_rx > 1_000_000_000 and conn.fd >= 0:
                self._on_readable(conn)  # silent for a second: a read surfaces a reset the loop did not report
                raw = conn.req
            if raw is not None and raw.t_send is not None and now - raw.t_send > self.timeout_ns:
                raw.fail("timeout", f"no complete response within request_timeout_s="
                                    f"{self.spec.request_timeout_s:g} (last bytes {(now - raw.t_rx) / 1e9:.2f} s ago)")
                raw.t_end = now
                self._busy.discard(conn)
                conn.req = None
                self._finished(raw)
                self._drop(conn)
        self._sweep_handle = self.loop.call_later(self._sweep_period(), self._sweep)
        self._maybe_done()

    def _probe(self) -> None:
        now = time.perf_counter_ns()
        self.out.loop_lag_ns.append(max(0, now - self._probe_due))
        self.out.probe_at_ns.append(time.time_ns())
        self._probe_due = now + int(self.opt.probe_interval_s * 1e9)
        self._probe_handle = self.loop.call_later(self.opt.probe_interval_s, self._probe)

    async def _sleep_until(self, t_ns: int) -> None:
        delay = (t_ns - time.time_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
