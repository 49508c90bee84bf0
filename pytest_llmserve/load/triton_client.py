"""Streaming load against Triton's TensorRT-LLM ensemble: HTTP generate_stream (SSE) or gRPC decoupled streaming.

Produces the same `RequestRecord`s as the OpenAI client (same clock: CLOCK_REALTIME ns from
`time.time_ns()`; same fields), so `summarize()` and every SLO check work unchanged.

Protocols: HTTP `POST /v2/models/<m>/generate_stream` with the request's fields at top level
(Triton's generate extension maps them to the model's input tensors) answered by SSE `data:`
events, each a JSON object with `text_output` or `{"error": ...}`, which may arrive after a 200;
gRPC `ModelStreamInfer` through tritonclient (`start_stream` -> `async_stream_infer` ->
`stop_stream`), with `enable_empty_final_response` so the end of each request is marked by a
`triton_final_response` parameter. Each streamed response is one generation step, so
`output_tokens` counts token-bearing responses (text may be empty for a partial UTF-8 byte
sequence); with speculative decoding a response may carry several tokens and the count is low.
Triton reports no usage: `prompt_tokens`/`completion_tokens` are None and `finish_reason` is None.

Matched work without ignore_eos (TensorRT-LLM has none): `min_tokens` (older ensembles: `min_length`)
= `max_tokens` = output_len, plus an `end_id` no generated token equals (default -1). Only inputs
the served model declares are sent (read from `/v2/models/<m>/config` before the timed window).

Known gap: tritonclient turns a stream error into an `InferenceServerException` without the
request id (tritonclient/grpc/_infer_stream.py), so with several requests in flight a gRPC error
cannot be attributed; it is counted in `stream_errors` and the request that failed ends as a timeout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from .check import evaluate
from .prompts import synthetic_prompt
from .records import RequestRecord
from .result import RunResult
from .schedule import arrival_offsets
from .spec import CheckLimits, LoadSpec
from .sse import SSEFramer
from .summary import LoadSummary, summarize

_NP_TYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64", "TYPE_BOOL": "BOOL",
             "TYPE_FP32": "FP32", "TYPE_UINT64": "UINT64", "TYPE_UINT32": "UINT32", "TYPE_FP16": "FP16"}


@dataclass(frozen=True)
class TritonOptions:
    """How requests are formed beyond the LoadSpec."""

    end_id: int = -1  # matched work: an id no generated token can equal
    min_tokens_input: str | None = None  # None: "min_tokens" if declared, else "min_length"
    extra_inputs: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 0.0}
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """The served model's declared inputs (name -> TYPE_*) and its max_batch_size."""

    name: str
    inputs: Mapping[str, str]
    max_batch_size: int


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
        shard = SimpleNamespace(loop_lag_ns=[], read_lag_ns=[], send_lag_ns=send_lag, turnaround_ns=[],
                                kernel_timestamps=False, reconnects=0)
        check = evaluate([shard], self.summary, spec, limits or CheckLimits())
        reasons = list(check.reasons)
        s = self.summary
        if s.requests and s.completed == 0:
            first = next((r for r in self.records if not r.warmup and not r.ok), None)
            reasons.append(f"all {s.requests} requests failed ({', '.join(f'{k} x{n}' for k, n in s.errors.items())})"
                           + (f"; first: {first.error_message}" if first and first.error_message else ""))
        if s.token_mismatches:
            reasons.append(f"{s.token_mismatches} of {s.completed} responses did not stream exactly output_len="
                           f"{spec.output_len} token responses ({'; '.join(s.mismatch_examples)}): the work is not "
                           "matched; check min_tokens/min_length and end_id reach the tensorrt_llm model")
        if self.stream_errors:
            reasons.append(f"{len(self.stream_errors)} gRPC stream errors could not be tied to a request; "
                           f"first: {self.stream_errors[0][:200]}")
        return RunResult(spec=spec, records=self.records, summary=s, client_check=check, valid=not reasons,
                         invalid_reasons=reasons)


def run_triton_load(endpoints: Any, spec: LoadSpec, protocol: str = "grpc", opts: TritonOptions = TritonOptions(),
                    metrics_interval_s: float | None = 0.5) -> TritonLoadResult:
    """Load one Triton (`endpoints`: http_url, grpc_url, metrics_url, model) while sampling its metrics."""
    from ..server_metrics import MetricsSampler

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


class _Raw:
    """Hot-path state of one request: timestamps and undecoded events."""

    __slots__ = ("index", "warmup", "t_sched", "t_send", "t_head", "t_end", "t_last", "status", "events",
                 "err_kind", "err_msg", "done")

    def __init__(self, index: int, warmup: bool, t_sched: int | None) -> None:
        self.index, self.warmup, self.t_sched = index, warmup, t_sched
        self.t_send: int | None = None
        self.t_head: int | None = None
        self.t_end: int | None = None
        self.t_last = 0
        self.status: int | None = None
        self.events: list[tuple[int, Any]] = []  # (arrival ns, SSE payload bytes | tritonclient result)
        self.err_kind: str | None = None
        self.err_msg: str | None = None
        self.done = False

    def fail(self, kind: str, msg: str) -> None:
        if self.err_kind is None:
            self.err_kind, self.err_msg = kind, msg[:500]


def model_info_from_config(config: Mapping[str, Any]) -> ModelInfo:
    """From Triton's model-config JSON (HTTP `/config`, or tritonclient's `{"config": ...}`)."""
    cfg = config.get("config", config)
    inputs = {i["name"]: i.get("data_type", "TYPE_STRING") for i in cfg.get("input", []) if "name" in i}
    return ModelInfo(name=str(cfg.get("name", "")), inputs=inputs, max_batch_size=int(cfg.get("max_batch_size", 0) or 0))


def fetch_model_info(http_url: str, model: str, timeout_s: float = 10.0) -> ModelInfo:
    import httpx

    response = httpx.get(f"{http_url.rstrip('/')}/v2/models/{model}/config", timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"GET /v2/models/{model}/config: HTTP {response.status_code}: {response.text[:200]}")
    return model_info_from_config(response.json())


def request_fields(info: ModelInfo, spec: LoadSpec, index: int, opts: TritonOptions) -> dict[str, Any]:
    """Input name -> value for request `index`; ValueError when the model cannot do what is asked."""
    if "text_input" not in info.inputs or "max_tokens" not in info.inputs:
        raise ValueError(f"model {info.name!r} declares {sorted(info.inputs)}; expected the TensorRT-LLM ensemble "
                         "inputs text_input and max_tokens")
    fields: dict[str, Any] = {"text_input": prompt_text(spec, index), "max_tokens": spec.output_len}
    if "stream" in info.inputs:
        fields["stream"] = True
    if "exclude_input_in_output" in info.inputs:
        fields["exclude_input_in_output"] = True
    if spec.ignore_eos:
        name = opts.min_tokens_input or next((n for n in ("min_tokens", "min_length") if n in info.inputs), None)
        if name is None or name not in info.inputs or "end_id" not in info.inputs:
            raise ValueError(f"matched work (ignore_eos) needs inputs min_tokens/min_length and end_id; model "
                             f"{info.name!r} declares {sorted(info.inputs)}. Pass ignore_eos=False to accept EOS")
        fields[name] = spec.output_len
        fields["end_id"] = opts.end_id
    for key, value in opts.extra_inputs.items():
        if key not in info.inputs:
            raise ValueError(f"extra input {key!r} is not declared by model {info.name!r}")
        fields[key] = value
    return fields


def prompt_text(spec: LoadSpec, index: int) -> str:
    """Triton's ensemble tokenizes text itself: explicit text prompts, else synthetic words."""
    if spec.prompts is not None:
        p = spec.prompts[index % len(spec.prompts)]
        if not isinstance(p, str):
            raise ValueError("Triton's ensemble takes text; give text prompts, not token ids")
        return p
    return str(synthetic_prompt(replace(spec, endpoint="chat"), index))


# ---- HTTP generate_stream ---------------------------------------------------------------------

def run_http(http_url: str, model: str, spec: LoadSpec, opts: TritonOptions = TritonOptions(),
             info: ModelInfo | None = None) -> TritonLoadResult:
    """Run `spec` against `<http_url>/v2/models/<model>/generate_stream`."""
    spec.validate()
    info = info or fetch_model_info(http_url, model)
    bodies = [json.dumps(request_fields(info, spec, i, opts)).encode() for i in range(_distinct(spec))]
    url = f"{http_url.rstrip('/')}/v2/models/{model}/generate_stream"
    raws = asyncio.run(_http_run(url, spec, bodies, opts))
    records = [_record_from_sse(r) for r in raws]
    return TritonLoadResult("http", records, summarize(records, spec), spec=spec)


async def _http_run(url: str, spec: LoadSpec, bodies: Sequence[bytes], opts: TritonOptions) -> list[_Raw]:
    import aiohttp

    headers = {"content-type": "application/json", **opts.headers}
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout_s, sock_read=spec.request_timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def one(raw: _Raw) -> None:
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


async def _drive(spec: LoadSpec, one: Any) -> list[_Raw]:
    """Warm-up requests first (excluded from statistics), then the measured ones, closed or open loop."""
    raws: list[_Raw] = []
    if spec.warmup:
        warm = [_Raw(i, True, None) for i in range(spec.warmup)]
        raws += warm
        await _closed(warm, spec.concurrency or 1, one, None)
    start = spec.warmup
    if spec.rate is None:
        count = spec.requests or 0
        deadline = time.monotonic() + spec.duration_s if spec.duration_s else None
        measured = [_Raw(start + i, False, None) for i in range(count)] if count else []
        raws += await _closed(measured, spec.concurrency or 1, one, deadline, start)
    else:
        offsets = arrival_offsets(spec)
        t0 = time.time_ns()
        cap = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
        measured = [_Raw(start + i, False, t0 + int(o * 1e9)) for i, o in enumerate(offsets)]
        raws += measured

        async def sched(raw: _Raw) -> None:
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


async def _closed(raws: list[_Raw], concurrency: int, one: Any, deadline: float | None, start: int = 0) -> list[_Raw]:
    """`concurrency` workers; by count (raws given) or until `deadline` (raws grown on demand)."""
    queue = list(raws)
    out = list(raws)
    counter = [start + len(raws)]

    async def worker() -> None:
        while True:
            if queue:
                raw = queue.pop(0)
            elif deadline is not None and time.monotonic() < deadline:
                raw = _Raw(counter[0], False, None)
                counter[0] += 1
                out.append(raw)
            else:
                return
            await one(raw)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(out, key=lambda r: r.index)


def _record_from_sse(raw: _Raw) -> RequestRecord:
    tokens: list[tuple[int, str]] = []
    for ts, payload in raw.events:
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raw.fail("malformed_sse", f"event data is not a JSON object: {payload[:200]!r}")
            continue
        if "error" in obj:
            raw.fail("stream_error", str(obj["error"]))
            continue
        if "text_output" in obj:
            tokens.append((ts, str(obj["text_output"])))
    if raw.err_kind is None and raw.status == 200 and not tokens:
        raw.fail("no_tokens", "the stream ended without any text_output event")
    return _record(raw, tokens, chunks=len(raw.events))


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
        inputs = [_grpc_inputs(grpcclient, info, request_fields(info, spec, i, opts)) for i in range(_distinct(spec))]
        outputs = [grpcclient.InferRequestedOutput("text_output")]
        runner = _GrpcRun(client, model, spec, inputs, outputs, dict(opts.headers))
        raws = runner.run()
    finally:
        client.close()
    records = [_record_from_grpc(r) for r in raws]
    return TritonLoadResult("grpc", records, summarize(records, spec), stream_errors=runner.stream_errors, spec=spec)


def _grpc_inputs(grpcclient: Any, info: ModelInfo, fields: Mapping[str, Any]) -> list[Any]:
    import numpy as np

    np_types = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32,
                "UINT64": np.uint64, "UINT32": np.uint32, "FP16": np.float16}
    out = []
    for name, value in fields.items():
        dtype = _NP_TYPES.get(info.inputs[name])
        if dtype is None:
            raise ValueError(f"input {name!r} has type {info.inputs[name]}, which this client does not send")
        data = np.array([value.encode() if isinstance(value, str) else value], dtype=np_types[dtype])
        if info.max_batch_size > 0:
            data = data.reshape(1, 1)
        tensor = grpcclient.InferInput(name, list(data.shape), dtype)
        tensor.set_data_from_numpy(data)
        out.append(tensor)
    return out


class _GrpcRun:
    """Dispatches requests onto one stream from this thread; tritonclient's thread runs `_callback`."""

    def __init__(self, client: Any, model: str, spec: LoadSpec, inputs: list, outputs: list, headers: dict) -> None:
        self.client, self.model, self.spec, self.inputs, self.outputs = client, model, spec, inputs, outputs
        self.headers = headers
        self.raws: dict[str, _Raw] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.in_flight = 0
        self.stopping = False
        self.stream_errors: list[str] = []

    def run(self) -> list[_Raw]:
        spec = self.spec
        self.client.start_stream(callback=self._callback, headers=self.headers or None)
        try:
            for i in range(spec.warmup):
                self._send(_Raw(i, True, None), spec.concurrency or 1)
            self._wait_all()
            start = spec.warmup
            if spec.rate is None:
                deadline = time.monotonic() + spec.duration_s if spec.duration_s else None
                i = 0
                while (spec.requests is not None and i < spec.requests) or (deadline and time.monotonic() < deadline):
                    self._send(_Raw(start + i, False, None), spec.concurrency or 1)
                    i += 1
            else:
                t0 = time.time_ns()
                for i, offset in enumerate(arrival_offsets(spec)):
                    t_sched = t0 + int(offset * 1e9)
                    delay = (t_sched - time.time_ns()) / 1e9
                    if delay > 0:
                        time.sleep(delay)
                    self._send(_Raw(start + i, False, t_sched), spec.concurrency)
            self._wait_all()
        finally:
            with self.lock:
                self.stopping = True
                leftover = self.in_flight > 0  # only an exception leaves requests running
            # a clean stop half-closes the stream and waits for the server to end it
            self.client.stop_stream(cancel_requests=leftover)
        return sorted(self.raws.values(), key=lambda r: r.index)

    def _send(self, raw: _Raw, cap: int | None) -> None:
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

    def _finish_locked(self, raw: _Raw, ts: int | None) -> None:
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

    def _only_in_flight(self) -> _Raw | None:
        pending = [r for r in self.raws.values() if not r.done]
        return pending[0] if len(pending) == 1 else None


def _record_from_grpc(raw: _Raw) -> RequestRecord:
    tokens: list[tuple[int, str]] = []
    for ts, result in raw.events:
        if not hasattr(result, "as_numpy"):
            continue  # an error, already recorded
        names = {o.name for o in result.get_response().outputs}
        if "text_output" in names:
            arr = result.as_numpy("text_output")
            text = b"".join(x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)).decode("utf-8", "replace")
            tokens.append((ts, text))
    if raw.err_kind is None and not raw.done:
        raw.fail("incomplete_stream", "the stream closed before the final response")
    if raw.err_kind is None and not tokens:
        raw.fail("no_tokens", "no response carried text_output")
    return _record(raw, tokens, chunks=len(raw.events))


# ---- shared ---------------------------------------------------------------------------------------

def _record(raw: _Raw, tokens: list[tuple[int, str]], chunks: int) -> RequestRecord:
    times = [t for t, _ in tokens]
    return RequestRecord(
        index=raw.index, warmup=raw.warmup, t_scheduled_ns=raw.t_sched, t_send_ns=raw.t_send,
        t_headers_ns=raw.t_head, t_first_token_ns=times[0] if times else None,
        t_last_token_ns=times[-1] if times else None, t_end_ns=raw.t_end, token_times_ns=tuple(times),
        chunks=chunks, status=raw.status, text="".join(t for _, t in tokens), finish_reason=None,
        prompt_tokens=None, completion_tokens=None, output_tokens=len(tokens), response_id=str(raw.index),
        merged_chunks=sum(1 for i in range(len(times) - 1) if times[i] == times[i + 1]),
        error_kind=raw.err_kind, error_message=raw.err_msg,
    )


def _distinct(spec: LoadSpec) -> int:
    if spec.prompts is not None:
        return len(spec.prompts)
    n = (spec.requests or 0) + spec.warmup
    return max(1, min(n if spec.requests is not None else 4096, 4096))
