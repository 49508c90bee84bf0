"""Streaming load against Triton's TensorRT-LLM ensemble: HTTP generate_stream (SSE) or gRPC decoupled streaming.

The protocol (request fields, decoding responses into `RequestRecord`s) is triton_protocol.py; this
module schedules requests (warm-up, then closed or open loop) and turns a run into a `RunResult`
with the OpenAI client's validity rules. gRPC goes through tritonclient (`start_stream` ->
`async_stream_infer` -> `stop_stream`), with `enable_empty_final_response` so the end of each request
is marked by a `triton_final_response` parameter.

Known gap: tritonclient turns a stream error into an `InferenceServerException` without the
request id (tritonclient/grpc/_infer_stream.py), so with several requests in flight a gRPC error
cannot be attributed; it is counted in `stream_errors` and the request that failed ends as a timeout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Sequence

from .check import evaluate
from .records import RequestRecord
from .result import MatchedWork, RunResult, invalid_reasons
from .schedule import arrival_offsets
from .spec import CheckLimits, LoadSpec
from .sse import SSEFramer
from .summary import LoadSummary, summarize
from .triton_protocol import (
    ModelInfo,
    RawRequest,
    TritonOptions,
    distinct_prompts,
    fetch_model_info,
    grpc_inputs,
    model_info_from_config,
    record_from_grpc,
    record_from_sse,
    request_fields,
)


# one streamed response per generation step; TensorRT-LLM forces the length with min_tokens and end_id
_MATCHED = MatchedWork(counted="stream exactly", unit="token responses",
                       hint="check min_tokens/min_length and end_id reach the tensorrt_llm model")


@dataclass
class TritonLoadResult:
    """Records of one run plus their summary; `stream_errors`: gRPC errors with no request id."""

    protocol: str
    records: list[RequestRecord]
    summary: LoadSummary
    stream_errors: list[str] = field(default_factory=list)
    server_metrics: Any = None  # server_metrics.MetricsSummary when sampled
    spec: LoadSpec | None = None

    def to_run_result(self, limits: CheckLimits | None = None) -> RunResult:
        """The OpenAI client's RunResult (same self-check rules), so assert_slo and baselines apply."""
        spec = self.spec or LoadSpec()
        send_lag = [r.t_send_ns - r.t_scheduled_ns for r in self.records
                    if not r.warmup and r.t_scheduled_ns is not None and r.t_send_ns is not None]
        # no event-loop probe or kernel timestamps here: arrivals are stamped when a read/callback runs
        shard: Any = SimpleNamespace(loop_lag_ns=[], read_lag_ns=[], send_lag_ns=send_lag, turnaround_ns=[],
                                kernel_timestamps=False, reconnects=0)
        check = evaluate([shard], self.summary, spec, limits or CheckLimits())
        reasons = invalid_reasons(check, self.summary, self.records, spec, matched=_MATCHED)
        if self.stream_errors:
            reasons.append(f"{len(self.stream_errors)} gRPC stream errors could not be tied to a request; "
                           f"first: {self.stream_errors[0][:200]}")
        return RunResult(spec=spec, records=self.records, summary=self.summary, client_check=check, valid=not reasons,
                         invalid_reasons=reasons)


def run_triton_load(endpoints: Any, spec: LoadSpec, protocol: str = "grpc", opts: TritonOptions = TritonOptions(),
                    metrics_interval_s: float | None = 0.5) -> TritonLoadResult:
    """Load one Triton (`endpoints`: http_url, grpc_url, metrics_url, model) while sampling its metrics."""
    from ..evidence.server_metrics import MetricsSampler

    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol={protocol!r}: use 'grpc' or 'http'")
    info = fetch_model_info(endpoints.http_url, endpoints.model)
    sampler = MetricsSampler(endpoints.metrics_url, interval_s=metrics_interval_s) if metrics_interval_s else None
    if sampler:
        sampler.start()
    try:
        if protocol == "grpc":
            result = run_grpc(endpoints.grpc_url, endpoints.model, spec, opts, info=info)
        else:
            result = run_http(endpoints.http_url, endpoints.model, spec, opts, info=info)
    finally:
        summary = sampler.stop() if sampler else None
    result.server_metrics = summary
    return result


# ---- HTTP generate_stream ---------------------------------------------------------------------

def run_http(http_url: str, model: str, spec: LoadSpec, opts: TritonOptions = TritonOptions(),
             info: ModelInfo | None = None) -> TritonLoadResult:
    """Run `spec` against `<http_url>/v2/models/<model>/generate_stream`."""
    spec.validate()
    info = info or fetch_model_info(http_url, model)
    bodies = [json.dumps(request_fields(info, spec, i, opts)).encode() for i in range(distinct_prompts(spec))]
    url = f"{http_url.rstrip('/')}/v2/models/{model}/generate_stream"
    raws = asyncio.run(_http_run(url, spec, bodies, opts))
    records = [record_from_sse(r) for r in raws]
    return TritonLoadResult("http", records, summarize(records, spec), spec=spec)


async def _http_run(url: str, spec: LoadSpec, bodies: Sequence[bytes], opts: TritonOptions) -> list[RawRequest]:
    import aiohttp

    headers = {"content-type": "application/json", **opts.headers}
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout_s, sock_read=spec.request_timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def one(raw: RawRequest) -> None:
            body = bodies[raw.index % len(bodies)]
            framer = SSEFramer()
            raw.t_send = time.time_ns()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    raw.t_head = time.time_ns()
                    raw.status = resp.status
                    if resp.status != 200:
                        raw.fail(f"http_{resp.status}", (await resp.read()).decode("utf-8", "replace") or "empty body")
                        return
                    async for chunk in resp.content.iter_any():
                        ts = time.time_ns()
                        for payload in framer.feed(chunk):
                            raw.events.append((ts, payload))
                    raw.t_end = time.time_ns()
            except TimeoutError:  # aiohttp's timeouts are asyncio.TimeoutError, an alias since 3.11
                raw.fail("timeout", f"no complete response within {spec.request_timeout_s} s")
            except aiohttp.ClientError as exc:
                raw.fail("connection", f"{type(exc).__name__}: {exc}")

        return await _drive(spec, one)


async def _drive(spec: LoadSpec, one: Any) -> list[RawRequest]:
    """Warm-up requests first (excluded from statistics), then the measured ones, closed or open loop."""
    raws: list[RawRequest] = []
    if spec.warmup:
        warm = [RawRequest(i, True, None) for i in range(spec.warmup)]
        raws += warm
        await _closed(warm, spec.concurrency or 1, one, None)
    start = spec.warmup
    if spec.rate is None:
        count = spec.requests or 0
        deadline = time.monotonic() + spec.duration_s if spec.duration_s else None
        measured = [RawRequest(start + i, False, None) for i in range(count)] if count else []
        raws += await _closed(measured, spec.concurrency or 1, one, deadline, start)
    else:
        offsets = arrival_offsets(spec)
        t0 = time.time_ns()
        cap = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
        measured = [RawRequest(start + i, False, t0 + int(o * 1e9)) for i, o in enumerate(offsets)]
        raws += measured

        async def sched(raw: RawRequest) -> None:
            assert raw.t_sched is not None  # every measured request has its scheduled time (set above)
            delay = (raw.t_sched - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if cap:
                async with cap:
                    await one(raw)
            else:
                await one(raw)

        await asyncio.gather(*(sched(r) for r in measured))
    return raws


async def _closed(raws: list[RawRequest], concurrency: int, one: Any, deadline: float | None, start: int = 0) -> list[RawRequest]:
    """`concurrency` workers; by count (raws given) or until `deadline` (raws grown on demand)."""
    queue = list(raws)
    out = list(raws)
    counter = [start + len(raws)]

    async def worker() -> None:
        while True:
            if queue:
                raw = queue.pop(0)
            elif deadline is not None and time.monotonic() < deadline:
                raw = RawRequest(counter[0], False, None)
                counter[0] += 1
                out.append(raw)
            else:
                return
            await one(raw)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(out, key=lambda r: r.index)


# ---- gRPC decoupled streaming -----------------------------------------------------------------

def run_grpc(grpc_url: str, model: str, spec: LoadSpec, opts: TritonOptions = TritonOptions(),
             info: ModelInfo | None = None, http_url: str | None = None) -> TritonLoadResult:
    """Run `spec` over one tritonclient gRPC stream (requests multiplexed by request id)."""
    import tritonclient.grpc as grpcclient

    spec.validate()
    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        if info is None:
            info = (fetch_model_info(http_url, model) if http_url
                    else model_info_from_config(client.get_model_config(model, as_json=True)))
        inputs = [grpc_inputs(grpcclient, info, request_fields(info, spec, i, opts)) for i in range(distinct_prompts(spec))]
        outputs = [grpcclient.InferRequestedOutput("text_output")]
        runner = _GrpcRun(client, model, spec, inputs, outputs, dict(opts.headers))
        raws = runner.run()
    finally:
        client.close()
    records = [record_from_grpc(r) for r in raws]
    return TritonLoadResult("grpc", records, summarize(records, spec), stream_errors=runner.stream_errors, spec=spec)


class _GrpcRun:
    """Dispatches requests onto one stream from this thread; tritonclient's thread runs `_callback`."""

    def __init__(self, client: Any, model: str, spec: LoadSpec, inputs: list, outputs: list, headers: dict) -> None:
        self.client, self.model, self.spec, self.inputs, self.outputs = client, model, spec, inputs, outputs
        self.headers = headers
        self.raws: dict[str, RawRequest] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.in_flight = 0
        self.stopping = False
        self.stream_errors: list[str] = []

    def run(self) -> list[RawRequest]:
        spec = self.spec
        self.client.start_stream(callback=self._callback, headers=self.headers or None)
        try:
            for i in range(spec.warmup):
                self._send(RawRequest(i, True, None), spec.concurrency or 1)
            self._wait_all()
            start = spec.warmup
            if spec.rate is None:
                deadline = time.monotonic() + spec.duration_s if spec.duration_s else None
                i = 0
                while (spec.requests is not None and i < spec.requests) or (deadline and time.monotonic() < deadline):
                    self._send(RawRequest(start + i, False, None), spec.concurrency or 1)
                    i += 1
            else:
                t0 = time.time_ns()
                for i, offset in enumerate(arrival_offsets(spec)):
                    t_sched = t0 + int(offset * 1e9)
                    delay = (t_sched - time.time_ns()) / 1e9
                    if delay > 0:
                        time.sleep(delay)
                    self._send(RawRequest(start + i, False, t_sched), spec.concurrency)
            self._wait_all()
        finally:
            with self.lock:
                self.stopping = True
                leftover = self.in_flight > 0  # only an exception leaves requests running
            # a clean stop half-closes the stream and waits for the server to end it
            self.client.stop_stream(cancel_requests=leftover)
        return sorted(self.raws.values(), key=lambda r: r.index)

    def _send(self, raw: RawRequest, cap: int | None) -> None:
        with self.changed:
            while cap is not None and self.in_flight >= cap:
                self._expire_locked()
                self.changed.wait(timeout=0.05)
            self.in_flight += 1
            self.raws[str(raw.index)] = raw
            raw.t_send = raw.t_last = time.time_ns()
        self.client.async_stream_infer(self.model, self.inputs[raw.index % len(self.inputs)], outputs=self.outputs,
                                       request_id=str(raw.index), enable_empty_final_response=True)

    def _wait_all(self) -> None:
        with self.changed:
            while self.in_flight:
                self._expire_locked()
                self.changed.wait(timeout=0.05)

    def _expire_locked(self) -> None:
        limit = int(self.spec.request_timeout_s * 1e9)
        now = time.time_ns()
        for raw in self.raws.values():
            if not raw.done and now - raw.t_last > limit:
                raw.fail("timeout", f"no response for {self.spec.request_timeout_s} s")
                self._finish_locked(raw, None)

    def _finish_locked(self, raw: RawRequest, ts: int | None) -> None:
        raw.done = True
        raw.t_end = ts
        self.in_flight -= 1
        self.changed.notify_all()

    def _callback(self, result: Any, error: Any) -> None:
        ts = time.time_ns()
        with self.changed:
            if error is not None:
                if self.stopping:
                    return  # the cancellation we asked for
                raw = self._only_in_flight()
                if raw is None:
                    self.stream_errors.append(str(error))
                    return
                raw.events.append((ts, error))
                raw.fail("stream_error", str(error))
                self._finish_locked(raw, ts)
                return
            response = result.get_response()
            raw = self.raws.get(response.id)
            if raw is None or raw.done:
                return  # a response after its request timed out
            raw.t_last = ts
            raw.events.append((ts, result))
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                self._finish_locked(raw, ts)

    def _only_in_flight(self) -> RawRequest | None:
        pending = [r for r in self.raws.values() if not r.done]
        return pending[0] if len(pending) == 1 else None
