"""The load client's transport: sockets it owns, kernel arrival timestamps, HTTP parsing, raw SSE payloads.

Why the hot path is built this way (each choice measured by benchmarks/fidelity/run.py, see its
ablation rows):
- Arrival times come from the kernel (SO_TIMESTAMPNS through `recvmsg_into`): a chunk's time is when
  its bytes reached the socket, not when a busy event loop got round to reading it, so loop delay
  does not leak into TTFT/ITL. That needs sockets we own, so readiness comes from `loop.add_reader`
  callbacks (no coroutine per chunk) and HTTP/1.1 is parsed sans-I/O: by httptools (llhttp, C;
  ~0.4 us per chunk) when installed, else by h11 (~11 us per chunk; the same results, fewer streams
  before the client falls behind). Requests are rendered by h11 either way. Kernel timestamps are
  CLOCK_REALTIME, so every other time is `time.time_ns()`.
- The kernel keeps one timestamp per read (the latest segment's): when the client falls behind by
  more than an inter-token gap, two token chunks share a read and the earlier one gets the later
  time. Those "merged" chunks are counted, and the self-check (check.py) judges them.
- No JSON on the hot path: SSE payloads are kept as raw bytes with their arrival time and decoded
  after the measured window (records.decode). One large preallocated read buffer is reused.
- Connections are opened and warmed (one GET of `ClientOptions.warm_path`, /v1/models unless the probe
  found it broken) before the measured window.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import h11

from .records import RawRequest
from .sse import SSEFramer, WholeBody

if TYPE_CHECKING:
    from .client import Shard
    from .prompts import BodyPool
    from .sessions import SessionFeed
    from .spec import ClientOptions, LoadSpec

try:  # llhttp (C) through httptools: ~0.4 us per chunk against ~11 us for h11 (benchmarks/fidelity)
    import httptools as _httptools
except ImportError:  # pragma: no cover - h11 is the dependency-free fallback
    _httptools = None  # type: ignore[assignment]  # optional import: users test `_httptools is None`

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux asm-generic value; Python does not export it
_TIMESPEC = struct.Struct("@qq")
_NEED_DATA, _PAUSED = h11.NEED_DATA, h11.PAUSED
_Data, _Response, _EndOfMessage = h11.Data, h11.Response, h11.EndOfMessage


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: address, Host header and request targets (a path prefix is kept)."""

    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        u = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if u.scheme != "http":
            raise ValueError(f"{base_url}: the load client speaks plain http (got {u.scheme}://); "
                             "point it at the server's http port or a TLS-terminating proxy")
        if not u.hostname:
            raise ValueError(f"{base_url}: no host in the URL (expected e.g. http://127.0.0.1:8000)")
        prefix = u.path.rstrip("/")
        if prefix.endswith("/v1"):
            prefix = prefix[:-3]
        return cls(u.hostname, u.port or 80, prefix)

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"


class Conn:
    """One keep-alive connection; with httptools it is also the parser's callback object."""

    __slots__ = ("sock", "fd", "h", "parser", "sse", "req", "out", "t_free", "ts", "complete", "keep", "served")

    def __init__(self, sock: socket.socket, fast: bool, framer: type = SSEFramer) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.h = h11.Connection(h11.CLIENT)
        self.parser = _httptools.HttpResponseParser(self) if fast else None
        self.sse = framer()  # SSEFramer, or WholeBody for non-streaming requests
        self.req: RawRequest | None = None
        self.out = b""
        self.t_free = 0
        self.ts = 0  # arrival time of the read being parsed
        self.complete = False
        self.keep = True
        self.served = 0  # responses completed on this connection (the warm-up GET included)

    # httptools callbacks (called from C inside feed_data)
    def on_headers_complete(self) -> None:
        raw = self.req
        if raw is not None:
            assert self.parser is not None  # only the httptools parser calls back
            raw.status = self.parser.get_status_code()
            raw.t_head = self.ts

    def on_body(self, body: bytes) -> None:
        raw = self.req
        if raw is None:
            return
        if raw.status == 200:
            payloads = self.sse.feed(body)
            if payloads:
                ts = self.ts
                for p in payloads:
                    raw.ev_ts.append(ts)
                    raw.ev_data.append(p)
        else:
            raw.err_body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        assert self.parser is not None  # only the httptools parser calls back
        self.keep = self.parser.should_keep_alive()  # only meaningful inside the callback


class Transport:
    """Connection handling for ShardRunner: send, read (the hot path), errors, (re)connect.

    The driver provides: loop, ep, opt, fast, target, headers, bodies, out (a Shard), _bufs, _busy,
    _idle, _tasks, _done, _measured, _family, _addr, _prev_handler, _feed (multi-turn bodies built at run
    time, or None), and the hooks _on_free(conn),
    _finished(raw), _reopen(), _connect_and_send(raw, count_lag), _maybe_done().
    """

    # provided by the driver (annotations only: nothing here exists at run time)
    loop: asyncio.AbstractEventLoop
    ep: Endpoint
    opt: ClientOptions
    spec: LoadSpec
    fast: bool
    target: bytes
    headers: list[tuple[str, str]]
    bodies: BodyPool
    out: Shard
    _wire: list[bytes]
    _bufs: list[memoryview]
    _busy: set[Conn]
    _idle: list[Conn]
    _tasks: set[asyncio.Future]
    _done: asyncio.Future | None
    _measured: bool
    _family: int
    _addr: Any  # the socket address getaddrinfo gave (a tuple whose shape depends on the family)
    _prev_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    _feed: SessionFeed | None

    if TYPE_CHECKING:  # the driver's hooks
        def _on_free(self, conn: Conn) -> None: ...
        def _finished(self, raw: RawRequest) -> None: ...
        def _reopen(self) -> Coroutine[Any, Any, None]: ...
        def _connect_and_send(self, raw: RawRequest, count_lag: bool = True) -> Coroutine[Any, Any, None]: ...
        def _maybe_done(self) -> None: ...

    def render_requests(self) -> None:
        """Request bytes for every body, rendered by h11 before the measured window (httptools mode:
        a burst of completions in a closed loop then re-sends at ~1 us each instead of ~30 us)."""
        self._wire = []
        if self.fast:
            for i in range(len(self.bodies)):
                self._wire.append(self._render(h11.Connection(h11.CLIENT), self.bodies[i]))

    def _render(self, h: h11.Connection, body: bytes) -> bytes:
        data = h.send(h11.Request(method="POST", target=self.target,
                                  headers=[*self.headers, ("content-length", str(len(body)))]))
        return data + h.send(_Data(data=body)) + h.send(_EndOfMessage())

    def _send(self, conn: Conn, raw: RawRequest, count_lag: bool) -> None:
        built = self._feed.bodies.get(raw.index) if self._feed is not None else None  # a later turn's
        if conn.parser is not None:
            data = self._wire[raw.index % len(self._wire)] if built is None else self._render(
                h11.Connection(h11.CLIENT), built)
            conn.parser = _httptools.HttpResponseParser(conn)
        else:  # h11 parses the response, so its connection state must see the request go out
            try:
                data = self._render(conn.h, built if built is not None else self.bodies[raw.index])
            except h11.LocalProtocolError as exc:  # the connection is in a state we cannot use: replace it
                raw.t_send = time.time_ns()
                raw.fail("protocol_error", f"cannot send on this connection: {exc}")
                self._finished(raw)
                self._drop(conn)
                return
        conn.req = raw
        self._busy.add(conn)
        raw.t_send = raw.t_rx = t = time.time_ns()
        if count_lag and raw.t_sched is not None:
            self.out.send_lag_ns.append(t - raw.t_sched)
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._conn_error(conn, exc)
            return
        if n < len(data):
            conn.out = data[n:]
            self.loop.add_writer(conn.fd, self._on_writable, conn)

    def _on_writable(self, conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.loop.remove_writer(conn.fd)
            self._conn_error(conn, exc)
            return
        conn.out = conn.out[n:]
        if not conn.out:
            self.loop.remove_writer(conn.fd)

    def _on_readable(self, conn: Conn) -> None:
        """One read: stamp it with the kernel's arrival time, parse HTTP, keep SSE payloads raw. The hot path."""
        try:
            n, anc, _flags, _addr = conn.sock.recvmsg_into(self._bufs, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._conn_error(conn, exc)
            return
        now = time.time_ns()
        ts = now
        if anc:
            sec, nsec = _TIMESPEC.unpack_from(anc[0][2])
            ts = sec * 1_000_000_000 + nsec
        if self._measured:
            self.out.read_lag_ns.append(now - ts)
        raw = conn.req
        if raw is None:  # the server closed (or wrote to) an idle connection: replace it
            self._drop(conn)
            return
        raw.t_rx = ts
        parser = conn.parser
        if parser is not None:
            if n == 0:
                if raw.ev_data and raw.ev_data[-1] == b"[DONE]":  # a body delimited by closing (HTTP/1.0 style)
                    raw.t_end = ts
                    conn.keep = False
                    self._complete(conn, raw, ts)
                else:
                    self._abort(conn, raw, ts, "connection_closed", "the server closed the connection mid-response")
                return
            conn.ts = ts
            before = len(raw.ev_data)
            try:
                parser.feed_data(self._bufs[0][:n])
            except _httptools.HttpParserError as exc:
                self._abort(conn, raw, ts, "protocol_error", f"invalid HTTP from the server: {exc}")
                return
            if len(raw.ev_data) - before > 1 and self._measured:  # events sharing a read: keep when it was read
                self.out.multi_reads[ts] = now
            if conn.complete:
                conn.complete = False
                raw.t_end = ts
                self._complete(conn, raw, ts)
            return
        h = conn.h
        h.receive_data(self._bufs[0][:n].tobytes() if n else b"")
        before = len(raw.ev_data)
        try:
            while True:
                ev = h.next_event()
                et = type(ev)
                if et is _Data:
                    if raw.status == 200:
                        payloads = conn.sse.feed(ev.data)  # type: ignore[union-attr]  # `et is _Data`
                        if payloads:
                            for p in payloads:
                                raw.ev_ts.append(ts)
                                raw.ev_data.append(p)
                            if len(raw.ev_data) - before > 1 and self._measured:
                                self.out.multi_reads[ts] = now
                    else:
                        raw.err_body.append(ev.data)  # type: ignore[union-attr]  # `et is _Data`
                elif ev is _NEED_DATA:
                    return
                elif et is _Response:
                    raw.status = ev.status_code  # type: ignore[union-attr]  # `et is _Response`
                    raw.t_head = ts
                elif et is _EndOfMessage:
                    raw.t_end = ts
                    self._complete(conn, raw, ts)
                    return
                elif et is h11.InformationalResponse:
                    continue
                else:  # ConnectionClosed or PAUSED before the end of the response
                    self._abort(conn, raw, ts, "connection_closed", "the server closed the connection mid-response")
                    return
        except h11.RemoteProtocolError as exc:
            if n == 0:
                self._abort(conn, raw, ts, "connection_closed", f"the server closed the connection mid-response ({exc})")
            else:
                self._abort(conn, raw, ts, "protocol_error", f"invalid HTTP from the server: {exc}")

    def _abort(self, conn: Conn, raw: RawRequest, ts: int, kind: str, message: str) -> None:
        if self._retry(conn, raw):
            return
        raw.fail(kind, message)
        raw.t_end = ts
        self._busy.discard(conn)
        conn.req = None
        self._finished(raw)
        self._drop(conn)

    def _complete(self, conn: Conn, raw: RawRequest, ts: int) -> None:
        self._busy.discard(conn)
        conn.req = None
        conn.sse = type(conn.sse)()
        self._finished(raw)
        conn.served += 1
        if conn.parser is not None:
            reusable = conn.keep
        else:
            h = conn.h
            reusable = h.our_state is h11.DONE and h.their_state is h11.DONE
            if reusable:
                h.start_next_cycle()
        if reusable:
            conn.t_free = ts
            self._on_free(conn)
        else:  # Connection: close, or HTTP/1.0
            self._drop(conn)

    def _retry(self, conn: Conn, raw: RawRequest) -> bool:
        """A reused keep-alive connection failed before any byte of the response: the server had
        closed it while idle (its keep-alive timeout), so send once more on a new connection, as
        HTTP clients do (vllm-omni #1374). The request's times restart with the new send."""
        if raw.retried or raw.status is not None or raw.ev_data or conn.served == 0:
            return False
        raw.retried = True
        raw.t_send = raw.t_head = None
        self._busy.discard(conn)
        conn.req = None
        self._close(conn)
        self.out.reconnects += 1
        self._spawn(self._connect_and_send(raw, count_lag=False))
        return True

    def _conn_error(self, conn: Conn, exc: OSError) -> None:
        raw = conn.req
        if raw is not None and self._retry(conn, raw):
            return
        if raw is not None:
            kind = ("connection_reset" if isinstance(exc, ConnectionResetError) else
                    "connection_closed" if isinstance(exc, BrokenPipeError) else "connection_error")
            raw.fail(kind, f"{type(exc).__name__}: {exc}")
            raw.t_end = time.time_ns()
            self._busy.discard(conn)
            conn.req = None
            self._finished(raw)
        self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        """Close a connection that cannot carry another request and open a replacement."""
        self._close(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self.out.reconnects += 1
        self._spawn(self._reopen())

    def _close(self, conn: Conn) -> None:
        if conn.fd >= 0:
            try:
                self.loop.remove_reader(conn.fd)
                if conn.out:
                    self.loop.remove_writer(conn.fd)
            except (RuntimeError, OSError):  # uvloop already closed the poll handle (see _loop_exception)
                pass
            conn.sock.close()
            conn.fd = -1
        self._busy.discard(conn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Future) -> None:
        self._tasks.discard(t)
        exc = None if t.cancelled() else t.exception()
        if exc is not None and self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        else:
            self._maybe_done()

    async def _resolve(self) -> tuple:
        infos = await self.loop.getaddrinfo(self.ep.host, self.ep.port, type=socket.SOCK_STREAM)
        family, _t, _p, _c, addr = infos[0]
        self._family = family
        return addr

    async def _open(self, warm: bool) -> Conn:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.opt.kernel_timestamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                self.out.kernel_timestamps = False
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, self._addr), self.opt.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            raise OSError(f"cannot connect to {self.ep.host}:{self.ep.port}: {exc or type(exc).__name__}") from exc
        conn = Conn(sock, self.fast, SSEFramer if self.spec.stream else WholeBody)
        if warm and not await self._warm(conn):
            sock.close()
            return await self._open(warm=False)
        self.loop.add_reader(conn.fd, self._on_readable, conn)
        return conn

    async def _warm(self, conn: Conn) -> bool:
        """One GET of warm_path on a new connection (outside the window); False if it cannot be reused."""
        h = conn.h
        try:
            data = h.send(h11.Request(method="GET", target=(self.ep.prefix + self.opt.warm_path).encode(),
                                      headers=self.headers[:1] + list(self.opt.headers)))
            data += h.send(_EndOfMessage())
            await self.loop.sock_sendall(conn.sock, data)
            while True:
                ev = h.next_event()
                if ev is _NEED_DATA:
                    chunk = await asyncio.wait_for(self.loop.sock_recv(conn.sock, 65536), self.opt.connect_timeout_s)
                    h.receive_data(chunk)
                elif type(ev) is _EndOfMessage:
                    break
                elif type(ev) is h11.ConnectionClosed or ev is _PAUSED:
                    return False
        except (OSError, h11.ProtocolError, asyncio.TimeoutError):
            return False
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            conn.h = h11.Connection(h11.CLIENT)
            conn.served = 1
            return True
        return False

    async def _open_many(self, n: int) -> list[Conn]:
        sem = asyncio.Semaphore(64)

        async def one() -> Conn:
            async with sem:
                return await self._open(warm=True)

        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        conns = [r for r in results if isinstance(r, Conn)]
        if len(conns) < n:
            for c in conns:
                self._close(c)
            first = next(r for r in results if isinstance(r, BaseException))
            raise ConnectionError(f"load client: opened {len(conns)} of {n} connections: {first}; is the server "
                                  f"running at http://{self.ep.host_header}{self.ep.prefix} and accepting {n} "
                                  "connections (listen backlog, file-descriptor limit)?") from first
        return conns

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """uvloop reports a socket error (a peer's RST) by closing the reader's poll handle and raising
        EBADF here instead of calling the reader; read every connection now so the error is seen."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno == errno.EBADF and set(context) == {"exception"}:
            loop.call_soon(self._poke)
            return
        if self._prev_handler is not None:
            self._prev_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _poke(self) -> None:
        for conn in list(self._busy) + list(self._idle):
            if conn.fd >= 0:
                self._on_readable(conn)  # EAGAIN is harmless; an error or EOF is handled as usual
