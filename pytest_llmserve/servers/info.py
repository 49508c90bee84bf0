"""Control-plane questions to a running OpenAI-compatible server: its max_model_len, and a prefix-cache reset.

vLLM lists `max_model_len` in `GET /v1/models`; it offers `POST /reset_prefix_cache` only in its dev
mode (`VLLM_SERVER_DEV_MODE=1`; checked on the CPU vLLM 0.32: 200 `{"success":true}` and the log line
"Successfully reset prefix cache"). trtllm-serve has no such route. Without a reset a warm cache from
earlier runs may inflate the numbers (vLLM issue #52884: up to 86 % more throughput), so the caller
says so next to the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx


def _root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def max_model_len(base_url: str, model: str | None = None, timeout_s: float = 10.0) -> int | None:
    """The served model's context length from `GET /v1/models` (vLLM's `max_model_len`), or None."""
    try:
        resp = httpx.get(f"{_root(base_url)}/v1/models", timeout=timeout_s)
        resp.raise_for_status()
        cards = resp.json().get("data", [])
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    for card in cards:
        if isinstance(card, dict) and (model is None or card.get("id") == model):
            value = card.get("max_model_len")
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
    return None


@dataclass(frozen=True)
class CacheReset:
    """What happened when asked to empty the server's prefix cache before a measured run."""

    done: bool
    line: str  # for the verdict's context: what was done, or the warning


def reset_prefix_cache(base_url: str, timeout_s: float = 5.0) -> CacheReset:
    """POST /reset_prefix_cache; when the server does not offer it, a warning instead."""
    url = f"{_root(base_url)}/reset_prefix_cache"
    try:
        resp = httpx.post(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return CacheReset(False, f"WARNING: prefix cache not reset ({type(exc).__name__}: {exc}); a warm cache "
                                 "from earlier runs may inflate these numbers")
    if resp.status_code == 200:
        return CacheReset(True, "prefix cache reset before the run (POST /reset_prefix_cache)")
    hint = (" (vLLM offers it with VLLM_SERVER_DEV_MODE=1 in the target's env)"
            if resp.status_code in (404, 405) else f" (HTTP {resp.status_code}: {resp.text[:120]})")
    return CacheReset(False, f"WARNING: prefix cache not reset: the server has no /reset_prefix_cache{hint}; "
                             "a warm cache from earlier runs may inflate these numbers")
