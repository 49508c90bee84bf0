"""What the truth server says and when: the script (timings and faults) and the SSE bytes it renders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

ROLE_CHUNK = ("immediate", "with_first", "none")
USAGE = ("requested", "always", "never")
# actions a stream's plan yields: (delay_ns from the request's arrival, kind, payload)
TOKEN, META, PART, END, RESET, CLOSE = "token", "meta", "part", "end", "reset", "close"


@dataclass(frozen=True)
class Script:
    """Timings and faults of a scripted OpenAI-style streaming server (all times in ms)."""

    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    jitter_ms: float = 0.0  # uniform [0, jitter) added to TTFT and to every gap (seeded)
    tokens: int | None = None  # tokens per response regardless of max_tokens (None: max_tokens, default 16)
    role_chunk: str = "immediate"  # chat: role-only first chunk sent with the head, with the first token, or never
    usage: str = "requested"  # usage chunk: when stream_options.include_usage, always, never
    split_frames: bool = False  # write every event in two pieces, 0.5 ms apart (two TCP sends, two HTTP chunks)
    crlf: bool = False  # CRLF line endings in the SSE stream
    comments: bool = False  # an SSE comment line before every event
    done: bool = True  # send `data: [DONE]`
    status: int | None = None  # answer this HTTP status (JSON error body) instead of streaming
    stall_after: int | None = None  # after this many tokens, send nothing more and keep the connection open
    reset_after: int | None = None  # after this many tokens, reset the connection (RST)
    close_after: int | None = None  # after this many tokens, close the connection (FIN) mid-body
    malformed_after: int | None = None  # after this many tokens, send one event whose data is not JSON
    error_after: int | None = None  # after this many tokens, send an error event, then [DONE]
    stall_every: int = 0  # every k-th token waits stall_ms more (ITL spikes)
    stall_ms: float = 0.0
    drop_keepalive: bool = False  # close the connection after each response without saying so (an idle timeout)
    fault_every: int = 0  # apply status/stall/reset/close/malformed/error only to every k-th request (0: all)
    model: str = "truth-model"
    seed: int = 0
    # non-streaming completions as a deterministic greedy "engine" over this many token ids (0: text " t0 t1 ..."):
    # token ids and top-2 logprobs, vLLM-shaped ("token_id:N"); see greedy_tokens
    greedy_vocab: int = 0
    diverge_rate: float = 0.0  # share of prompts (chosen by hash) on which this engine picks another token once
    diverge_seed: int = 0
    # GET /metrics serves vLLM's speculative-decoding counters as if every generated token were one draft
    # step that accepted this many tokens (>= 1); None: no /metrics (404)
    spec_acceptance: float | None = None
    log_prompts: bool = False  # keep each request's prompt in the truth log ("prompt")

    def __post_init__(self) -> None:
        if self.role_chunk not in ROLE_CHUNK:
            raise ValueError(f"role_chunk={self.role_chunk!r}: use one of {', '.join(ROLE_CHUNK)}")
        if self.usage not in USAGE:
            raise ValueError(f"usage={self.usage!r}: use one of {', '.join(USAGE)}")
        if self.ttft_ms < 0 or self.itl_ms < 0 or self.jitter_ms < 0 or self.stall_ms < 0:
            raise ValueError("ttft_ms, itl_ms, jitter_ms and stall_ms must be >= 0")
        if self.greedy_vocab < 0 or self.greedy_vocab == 1 or not 0.0 <= self.diverge_rate <= 1.0:
            raise ValueError("greedy_vocab must be 0 (off) or >= 2 and diverge_rate in [0, 1]")
        if self.spec_acceptance is not None and not self.spec_acceptance >= 1:
            raise ValueError(f"spec_acceptance={self.spec_acceptance}: tokens per draft step, give a number >= 1")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status={self.status}: give an HTTP error status (400-599)")

    def with_overrides(self, overrides: Mapping[str, Any]) -> Script:
        """This script with per-request fields replaced (the request body's `x_truth` object)."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"x_truth: unknown field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)

    @property
    def has_fault(self) -> bool:
        return any(v is not None for v in (self.status, self.stall_after, self.reset_after, self.close_after,
                                           self.malformed_after, self.error_after))

    def without_faults(self) -> Script:
        return dataclasses.replace(self, status=None, stall_after=None, reset_after=None, close_after=None,
                                   malformed_after=None, error_after=None)


@dataclass(frozen=True)
class Request:
    """What the plan needs to know about one request."""

    seq: int
    chat: bool
    max_tokens: int
    include_usage: bool
    prompt_tokens: int
    token_ids: bool = False  # the request asked for return_token_ids: each chunk carries its token's id


def token_id(seq: int, k: int) -> int:
    """The id of token k of request seq: distinct between requests, inside every real vocabulary (10..999)."""
    return 10 + (seq * 131 + k) % 990


def event(payload: bytes, script: Script) -> bytes:
    nl = b"\r\n" if script.crlf else b"\n"
    head = b": truth" + nl if script.comments else b""
    return head + b"data: " + payload + nl + nl


def plan(script: Script, req: Request) -> Iterator[tuple[int, str, bytes]]:
    """The stream of one request as (delay from arrival in ns, action, bytes), in time order."""
    rng = np.random.default_rng([script.seed, req.seq])
    n = script.tokens if script.tokens is not None else req.max_tokens
    rid = b"%s-%d" % (b"chatcmpl" if req.chat else b"cmpl", req.seq)
    model = json.dumps(script.model).encode()
    head = (b'{"id":"%s","object":"%s","created":1700000000,"model":%s,"choices":['
            % (rid, b"chat.completion.chunk" if req.chat else b"text_completion", model))
    ms = 1_000_000

    def jitter() -> float:
        return float(rng.uniform(0.0, script.jitter_ms)) if script.jitter_ms else 0.0

    def token_json(k: int, last: bool) -> bytes:
        finish = (b'"length"' if n == req.max_tokens else b'"stop"') if last else b"null"
        if req.token_ids:
            finish += b',"token_ids":[%d]' % token_id(req.seq, k)
        if req.chat:
            return head + b'{"index":0,"delta":{"content":" t%d"},"logprobs":null,"finish_reason":%s}]}' % (k, finish)
        return head + b'{"index":0,"text":" t%d","logprobs":null,"finish_reason":%s}]}' % (k, finish)

    if req.chat and script.role_chunk == "immediate":
        yield 0, META, event(head + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                                    b'"finish_reason":null}]}', script)
    t = script.ttft_ms + jitter()
    for k in range(n):
        if k:
            t += script.itl_ms + jitter()
            if script.stall_every and k % script.stall_every == 0:
                t += script.stall_ms
        if k == script.stall_after:
            return
        if k == script.reset_after:
            yield int(t * ms), RESET, b""
            return
        if k == script.close_after:
            yield int(t * ms), CLOSE, b""
            return
        if k == script.malformed_after:
            yield int(t * ms), META, event(b'{"choices": [oops, not json', script)
        if k == script.error_after:
            yield int(t * ms), META, event(b'{"error":{"message":"scripted stream error","type":"truth_server",'
                                           b'"code":500}}', script)
            if script.done:
                yield int(t * ms), META, event(b"[DONE]", script)
            yield int(t * ms), END, b""
            return
        if k == 0 and req.chat and script.role_chunk == "with_first":
            yield int(t * ms), META, event(head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                                                  b'"logprobs":null,"finish_reason":null}]}', script)
        data = event(token_json(k, k == n - 1), script)
        if script.split_frames:
            cut = max(1, min(len(data) - 1, int(rng.integers(1, len(data)))))
            yield int(t * ms), PART, data[:cut]
            t += 0.5
            data = data[cut:]
        yield int(t * ms), TOKEN, data
    if script.stall_after is not None and script.stall_after >= n:
        return
    if script.usage == "always" or (script.usage == "requested" and req.include_usage):
        usage = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            req.prompt_tokens, req.prompt_tokens + n, n)
        yield int(t * ms), META, event(head + b'],"usage":' + usage + b"}", script)
    if script.done:
        yield int(t * ms), META, event(b"[DONE]", script)
    yield int(t * ms), END, b""


def full_response(script: Script, req: Request) -> tuple[int, bytes]:
    """Non-streaming answer: (delay in ns, JSON body) with the whole text and usage."""
    n = script.tokens if script.tokens is not None else req.max_tokens
    text = "".join(f" t{k}" for k in range(n))
    finish = "length" if n == req.max_tokens else "stop"
    usage = {"prompt_tokens": req.prompt_tokens, "completion_tokens": n, "total_tokens": req.prompt_tokens + n}
    if req.chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}
        body: dict[str, Any] = {"id": f"chatcmpl-{req.seq}", "object": "chat.completion", "model": script.model,
                "choices": [choice], "usage": usage}
    else:
        body = {"id": f"cmpl-{req.seq}", "object": "text_completion", "model": script.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}], "usage": usage}
    if req.token_ids:
        body["choices"][0]["token_ids"] = [token_id(req.seq, k) for k in range(n)]
    delay_ms = script.ttft_ms + max(0, n - 1) * script.itl_ms
    return int(delay_ms * 1_000_000), json.dumps(body).encode()


def _mix(state: int, tokens: Sequence[int]) -> int:
    data = state.to_bytes(8, "little") + b"".join(int(t).to_bytes(8, "little", signed=True) for t in tokens)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def greedy_tokens(prompt: Sequence[int], n: int, vocab: int, diverge_rate: float = 0.0, diverge_seed: int = 0) -> list[int]:
    """An autoregressive hash "model": each token is a hash of the prompt and the tokens so far, mod vocab.

    With diverge_rate r, a prompt whose hash (under diverge_seed) falls in the lowest r of the range gets
    token+1 at one position (also hash-chosen, uniform over the n); every later token then follows the
    changed prefix, as a real engine's would. Two scripts with the same vocab and r = 0 agree exactly.
    """
    forced = None
    if diverge_rate > 0 and n > 0:
        u = _mix(diverge_seed + 1, prompt)
        if (u & 0xFFFFFFFF) / 2**32 < diverge_rate:
            forced = (u >> 32) % n
    state, out = _mix(0, prompt), []
    for k in range(n):
        token = state % vocab
        if k == forced:
            token = (token + 1) % vocab
        out.append(token)
        state = _mix(state, (token,))
    return out


def greedy_response(script: Script, req: Request, prompt: Any, top_k: int) -> tuple[int, bytes]:
    """Non-streaming completion of the greedy hash model: token ids with top-2 logprobs (chosen, then token+7)."""
    ids = prompt if isinstance(prompt, list) else list(str(prompt or "").encode())
    tokens = greedy_tokens(ids, req.max_tokens, script.greedy_vocab, script.diverge_rate, script.diverge_seed)
    name = lambda t: f"token_id:{t}"  # noqa: E731
    tops = [{name(t): -0.05, name((t + 7) % script.greedy_vocab): -3.0} for t in tokens]
    logprobs = {"tokens": [name(t) for t in tokens], "token_logprobs": [-0.05] * len(tokens),
                "top_logprobs": [dict(list(top.items())[:max(1, top_k)]) for top in tops], "text_offset": []}
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)}
    body = {"id": f"cmpl-{req.seq}", "object": "text_completion", "model": script.model, "usage": usage,
            "choices": [{"index": 0, "text": "".join(f" t{t}" for t in tokens), "finish_reason": "length",
                         "logprobs": logprobs}]}
    delay_ms = script.ttft_ms + max(0, len(tokens) - 1) * script.itl_ms
    return int(delay_ms * 1_000_000), json.dumps(body).encode()
