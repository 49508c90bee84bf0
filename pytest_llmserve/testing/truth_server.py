"""Ground-truth streaming server: OpenAI-style SSE on a script, logging when every chunk really left.

Truth per request: `t_recv_ns` (kernel arrival of the request, SO_TIMESTAMPNS), `t_head_ns`, and
`token_ns` (time.time_ns() just before the send() of each token-bearing chunk; both CLOCK_REALTIME,
the clock the load client uses). True TTFT = token_ns[0] - t_recv_ns; true ITL = token_ns gaps.
Timings are scheduled from the request's arrival on an absolute clock, so a busy server sends late
but never drifts; what was actually sent is what the log says.

In-process (tests)::

    with TruthServer(Script(ttft_ms=50, itl_ms=10)) as srv:   # a thread, port 0
        run_load(srv.url, "truth-model", spec); srv.truth()

CLI (benchmarks)::

    python -m pytest_llmserve.testing.truth_server --ttft-ms 50 --itl-ms 10 --port 0
    # prints "truth server listening on http://127.0.0.1:PORT"; GET /truth returns the log as JSON,
    # POST /truth/reset clears it; --truth-log PATH writes it as JSONL at exit.

A request body may carry `"x_truth": {...Script fields...}` to script that one request.
One thread, one selector loop, h11 for HTTP; written for many streams on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Iterator

import h11

from .truth_script import CLOSE, END, META, PART, RESET, TOKEN, Request, Script, full_response, greedy_response, plan

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_LINGER_RST = struct.pack("ii", 1, 0)


class _Conn:
    __slots__ = ("sock", "h", "out", "marks", "body", "req", "stream", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h = h11.Connection(h11.SERVER)
        self.out = b""
        # token chunks waiting in `out` (the kernel's send buffer was full): [end offset in out, times, index]
        self.marks: list[list] = []
        self.body: list[bytes] = []
        self.req: h11.Request | None = None
        self.stream: _Stream | None = None
        self.closed = False


class _Stream:
    __slots__ = ("conn", "rec", "plan", "t0", "alive", "pending", "drop_after")

    def __init__(self, conn: _Conn, rec: dict[str, Any], steps: Iterator[tuple[int, str, bytes]], t0: int) -> None:
        self.conn, self.rec, self.plan, self.t0, self.alive = conn, rec, steps, t0, True
        self.pending: tuple[str, bytes] = ("", b"")
        self.drop_after = False


class TruthServer:
    """Scripted SSE server with a truth log; `start()` runs it in a thread and returns its URL."""

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1", port: int = 0,
                 sock: socket.socket | None = None, seq_base: int = 0) -> None:
        self.script = script or Script()
        # `sock`: a listening socket shared by several forked server processes (see --processes)
        self._lsock = sock if sock is not None else socket.create_server((host, port), backlog=8192)
        self._lsock.setblocking(False)
        self.host, self.port = self._lsock.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._heap: list[tuple[int, int, _Stream]] = []
        self._seq = seq_base
        self._tick = 0
        self._log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._running = False
        self._thread: threading.Thread | None = None
        self.blocked_writes = 0  # sends the kernel did not take at once (a client not reading)
        self.get_paths: dict[str, int] = {}  # GET requests by path (connection warm-ups, probes)
        self._buf = bytearray(1 << 20)
        self._bufs = [memoryview(self._buf)]
        self._spec = [0.0, 0.0]  # speculative decoding (Script.spec_acceptance): drafts, accepted tokens
        # /metrics exists when the script asks for it (read here, not from self.script: a subclass may count reads)
        self._metrics = script is not None and script.spec_acceptance is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------- lifecycle
    def start(self) -> str:
        self._thread = threading.Thread(target=self.serve_forever, name="truth-server", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._running = False
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TruthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def truth(self) -> list[dict[str, Any]]:
        """A copy of the log: one dict per completion request, in arrival order."""
        with self._lock:
            return [dict(r, token_ns=list(r["token_ns"])) for r in self._log]

    def reset(self) -> None:
        with self._lock:
            self._log.clear()

    def serve_forever(self) -> None:
        sel = self._sel
        sel.register(self._lsock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        heap = self._heap
        try:
            while self._running:
                timeout = None
                if heap:
                    timeout = max(0.0, (heap[0][0] - time.time_ns()) / 1e9)
                for key, mask in sel.select(timeout):
                    data = key.data
                    if data is None:
                        self._accept()
                    elif data == "wake":
                        self._wake_r.recv(64)
                    else:
                        if mask & selectors.EVENT_WRITE:
                            self._flush(data)
                        if mask & selectors.EVENT_READ and not data.closed:
                            self._read(data)
                now = time.time_ns()
                while heap and heap[0][0] <= now:
                    _, _, st = heapq.heappop(heap)
                    if st.alive:
                        self._step(st)
        finally:
            for key in list(sel.get_map().values()):
                if isinstance(key.data, _Conn):
                    key.data.sock.close()
            sel.close()
            self._lsock.close()

    # ------------------------------------------------------------- connections
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                pass
            conn = _Conn(sock)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            n, anc, _f, _a = conn.sock.recvmsg_into(self._bufs, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        ts = time.time_ns()
        if anc:
            sec, nsec = _TIMESPEC.unpack_from(anc[0][2])
            ts = sec * 1_000_000_000 + nsec
        if n == 0:
            self._drop(conn)
            return
        conn.h.receive_data(self._bufs[0][:n].tobytes())
        self._pump(conn, ts)

    def _pump(self, conn: _Conn, ts: int) -> None:
        h = conn.h
        while not conn.closed and conn.stream is None:
            try:
                ev = h.next_event()
            except h11.RemoteProtocolError:
                self._drop(conn)
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                conn.req, conn.body = ev, []
            elif isinstance(ev, h11.Data):
                conn.body.append(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self._handle(conn, ts)
            elif isinstance(ev, h11.ConnectionClosed):
                self._drop(conn)
                return

    def _write(self, conn: _Conn, data: bytes, times: list[int] | None = None) -> None:
        """Send now if the kernel takes it; else queue. `times[-1]`, the token's logged send time, is
        corrected to when its last byte really went to the kernel."""
        if conn.closed:
            return
        if conn.out:
            conn.out += data
            if times is not None:
                conn.marks.append([len(conn.out), times, len(times) - 1])
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._drop(conn)
            return
        if n < len(data):
            self.blocked_writes += 1
            conn.out = data[n:]
            if times is not None:
                conn.marks.append([len(conn.out), times, len(times) - 1])
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _flush(self, conn: _Conn) -> None:
        t = time.time_ns()
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        conn.out = conn.out[n:]
        if conn.marks:
            left = []
            for mark in conn.marks:
                mark[0] -= n
                if mark[0] <= 0:
                    mark[1][mark[2]] = t
                else:
                    left.append(mark)
            conn.marks = left
        if not conn.out:
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
            if conn.stream is None:
                self._next_cycle(conn)

    def _drop(self, conn: _Conn, rst: bool = False) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.stream is not None:
            conn.stream.alive = False
            if conn.stream.rec["t_end_ns"] is None:
                conn.stream.rec["aborted"] = True
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        if rst:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        conn.sock.close()

    def _next_cycle(self, conn: _Conn) -> None:
        h = conn.h
        if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
            self._drop(conn)
        elif h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            self._pump(conn, time.time_ns())

    # ------------------------------------------------------------- requests
    def _respond(self, conn: _Conn, status: int, body: bytes, ctype: str = "application/json") -> None:
        h = conn.h
        data = h.send(h11.Response(status_code=status, headers=[("content-type", ctype),
                                                                ("content-length", str(len(body)))]))
        data += h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
        self._write(conn, data)
        if not conn.out:
            self._next_cycle(conn)

    def _handle(self, conn: _Conn, t_recv: int) -> None:
        req = conn.req
        assert req is not None
        path = req.target.decode().split("?")[0]
        method = req.method.decode()
        if method == "GET":
            self.get_paths[path] = self.get_paths.get(path, 0) + 1
        if method == "GET" and path in ("/health", "/v1/health"):
            return self._respond(conn, 200, b"{}")
        if method == "GET" and path == "/v1/models":
            return self._respond(conn, 200, json.dumps({"object": "list", "data": [
                {"id": self.script.model, "object": "model", "owned_by": "truth", "max_model_len": 1 << 20}]}).encode())
        if method == "GET" and path == "/truth":
            log = self.truth()
            return self._respond(conn, 200, json.dumps({"requests": log, "blocked_writes": self.blocked_writes}).encode())
        if method == "GET" and path == "/metrics" and (self._metrics or self._spec[0]):
            return self._respond(conn, 200, self._metrics_text(), "text/plain; version=0.0.4")
        if method == "POST" and path == "/truth/reset":
            self.reset()
            return self._respond(conn, 200, b"{}")
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return self._completion(conn, path, t_recv)
        return self._respond(conn, 404, json.dumps({"error": {"message": f"no route {method} {path}"}}).encode())

    def _metrics_text(self) -> bytes:
        """vLLM's speculative-decoding counters (Prometheus text) over every request so far."""
        labels = '{engine="0",model_name="%s"}' % self.script.model
        drafts, accepted = self._spec
        return (f"# TYPE vllm:spec_decode_num_drafts counter\nvllm:spec_decode_num_drafts_total{labels} {drafts!r}\n"
                f"# TYPE vllm:spec_decode_num_accepted_tokens counter\n"
                f"vllm:spec_decode_num_accepted_tokens_total{labels} {accepted!r}\n").encode()

    def _completion(self, conn: _Conn, path: str, t_recv: int) -> None:
        try:
            body = json.loads(b"".join(conn.body) or b"{}")
            script = self.script.with_overrides(body.get("x_truth") or {})
        except (ValueError, TypeError) as exc:
            return self._respond(conn, 400, json.dumps({"error": {"message": f"bad request: {exc}"}}).encode())
        self._seq += 1
        seq = self._seq
        if script.fault_every and seq % script.fault_every:
            script = script.without_faults()
        chat = path.endswith("chat/completions")
        prompt = body.get("prompt") if not chat else " ".join(
            str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt or "").split())
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        r = Request(seq=seq, chat=chat, max_tokens=max_tokens,
                    include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
                    prompt_tokens=prompt_tokens, token_ids=bool(body.get("return_token_ids")))
        if script.spec_acceptance is not None:  # every token counts as one draft step
            n = script.tokens if script.tokens is not None else max_tokens
            self._spec[0] += n
            self._spec[1] += n * (script.spec_acceptance - 1)
        rec: dict[str, Any] = {"seq": seq, "id": f"{'chatcmpl' if chat else 'cmpl'}-{seq}", "path": path,
                               "t_recv_ns": t_recv, "t_head_ns": None, "token_ns": [], "t_end_ns": None,
                               "status": 200, "max_tokens": max_tokens, "stream": bool(body.get("stream")),
                               "fault": script.has_fault}
        if script.log_prompts:
            rec["prompt"] = prompt
        with self._lock:
            self._log.append(rec)
        if script.status is not None:
            rec["status"] = script.status
            rec["t_head_ns"] = rec["t_end_ns"] = time.time_ns()
            msg = {"error": {"message": f"scripted HTTP {script.status}", "type": "truth_server", "code": script.status}}
            return self._respond(conn, script.status, json.dumps(msg).encode())
        if not body.get("stream"):
            delay, payload = (greedy_response(script, r, prompt, int(body.get("logprobs") or 1))
                              if script.greedy_vocab and not chat else full_response(script, r))
            st = _Stream(conn, rec, iter([(delay, "json", payload)]), t_recv)
        else:
            h = conn.h
            head = h.send(h11.Response(status_code=200, headers=[
                ("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                ("transfer-encoding", "chunked")]))
            rec["t_head_ns"] = time.time_ns()
            self._write(conn, head)
            st = _Stream(conn, rec, plan(script, r), t_recv)
        st.drop_after = script.drop_keepalive
        conn.stream = st
        self._advance(st)

    def _advance(self, st: _Stream) -> None:
        """Run every action of the stream that is due, then queue the next one on the timer heap."""
        while True:
            nxt = next(st.plan, None)
            if nxt is None:
                return  # finished, or a scripted stall: nothing more is sent on this stream
            delay, kind, data = nxt
            due = st.t0 + delay
            if due > time.time_ns():
                st.pending = (kind, data)
                self._tick += 1
                heapq.heappush(self._heap, (due, self._tick, st))
                return
            if not self._act(st, kind, data):
                return

    def _step(self, st: _Stream) -> None:
        kind, data = st.pending
        if self._act(st, kind, data):
            self._advance(st)

    def _act(self, st: _Stream, kind: str, data: bytes) -> bool:
        """Do one planned action now; False when the stream is over."""
        conn, rec = st.conn, st.rec
        if conn.closed:
            st.alive = False
            return False
        if kind == TOKEN:
            # chunked framing by hand (h11 only tracks state here): the send path is the server's bottleneck
            chunk = b"%x\r\n%b\r\n" % (len(data), data)
            times = rec["token_ns"]
            times.append(time.time_ns())  # the truth: just before the bytes go to the kernel
            self._write(conn, chunk, times)
        elif kind == PART or kind == META:
            self._write(conn, b"%x\r\n%b\r\n" % (len(data), data))
        elif kind == END:
            self._finish(st, conn.h.send(h11.EndOfMessage()))
            return False
        elif kind == "json":
            h = conn.h
            out = h.send(h11.Response(status_code=200, headers=[("content-type", "application/json"),
                                                                ("content-length", str(len(data)))]))
            out += h.send(h11.Data(data=data)) + h.send(h11.EndOfMessage())
            rec["token_ns"].append(time.time_ns())
            self._finish(st, out)
            return False
        elif kind == RESET or kind == CLOSE:
            rec["t_end_ns"] = time.time_ns()
            rec["aborted"] = True
            st.alive = False
            conn.stream = None
            self._drop(conn, rst=kind == RESET)
            return False
        return True

    def _finish(self, st: _Stream, tail: bytes) -> None:
        st.rec["t_end_ns"] = time.time_ns()
        st.alive = False
        conn = st.conn
        conn.stream = None
        self._write(conn, tail)
        if st.drop_after and not conn.out:  # as if the keep-alive timeout expired right after this response
            self._drop(conn)
        elif not conn.out and not conn.closed:
            self._next_cycle(conn)


def _truth_dump(server: TruthServer) -> str:
    return "".join(json.dumps(r) + "\n" for r in server.truth())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytest_llmserve.testing.truth_server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--truth-log", help="write the truth log here as JSONL when the server exits")
    p.add_argument("--processes", type=int, default=1,
                   help="serve from N forked processes sharing the port (more chunks/s than one core sends); "
                        "each writes its log to TRUTH_LOG.<i> at exit, and GET /truth shows one process only")
    for f in dataclasses.fields(Script):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",) or isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            conv = (float if isinstance(f.default, float) or "float" in str(f.type) else
                    str if isinstance(f.default, str) else int)
            p.add_argument(flag, dest=f.name, type=conv, default=f.default)
    args = p.parse_args(argv)
    script = Script(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Script)})
    if args.processes > 1:
        return _serve_forked(script, args)
    server = TruthServer(script, args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"truth server listening on {server.url}", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    server._thread = thread
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.stop()
    if args.truth_log:
        with open(args.truth_log, "w") as fh:
            fh.write(_truth_dump(server))
    return 0


def _serve_forked(script: Script, args: argparse.Namespace) -> int:
    # SO_REUSEPORT: every process listens on the same port and the kernel spreads connections evenly;
    # the parent only reserves the port (bound, never listening, so it is given no connections)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((args.host, args.port))
    host, port = holder.getsockname()[:2]
    children = []
    ready_r, ready_w = os.pipe()
    for i in range(args.processes):
        pid = os.fork()
        if pid == 0:  # child: serve in this (only) thread until SIGTERM, then write this process's log
            holder.close()
            lsock = socket.create_server((host, port), backlog=8192, reuse_port=True)
            server = TruthServer(script, sock=lsock, seq_base=i * 1_000_000_000)
            signal.signal(signal.SIGTERM, lambda *_: server.stop())
            signal.signal(signal.SIGINT, lambda *_: server.stop())
            os.write(ready_w, b"x")
            server.serve_forever()
            if args.truth_log:
                with open(f"{args.truth_log}.{i}", "w") as fh:
                    fh.write(_truth_dump(server))
            os._exit(0)
        children.append(pid)
    for _ in children:
        os.read(ready_r, 1)
    holder.close()
    print(f"truth server listening on http://{host}:{port} ({args.processes} processes)", flush=True)

    def forward(*_: object) -> None:
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for c in children:
        os.waitpid(c, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
