"""Ask an OpenAI-compatible server for greedy tokens and top-k logprobs, prompts sent as token ids.

Control plane, not load: one non-streaming /v1/completions request per prompt over httpx, a few
in flight. The request pins everything that could make the server's greedy path differ from the
reference's: `prompt` is a list of token ids (so tokenizers cannot differ), `temperature` 0,
`repetition_penalty` 1 and `top_p` 1 explicitly (vLLM otherwise takes defaults from the model's
generation_config.json), `ignore_eos` so every sequence runs to `max_tokens`, and
`return_tokens_as_token_ids` so tokens come back as "token_id:123" instead of text that may not
round-trip. `min_tokens` is deliberately not sent: vLLM implements it by masking EOS, which would
change the greedy choice wherever EOS is the argmax, while the reference keeps EOS.

Response (vLLM 0.32, checked against the real server): `choices[0].logprobs` holds `tokens`
["token_id:N", ...], `token_logprobs` [float, ...] and `top_logprobs` [{"token_id:N": logprob},
...], each top dict holding the chosen token plus the top-k (so k or k+1 entries); -inf is
clamped to -9999.0.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import httpx

from ..checks.equivalence import Continuation

DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 300.0
TOKEN_PREFIX = "token_id:"


class ServerLogprobsError(Exception):
    """The server refused the request or answered in a shape this client cannot read."""


def completion_body(model: str, prompt: Sequence[int], max_tokens: int, top_k: int) -> dict[str, Any]:
    """The /v1/completions request for one greedy continuation with top-k logprobs."""
    return {
        "model": model,
        "prompt": [int(t) for t in prompt],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "n": 1,
        "stream": False,
        "logprobs": top_k,
        "ignore_eos": True,
        "return_tokens_as_token_ids": True,
    }


def parse_token(token: str) -> int:
    """'token_id:123' -> 123; anything else means the server ignored return_tokens_as_token_ids."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        raise ServerLogprobsError(
            f"token {token!r} is not of the form 'token_id:N': the server ignored return_tokens_as_token_ids "
            "(vLLM supports it; for other servers start them with token-id output or use a vLLM target)"
        )
    try:
        return int(token[len(TOKEN_PREFIX):])
    except ValueError:
        raise ServerLogprobsError(f"token {token!r}: the id after 'token_id:' is not an integer") from None


def parse_choice(choice: Mapping[str, Any]) -> Continuation:
    """One `choices[i]` of a completion response -> Continuation (chosen token always in its top dict)."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping) or not isinstance(logprobs.get("tokens"), list):
        raise ServerLogprobsError(f"response choice has no logprobs.tokens (got {str(choice)[:300]}); "
                                  "the server must support the `logprobs` field of /v1/completions")
    tokens = [parse_token(t) for t in logprobs["tokens"]]
    chosen = logprobs.get("token_logprobs") or [None] * len(tokens)
    tops = logprobs.get("top_logprobs") or []
    if len(tops) != len(tokens) or len(chosen) != len(tokens):
        raise ServerLogprobsError(f"{len(tokens)} tokens but {len(tops)} top_logprobs and {len(chosen)} token_logprobs")
    steps = []
    for token, lp, top in zip(tokens, chosen, tops):
        if not isinstance(top, Mapping):
            raise ServerLogprobsError(f"top_logprobs entry {top!r} is not a mapping of token to logprob")
        step = {parse_token(k): float(v) for k, v in top.items()}
        if lp is not None:
            step[token] = float(lp)
        steps.append(step)
    return Continuation(tokens=tuple(tokens), top_logprobs=tuple(steps))


def fetch_greedy(base_url: str, model: str, prompts: Sequence[Sequence[int]], *, max_tokens: int, top_k: int,
                 concurrency: int = DEFAULT_CONCURRENCY, timeout_s: float = DEFAULT_TIMEOUT_S,
                 client: httpx.Client | None = None) -> list[Continuation]:
    """Greedy continuations with top-k logprobs for every prompt (token-id lists), in prompt order."""
    return fetch_greedy_until(base_url, model, prompts, max_tokens=max_tokens, top_k=top_k, concurrency=concurrency,
                              timeout_s=timeout_s, client=client)


def fetch_greedy_until(base_url: str, model: str, prompts: Sequence[Sequence[int]], *, max_tokens: int, top_k: int,
                       deadline: float | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                       timeout_s: float = DEFAULT_TIMEOUT_S, client: httpx.Client | None = None) -> list[Continuation]:
    """Like fetch_greedy, but no prompt is sent after `deadline` (a time.monotonic() value): returns the
    continuations of the prompts sent, always a prefix of `prompts` (each worker takes the next index
    in order, and every taken prompt is answered). The first failed request stops all workers."""
    own = client is None
    http = client or httpx.Client(base_url=base_url, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=max(1, concurrency)))
    out: list[Continuation | None] = [None] * len(prompts)
    taken = itertools.count()
    errors: list[tuple[int, ServerLogprobsError]] = []

    def one(index: int) -> Continuation:
        body = completion_body(model, prompts[index], max_tokens, top_k)
        try:
            response = http.post(f"{base_url.rstrip('/')}/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise ServerLogprobsError(f"prompt {index}: POST /v1/completions failed: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise ServerLogprobsError(f"prompt {index}: HTTP {response.status_code}: {response.text[:400]}"
                                      + _hint(response.text))
        try:
            choices = response.json()["choices"]
            return parse_choice(choices[0])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServerLogprobsError(f"prompt {index}: unreadable response ({exc!r}): {response.text[:400]}") from None

    def worker() -> None:
        while not errors and (deadline is None or time.monotonic() < deadline):
            index = next(taken)
            if index >= len(prompts):
                return
            try:
                out[index] = one(index)
            except ServerLogprobsError as exc:
                errors.append((index, exc))
                return

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for future in [pool.submit(worker) for _ in range(max(1, min(concurrency, len(prompts))))]:
                future.result()
    finally:
        if own:
            http.close()
    if errors:
        raise min(errors, key=lambda e: e[0])[1]  # the lowest prompt's error
    done = next((i for i, c in enumerate(out) if c is None), len(out))
    return [c for c in out[:done] if c is not None]


def _hint(body: str) -> str:
    """What to change when the server rejects the request for a known reason."""
    text = body.lower()
    if "logprobs" in text and ("max" in text or "exceed" in text):
        return " -- lower options.equivalence.top_k or raise the server's --max-logprobs"
    if "maximum context length" in text or "max_model_len" in text or "too long" in text:
        return " -- the prompt plus max_tokens exceeds the server's maximum length; lower options.equivalence.max_tokens"
    return ""
