"""Triton's KServe protocol for the TensorRT-LLM ensemble: what a request sends, how a response is read.

HTTP `POST /v2/models/<m>/generate_stream` takes the request's fields at top level (Triton's generate
extension maps them to the model's input tensors) and answers with SSE `data:` events, each a JSON
object with `text_output` or `{"error": ...}`, which may arrive after a 200. gRPC `ModelStreamInfer`
(tritonclient) takes one tensor per input. Each streamed response is one generation step, so
`output_tokens` counts token-bearing responses (text may be empty for a partial UTF-8 byte sequence);
with speculative decoding a response may carry several tokens and the count is low. Triton reports
no usage: `prompt_tokens`/`completion_tokens` are None and `finish_reason` is None.

Matched work without ignore_eos (TensorRT-LLM has none): `min_tokens` (older ensembles: `min_length`)
= `max_tokens` = output_len, plus an `end_id` no generated token equals (default -1). Only inputs
the served model declares are sent (read from `/v2/models/<m>/config` before the timed window).
The records are the OpenAI client's `RequestRecord`s (same clock: CLOCK_REALTIME ns from
`time.time_ns()`), so `summarize()` and every SLO check work unchanged. The load driver is
triton_client.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .prompts import synthetic_prompt
from .records import RequestRecord
from .spec import LoadSpec

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


class RawRequest:
    """Hot-path state of one request: timestamps and undecoded events (decoded after the run)."""

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


# ---- decoding a request's events into a RequestRecord -----------------------------------------

def record_from_sse(raw: RawRequest) -> RequestRecord:
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



def record_from_grpc(raw: RawRequest) -> RequestRecord:
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



def grpc_inputs(grpcclient: Any, info: ModelInfo, fields: Mapping[str, Any]) -> list[Any]:
    import numpy as np

    np_types = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32,
                "UINT64": np.uint64, "UINT32": np.uint32, "FP16": np.float16}
    out = []
    for name, value in fields.items():
        dtype = _NP_TYPES.get(info.inputs[name])
        if dtype is None:
            raise ValueError(f"input {name!r} has type {info.inputs[name]}, which this client does not send")
        data: np.ndarray = np.array([value.encode() if isinstance(value, str) else value], dtype=np_types[dtype])
        if info.max_batch_size > 0:
            data = data.reshape(1, 1)
        tensor = grpcclient.InferInput(name, list(data.shape), dtype)
        tensor.set_data_from_numpy(data)
        out.append(tensor)
    return out



def _record(raw: RawRequest, tokens: list[tuple[int, str]], chunks: int) -> RequestRecord:
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


def distinct_prompts(spec: LoadSpec) -> int:
    """How many different request bodies a run needs (prompts cycle beyond that)."""
    if spec.prompts is not None:
        return len(spec.prompts)
    n = (spec.requests or 0) + spec.warmup
    return max(1, min(n if spec.requests is not None else 4096, 4096))
