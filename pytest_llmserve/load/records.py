"""Per-request records: raw hot-path state (timestamps + undecoded SSE payloads) and its decoded form.

All timestamps are CLOCK_REALTIME nanoseconds (`time.time_ns()`, and the kernel's SO_TIMESTAMPNS
arrival times, which use the same clock). JSON is parsed only here, after the measured window.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

NS_PER_MS = 1_000_000


class RawRequest:
    """Mutable hot-path state of one request; only appends and assignments while it streams."""

    __slots__ = ("index", "warmup", "t_sched", "t_send", "t_head", "t_end", "t_rx", "status",
                 "ev_ts", "ev_data", "err_body", "err_kind", "err_msg", "retried")

    def __init__(self, index: int, warmup: bool, t_sched: int | None) -> None:
        self.index = index
        self.warmup = warmup
        self.t_sched = t_sched
        self.t_send: int | None = None
        self.t_head: int | None = None
        self.t_end: int | None = None
        self.t_rx = 0  # time of the last bytes received (stall detection)
        self.status: int | None = None
        self.ev_ts: list[int] = []
        self.ev_data: list[bytes] = []
        self.err_body: list[bytes] = []
        self.err_kind: str | None = None
        self.err_msg: str | None = None
        self.retried = False  # sent again once after a reused connection turned out closed

    def fail(self, kind: str, message: str) -> None:
        if self.err_kind is None:  # the first failure is the cause; later ones are consequences
            self.err_kind = kind
            self.err_msg = message


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as measured: raw timestamps (ns), decoded text and counts, error if any."""

    index: int
    warmup: bool
    t_scheduled_ns: int | None  # open loop: when the schedule said to send
    t_send_ns: int | None  # just before the request bytes went to the kernel
    t_headers_ns: int | None  # arrival of the response head
    t_first_token_ns: int | None  # arrival of the first chunk with non-empty text (not role-only)
    t_last_token_ns: int | None
    t_end_ns: int | None  # arrival of the end of the response body
    token_times_ns: tuple[int, ...]  # arrival of every token-bearing chunk
    chunks: int  # SSE events received, including role-only, usage and [DONE]
    status: int | None
    text: str
    finish_reason: str | None
    prompt_tokens: int | None  # usage.prompt_tokens
    completion_tokens: int | None  # usage.completion_tokens (None when the server sent no usage)
    output_tokens: int  # completion_tokens, else the number of token-bearing chunks
    response_id: str | None
    merged_chunks: int  # token chunks that arrived in the same read as the next token chunk
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def ttft_ms(self) -> float | None:
        if self.t_first_token_ns is None or self.t_send_ns is None:
            return None
        return (self.t_first_token_ns - self.t_send_ns) / NS_PER_MS

    @property
    def e2e_ms(self) -> float | None:
        if self.t_last_token_ns is None or self.t_send_ns is None:
            return None
        return (self.t_last_token_ns - self.t_send_ns) / NS_PER_MS

    @property
    def itl_ms(self) -> list[float]:
        t = self.token_times_ns
        return [(t[i + 1] - t[i]) / NS_PER_MS for i in range(len(t) - 1)]

    @property
    def tpot_ms(self) -> float | None:
        """(E2E - TTFT) / (N - 1) with N the decoded token count; None for one-token outputs."""
        first, last = self.t_first_token_ns, self.t_last_token_ns
        if self.output_tokens < 2 or len(self.token_times_ns) < 2:  # one chunk (non-streaming): no TPOT
            return None
        if first is None or last is None:  # not with token times; for the type checker
            return None
        return (last - first) / NS_PER_MS / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__} | {
            "token_times_ns": list(self.token_times_ns)}


def decode(raw: RawRequest, stream: bool = True) -> RequestRecord:
    """Parse the raw SSE payloads of one request and classify it (after the measured window).

    `stream=False`: the payloads are fragments of one JSON body; it counts as one chunk arriving with
    its last fragment (TTFT = E2E = the whole answer's arrival).
    """
    kind, msg = raw.err_kind, raw.err_msg
    if kind is None and raw.status is not None and raw.status != 200:
        body = b"".join(raw.err_body).decode("utf-8", "replace").strip()
        kind, msg = f"http_{raw.status}", body[:500] or f"HTTP {raw.status} with an empty body"
    texts: list[str] = []
    token_ts: list[int] = []
    finish = usage = rid = None
    done = False
    events: Iterator[tuple[int, bytes]] = zip(raw.ev_ts, raw.ev_data)
    if not stream:
        events = iter([(raw.ev_ts[-1], b"".join(raw.ev_data))] if raw.ev_data else [])
        done = bool(raw.ev_data)
    for ts, payload in events:
        if payload == b"[DONE]":
            done = True
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            if kind is None:
                kind, msg = "malformed_sse", f"event data is not a JSON object: {payload[:200]!r}"
            continue
        if "error" in obj or obj.get("object") == "error":
            if kind is None:
                err = obj.get("error", obj)
                kind, msg = "stream_error", str(err.get("message", err) if isinstance(err, dict) else err)[:500]
            continue
        rid = rid or obj.get("id")
        if isinstance(obj.get("usage"), dict):
            usage = obj["usage"]
        bearing = False
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            piece = choice.get("text")
            delta = choice.get("delta") if stream else choice.get("message")
            if isinstance(delta, dict):
                piece = delta.get("content")
                # reasoning and tool-call deltas are generated tokens too (first token = first output)
                if delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"):
                    bearing = True
            if piece:
                texts.append(piece)
                bearing = True
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        if bearing:
            token_ts.append(ts)
    completion = _int_or_none(usage, "completion_tokens")
    if kind is None and raw.status == 200:
        if not token_ts:
            kind, msg = "no_tokens", "the stream ended without any chunk carrying text"
        elif not done and finish is None:
            kind, msg = "incomplete_stream", "the stream ended without a finish_reason or [DONE]"
    merged = sum(1 for i in range(len(token_ts) - 1) if token_ts[i] == token_ts[i + 1])
    return RequestRecord(
        index=raw.index, warmup=raw.warmup, t_scheduled_ns=raw.t_sched, t_send_ns=raw.t_send,
        t_headers_ns=raw.t_head, t_first_token_ns=token_ts[0] if token_ts else None,
        t_last_token_ns=token_ts[-1] if token_ts else None, t_end_ns=raw.t_end,
        token_times_ns=tuple(token_ts), chunks=len(raw.ev_data), status=raw.status, text="".join(texts),
        finish_reason=finish, prompt_tokens=_int_or_none(usage, "prompt_tokens"), completion_tokens=completion,
        output_tokens=completion if completion is not None else len(token_ts), response_id=rid,
        merged_chunks=merged, error_kind=kind, error_message=msg,
    )


def _int_or_none(d: Any, key: str) -> int | None:
    if not isinstance(d, dict):
        return None
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None
