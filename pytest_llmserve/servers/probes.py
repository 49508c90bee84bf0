"""Readiness probes over plain HTTP (control plane: httpx, short timeouts)."""

from __future__ import annotations

import httpcore
import httpx

from .base import Probe

PROBE_TIMEOUT_S = 10.0
# What a server that is not up yet can make a control-plane call raise: httpx's own errors, and the
# transport's (httpcore) or the socket's when they get past httpx's mapping, as one run of the suite saw
# ("httpcore.ConnectError: connection refused" escaping a readiness probe). A probe reports them all.
NOT_READY_ERRORS = (httpx.HTTPError, OSError, httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError)


def http_ok(path: str) -> Probe:
    """Ready when GET `path` answers 200."""

    def check(base_url: str) -> str | None:
        try:
            response = httpx.get(base_url + path, timeout=PROBE_TIMEOUT_S)
        except NOT_READY_ERRORS as exc:
            return f"GET {path}: {type(exc).__name__}"
        return None if response.status_code == 200 else f"GET {path}: HTTP {response.status_code}"

    return Probe(f"GET {path}", check)


def completion_ok(model: str) -> Probe:
    """Ready when a one-token completion succeeds: health alone does not prove the model serves."""

    def check(base_url: str) -> str | None:
        body = {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        try:
            response = httpx.post(base_url + "/v1/completions", json=body, timeout=60.0)
        except NOT_READY_ERRORS as exc:
            return f"POST /v1/completions: {type(exc).__name__}"
        if response.status_code != 200:
            return f"POST /v1/completions: HTTP {response.status_code}: {response.text[:200]}"
        return None

    return Probe("one real completion", check)


def served_models(base_url: str) -> list[str]:
    """Model ids listed by GET /v1/models."""
    response = httpx.get(base_url + "/v1/models", timeout=PROBE_TIMEOUT_S)
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]
