"""A scripted stand-in for Triton serving a TensorRT-LLM ensemble, for contract tests on machines without GPUs.

It speaks the published protocols, not a simplification of them: HTTP/REST KServe v2 health,
model-config and Triton's generate extension (`/v2/models/<m>/generate` and `/generate_stream` as
SSE, errors as `{"error": ...}` events after a 200, per docs/protocol/extension_generate.md), gRPC
`GRPCInferenceService` from tritonclient's own generated `service_pb2_grpc` (ServerLive, ServerReady,
ModelReady, ModelConfig, ModelStreamInfer with decoupled responses, `triton_final_response`), and a
Prometheus endpoint with Triton's `nv_inference_*` and the TensorRT-LLM backend's `nv_trt_llm_*`
families computed from its real state. The "model" is a script: it waits `ttft_s`, then emits one
token every `itl_s`; its natural end-of-sequence token `eos_id` comes at position `natural_len` and
stops generation only when it equals the request's `end_id` and `min_tokens` (or `min_length`) is
reached, as TensorRT-LLM does. At most `max_batch_size` requests generate at once; others wait.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..servers.process import free_port

INPUT_TYPES = {"text_input": "TYPE_STRING", "max_tokens": "TYPE_INT32", "stream": "TYPE_BOOL",
               "end_id": "TYPE_INT32", "exclude_input_in_output": "TYPE_BOOL", "temperature": "TYPE_FP32",
               "bad_words": "TYPE_STRING", "stop_words": "TYPE_STRING"}


@dataclass
class ScriptedModel:
    """What the stand-in ensemble does; timings in seconds."""

    name: str = "ensemble"
    ttft_s: float = 0.02
    itl_s: float = 0.004
    natural_len: int = 3
    eos_id: int = 2
    min_tokens_input: str = "min_tokens"  # "min_length" for ensembles before the rename
    max_batch_size: int = 8
    fail_after_tokens: int | None = None  # send an error after this many tokens (error after HTTP 200)
    empty_final: bool = False  # gRPC: end with a flags-only response instead of flagging the last token
    tokens_per_block: int = 8
    max_blocks: int = 64
    honor_min_tokens: bool = True  # False: a broken deployment that drops min_tokens on the way

    def inputs(self) -> dict[str, str]:
        return {**INPUT_TYPES, self.min_tokens_input: "TYPE_INT32"}

    def config(self) -> dict[str, Any]:
        """Model config as Triton's /config endpoint returns it (protobuf JSON, field names kept)."""
        return {"name": self.name, "platform": "ensemble", "max_batch_size": self.max_batch_size,
                "input": [{"name": n, "data_type": t, "dims": [1] if n not in ("bad_words", "stop_words") else [-1],
                           "optional": n not in ("text_input", "max_tokens")} for n, t in self.inputs().items()],
                "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}]}


class RequestRejected(Exception):
    """A request the real server would refuse before inference (HTTP 400)."""


@dataclass
class _State:
    model: ScriptedModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    success: int = 0
    failure: int = 0
    active: int = 0
    waiting: int = 0
    used_blocks: int = 0
    queue_us: float = 0.0
    completed_tokens: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slots = threading.Semaphore(self.model.max_batch_size)


class KServeTestServer:
    """HTTP, gRPC and metrics endpoints on free ports; use as a context manager."""

    def __init__(self, model: ScriptedModel | None = None) -> None:
        self.model = model or ScriptedModel()
        self.state = _State(self.model)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._grpc: Any = None
        self._ready = threading.Event()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __enter__(self) -> KServeTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_http, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        self._grpc = _start_grpc(self.state, self.grpc_port)

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=0.5).wait()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def _run_http(self) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app, metrics = web.Application(), web.Application()
        async def ok(request: Any) -> Any:
            return web.Response()

        async def metrics_text(request: Any) -> Any:
            return web.Response(text=prometheus_text(self.state), content_type="text/plain")

        app.router.add_get("/v2/health/live", ok)
        app.router.add_get("/v2/health/ready", ok)
        app.router.add_get("/v2/models/{model}/ready", self._model_ready)
        app.router.add_get("/v2/models/{model}/config", self._config)
        app.router.add_post("/v2/models/{model}/generate", self._generate)
        app.router.add_post("/v2/models/{model}/generate_stream", self._generate_stream)
        metrics.router.add_get("/metrics", metrics_text)
        runners = [web.AppRunner(app), web.AppRunner(metrics)]
        for runner in runners:
            loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runners[0], "127.0.0.1", self.http_port).start())
        loop.run_until_complete(web.TCPSite(runners[1], "127.0.0.1", self.metrics_port).start())
        self._ready.set()
        loop.run_forever()
        for runner in runners:
            loop.run_until_complete(runner.cleanup())
        loop.close()

    def _known(self, request: Any) -> bool:
        return request.match_info["model"] == self.model.name

    async def _model_ready(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(status=200 if self._known(request) else 400)

    async def _config(self, request: Any) -> Any:
        from aiohttp import web

        if not self._known(request):
            return web.json_response({"error": f"Request for unknown model: '{request.match_info['model']}' is not found"}, status=400)
        return web.json_response(self.model.config())

    async def _parse(self, request: Any) -> dict[str, Any]:
        if not self._known(request):
            raise RequestRejected(f"Request for unknown model: '{request.match_info['model']}' is not found")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise RequestRejected(f"failed to parse the request JSON buffer: {exc}") from None
        params = body.pop("parameters", {}) if isinstance(body.get("parameters"), dict) else {}
        return validate_inputs(self.model, {**params, **body})

    async def _generate(self, request: Any) -> Any:
        from aiohttp import web

        try:
            fields = await self._parse(request)
        except RequestRejected as exc:
            return web.json_response({"error": str(exc)}, status=400)
        text = "".join([piece async for piece in _agen(self.state, fields) if isinstance(piece, str)])
        return web.json_response({"model_name": self.model.name, "model_version": "1", "text_output": text})

    async def _generate_stream(self, request: Any) -> Any:
        from aiohttp import web

        try:
            fields = await self._parse(request)
        except RequestRejected as exc:
            return web.json_response({"error": str(exc)}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        async for piece in _agen(self.state, fields):
            event = ({"error": piece.args[0]} if isinstance(piece, Exception)
                     else {"model_name": self.model.name, "model_version": "1", "text_output": piece})
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write_eof()
        return resp


def validate_inputs(model: ScriptedModel, fields: dict[str, Any]) -> dict[str, Any]:
    """Reject what Triton rejects: undeclared inputs, missing required ones."""
    declared = model.inputs()
    for name in fields:
        if name not in declared:
            raise RequestRejected(f"unexpected inference input '{name}' for model '{model.name}'")
    for name in ("text_input", "max_tokens"):
        if name not in fields:
            raise RequestRejected(f"expected {len(declared)} inputs but got {len(fields)} inputs for model "
                                  f"'{model.name}'. Got input(s) {sorted(fields)}, but missing required input(s) ['{name}']")
    return fields


def _plan(model: ScriptedModel, fields: dict[str, Any]) -> int:
    """How many tokens the script emits for this request (TensorRT-LLM's stop rule)."""
    max_tokens = int(fields["max_tokens"])
    min_tokens = int(fields.get(model.min_tokens_input, 0) or 0) if model.honor_min_tokens else 0
    end_id = int(fields.get("end_id", model.eos_id))
    if end_id == model.eos_id and model.natural_len < max_tokens:
        return max(model.natural_len, min(min_tokens, max_tokens))
    return max_tokens


def _tokens(model: ScriptedModel, fields: dict[str, Any]) -> Iterator[tuple[float, str | Exception]]:
    """(delay before it, piece): text pieces, or an Exception for a mid-stream error."""
    n = _plan(model, fields)
    for i in range(n):
        if model.fail_after_tokens is not None and i == model.fail_after_tokens:
            yield 0.0, RuntimeError(f"Encountered an error in forward pass: scripted failure after {i} tokens")
            return
        yield (model.ttft_s if i == 0 else model.itl_s), f" t{i}"


def _admit(state: _State, fields: dict[str, Any]) -> float:
    """Wait for a batch slot (counted as waiting); returns queue time in microseconds."""
    t0 = time.monotonic()
    with state.lock:
        state.waiting += 1
        state.requests.append(dict(fields))
    state.slots.acquire()
    waited = (time.monotonic() - t0) * 1e6
    with state.lock:
        state.waiting -= 1
        state.active += 1
        state.queue_us += waited
    return waited


def _release(state: _State, ok: bool, blocks: int, tokens: int) -> None:
    with state.lock:
        state.active -= 1
        state.used_blocks -= blocks
        state.completed_tokens += tokens
        if ok:
            state.success += 1
        else:
            state.failure += 1
    state.slots.release()


def _blocks(state: _State, prompt: str, generated: int) -> int:
    return math.ceil((len(prompt.split()) + generated) / state.model.tokens_per_block)


def _run_sync(state: _State, fields: dict[str, Any]) -> Iterator[str | Exception]:
    """Thread-side generation (gRPC): sleeps are real, bookkeeping feeds the metrics."""
    _admit(state, fields)
    blocks, ok, count = 0, True, 0
    try:
        for delay, piece in _tokens(state.model, fields):
            time.sleep(delay)
            if isinstance(piece, Exception):
                ok = False
                yield piece
                return
            count += 1
            new = _blocks(state, str(fields["text_input"]), count)
            with state.lock:
                state.used_blocks += new - blocks
            blocks = new
            yield piece
    finally:
        _release(state, ok, blocks, count)


async def _agen(state: _State, fields: dict[str, Any]) -> Any:
    """Event-loop-side generation (HTTP): the slot wait runs in a thread so the loop keeps serving."""
    await asyncio.to_thread(_admit, state, fields)
    blocks, ok, count = 0, True, 0
    try:
        for delay, piece in _tokens(state.model, fields):
            await asyncio.sleep(delay)
            if isinstance(piece, Exception):
                ok = False
                yield piece
                return
            count += 1
            new = _blocks(state, str(fields["text_input"]), count)
            with state.lock:
                state.used_blocks += new - blocks
            blocks = new
            yield piece
    finally:
        _release(state, ok, blocks, count)


def prometheus_text(state: _State) -> str:
    """Triton core and TensorRT-LLM backend metric families, in Prometheus text format."""
    m = state.model
    with state.lock:
        s, f, a, w, used, q = state.success, state.failure, state.active, state.waiting, state.used_blocks, state.queue_us
    ens = f'model="{m.name}",version="1"'
    trt = 'model="tensorrt_llm",version="1"'
    lines = [
        "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes",
        "# TYPE nv_inference_request_success counter",
        f"nv_inference_request_success{{{ens}}} {s}",
        "# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes",
        "# TYPE nv_inference_request_failure counter",
        f'nv_inference_request_failure{{{ens},reason="BACKEND"}} {f}',
        "# HELP nv_inference_count Number of inferences performed (does not include cached requests)",
        "# TYPE nv_inference_count counter",
        f"nv_inference_count{{{ens}}} {s + f}",
        "# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds",
        "# TYPE nv_inference_queue_duration_us counter",
        f"nv_inference_queue_duration_us{{{ens}}} {q:.0f}",
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.",
        "# TYPE nv_inference_pending_request_count gauge",
        f"nv_inference_pending_request_count{{{ens}}} {w}",
        "# HELP nv_trt_llm_request_metrics TRT LLM request metrics",
        "# TYPE nv_trt_llm_request_metrics gauge",
    ]
    for kind, value in (("context", 0), ("scheduled", a), ("max", m.max_batch_size), ("active", a), ("waiting", w)):
        lines.append(f'nv_trt_llm_request_metrics{{{trt},request_type="{kind}"}} {value}')
    lines += ["# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics",
              "# TYPE nv_trt_llm_kv_cache_block_metrics gauge"]
    for kind, blocks in (("max", m.max_blocks), ("free", m.max_blocks - used), ("used", used),
                         ("tokens_per", m.tokens_per_block), ("fraction", used / m.max_blocks)):
        lines.append(f'nv_trt_llm_kv_cache_block_metrics{{{trt},kv_cache_block_type="{kind}"}} {blocks}')
    return "\n".join(lines) + "\n"


# ---- gRPC ----------------------------------------------------------------------------------------

def _start_grpc(state: _State, port: int) -> Any:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    # the generated base class answers UNIMPLEMENTED for every RPC we do not override
    servicer = type("Servicer", (_Servicer, service_pb2_grpc.GRPCInferenceServiceServicer), {})(state)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def _decode_inputs(request: Any) -> dict[str, Any]:
    from tritonclient.utils import deserialize_bytes_tensor

    np_types = {"INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32, "UINT64": np.uint64}
    out: dict[str, Any] = {}
    for i, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[i]
        if tensor.datatype == "BYTES":
            value = deserialize_bytes_tensor(raw).reshape(-1)[0]
            out[tensor.name] = value.decode() if isinstance(value, bytes) else str(value)
        else:
            out[tensor.name] = np.frombuffer(raw, dtype=np_types[tensor.datatype]).reshape(-1)[0].item()
    return out


class _Servicer:
    """The RPCs we serve, mixed into tritonclient's generated GRPCInferenceServiceServicer."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def ServerLive(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2

        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2

        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2

        return service_pb2.ModelReadyResponse(ready=request.name == self.state.model.name)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        import grpc
        from google.protobuf import json_format
        from tritonclient.grpc import model_config_pb2, service_pb2

        if request.name != self.state.model.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        config = json_format.ParseDict(self.state.model.config(), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        """Decoupled: every request runs in its own thread; responses interleave on the stream."""
        out: queue.Queue = queue.Queue()
        pending = [0]
        lock = threading.Lock()
        reader_done = threading.Event()

        def serve(request: Any) -> None:
            try:
                for response in self._responses(request):
                    out.put(response)
            finally:
                with lock:
                    pending[0] -= 1
                out.put(None)

        def read() -> None:
            try:
                for request in request_iterator:
                    with lock:
                        pending[0] += 1
                    threading.Thread(target=serve, args=(request,), daemon=True).start()
            except Exception:  # noqa: BLE001 - the client cancelled the stream: nothing more to read
                pass
            finally:
                reader_done.set()
                out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            item = out.get()
            if item is not None:
                yield item
                continue
            with lock:
                finished = reader_done.is_set() and pending[0] == 0
            if finished and out.empty():
                return

    def _responses(self, request: Any) -> Iterator[Any]:
        from tritonclient.grpc import service_pb2

        model = self.state.model
        try:
            if request.model_name != model.name:
                raise RequestRejected(f"Request for unknown model: '{request.model_name}' is not found")
            fields = validate_inputs(model, _decode_inputs(request))
        except RequestRejected as exc:
            yield service_pb2.ModelStreamInferResponse(
                error_message=str(exc), infer_response=service_pb2.ModelInferResponse(id=request.id))
            return
        flag_final = request.parameters["triton_enable_empty_final_response"].bool_param
        n = _plan(model, fields)  # known up front, so the last token can carry the final flag as it is sent
        for i, piece in enumerate(_run_sync(self.state, fields)):
            if isinstance(piece, Exception):
                yield service_pb2.ModelStreamInferResponse(
                    error_message=str(piece), infer_response=service_pb2.ModelInferResponse(id=request.id))
                return
            last = i == n - 1 and not model.empty_final
            yield service_pb2.ModelStreamInferResponse(
                infer_response=_text_response(request, model.name, piece, flag_final, last))
        if model.empty_final and flag_final:
            final = service_pb2.ModelInferResponse(model_name=model.name, model_version="1", id=request.id)
            final.parameters["triton_final_response"].bool_param = True
            yield service_pb2.ModelStreamInferResponse(infer_response=final)


def _text_response(request: Any, model_name: str, text: str, flag_final: bool, last: bool) -> Any:
    """One decoupled response carrying `text_output` as a [1, 1] BYTES tensor in raw_output_contents."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    resp = service_pb2.ModelInferResponse(model_name=model_name, model_version="1", id=request.id)
    out = resp.outputs.add()
    out.name, out.datatype = "text_output", "BYTES"
    out.shape.extend([1, 1])
    resp.raw_output_contents.append(serialize_byte_tensor(np.array([[text.encode()]], dtype=np.object_)).item())
    if flag_final:
        resp.parameters["triton_final_response"].bool_param = last
    return resp
