"""Readiness probes report a not-ready server as a reason, whatever the transport raises."""

from __future__ import annotations

import socket

import httpcore
import httpx
import pytest

from pytest_llmserve.servers import probes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_of_a_port_nobody_listens_on_is_a_reason_not_an_exception():
    url = f"http://127.0.0.1:{_closed_port()}"
    assert probes.http_ok("/health").check(url) == "GET /health: ConnectError"
    assert probes.completion_ok("m").check(url) == "POST /v1/completions: ConnectError"


@pytest.mark.parametrize("error", [httpcore.ConnectError("[Errno 111] Connection refused"),
                                   ConnectionResetError(104, "reset"), httpx.ReadTimeout("slow")])
def test_transport_errors_that_escape_httpx_are_reasons_too(monkeypatch, error):
    def raising(*args, **kwargs):
        raise error

    monkeypatch.setattr(probes.httpx, "get", raising)
    monkeypatch.setattr(probes.httpx, "post", raising)
    assert probes.http_ok("/health").check("http://x") == f"GET /health: {type(error).__name__}"
    assert probes.completion_ok("m").check("http://x") == f"POST /v1/completions: {type(error).__name__}"


def test_a_programming_error_in_a_probe_is_not_swallowed(monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("bad call")

    monkeypatch.setattr(probes.httpx, "get", broken)
    with pytest.raises(TypeError):
        probes.http_ok("/health").check("http://x")
