"""Errors are counted by kind, never dropped; percentiles cover successful requests only."""

from __future__ import annotations

import pytest

from pytest_llmserve.load import ClientOptions, LoadSpec, run_load
from pytest_llmserve.testing.truth_script import Script
from pytest_llmserve.testing.truth_server import TruthServer

PARSERS = ["httptools", "h11"]


def run(script: Script, parser: str = "httptools", **spec_kw) -> tuple:
    kw = dict(concurrency=2, requests=6, warmup=0, output_len=4, request_timeout_s=10.0) | spec_kw
    with TruthServer(script) as srv:
        result = run_load(srv.url, "truth-model", LoadSpec(**kw), options=ClientOptions(http_parser=parser))
        truth = srv.truth()
    return result, truth


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("status", [500, 429, 503])
def test_http_error_statuses_are_counted_as_http_status(status: int, parser: str) -> None:
    # the truth server numbers requests from 1; fault_every=2 fails requests 2, 4, 6
    result, truth = run(Script(ttft_ms=2, itl_ms=1, status=status, fault_every=2), parser)
    s = result.summary
    assert s.errors == {f"http_{status}": 3}
    assert s.requests == 6 and s.completed == 3 and s.error_rate == pytest.approx(0.5)
    assert s.ttft_ms.n == 3  # percentiles over the successful half only
    failed = [r for r in result.records if not r.ok]
    assert all(r.status == status and "scripted HTTP" in r.error_message for r in failed)
    assert result.metrics()["error_rate"] == pytest.approx(0.5)
    assert len(truth) == 6


@pytest.mark.parametrize("parser", PARSERS)
def test_every_request_failing_invalidates_the_run_and_names_the_error(parser: str) -> None:
    result, _ = run(Script(status=503), parser, requests=3)
    assert not result.valid
    assert result.summary.errors == {"http_503": 3}
    assert any("all 3 requests failed" in r and "http_503" in r for r in result.invalid_reasons)
    assert result.summary.ttft_ms.n == 0


@pytest.mark.parametrize("parser", PARSERS)
def test_malformed_sse_event_is_an_error(parser: str) -> None:
    result, _ = run(Script(ttft_ms=2, itl_ms=1, malformed_after=2), parser, requests=2)
    assert result.summary.errors == {"malformed_sse": 2}
    assert all("not a JSON object" in r.error_message for r in result.records)


@pytest.mark.parametrize("parser", PARSERS)
def test_connection_reset_mid_stream_is_an_error_and_the_run_continues(parser: str) -> None:
    result, truth = run(Script(ttft_ms=2, itl_ms=1, reset_after=2, fault_every=3), parser)
    s = result.summary
    assert s.errors == {"connection_reset": 2}  # requests 3 and 6 of 6
    assert s.completed == 4
    assert result.client_check.reconnects >= 2


@pytest.mark.parametrize("parser", PARSERS)
def test_connection_closed_mid_body_is_an_error(parser: str) -> None:
    result, _ = run(Script(ttft_ms=2, itl_ms=1, close_after=1), parser, requests=2, concurrency=1)
    assert result.summary.errors == {"connection_closed": 2}


@pytest.mark.parametrize("parser", PARSERS)
def test_stall_longer_than_the_timeout_is_a_timeout(parser: str) -> None:
    result, _ = run(Script(ttft_ms=2, itl_ms=1, stall_after=2, fault_every=2), parser,
                    requests=4, request_timeout_s=0.3)
    assert result.summary.errors == {"timeout": 2}
    timed_out = [r for r in result.records if r.error_kind == "timeout"]
    assert all("request_timeout_s=0.3" in r.error_message for r in timed_out)
    assert result.summary.completed == 2


def test_error_event_inside_a_200_stream_is_a_stream_error() -> None:
    result, _ = run(Script(ttft_ms=2, itl_ms=1, error_after=1), requests=2)
    assert result.summary.errors == {"stream_error": 2}
    assert all(r.error_message == "scripted stream error" for r in result.records)


def test_stream_without_finish_or_done_is_incomplete() -> None:
    result, _ = run(Script(ttft_ms=2, itl_ms=1, done=False, tokens=3), requests=2, output_len=4)
    # the last token carries finish_reason, so missing [DONE] alone is accepted ...
    assert result.summary.errors == {}
    result, _ = run(Script(ttft_ms=2, itl_ms=1, done=False, stall_after=3), requests=1, request_timeout_s=0.3)
    assert result.summary.errors == {"timeout": 1}  # ... a stream that just stops is not


def test_unreachable_server_raises_a_clear_error() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with pytest.raises(ConnectionError, match="is the server running"):
        run_load(f"http://127.0.0.1:{port}", "m", LoadSpec(requests=1))


@pytest.mark.parametrize("parser", PARSERS)
def test_a_keepalive_connection_the_server_closed_is_retried_once_not_counted(parser: str) -> None:
    # the server closes every connection after its response without saying so (an idle timeout):
    # the next request sent on it fails before any response byte and is sent again on a new connection
    result, truth = run(Script(ttft_ms=2, itl_ms=1, drop_keepalive=True), parser, concurrency=1, requests=4)
    assert result.summary.errors == {} and result.summary.completed == 4
    assert len(truth) == 4 and result.client_check.reconnects >= 3


@pytest.mark.parametrize("drop_keepalive", [False, True])  # True: every request goes through the resend path
def test_a_server_that_dies_mid_run_fails_the_unsent_rest_at_once_and_invalidates_the_run(drop_keepalive) -> None:
    import threading
    import time

    spec = LoadSpec(concurrency=1, requests=3000, warmup=0, output_len=2, request_timeout_s=5.0)
    srv = TruthServer(Script(ttft_ms=1, itl_ms=1, drop_keepalive=drop_keepalive))
    srv.start()

    def stop_after_some_requests() -> None:  # by count, not time: a busy machine may be slow to start the client
        while len(srv.truth()) < 20:
            time.sleep(0.005)
        srv.stop()

    threading.Thread(target=stop_after_some_requests, daemon=True).start()
    result = run_load(srv.url, "truth-model", spec, options=ClientOptions(give_up_unreachable_s=0.3))
    unsent = [r for r in result.records if r.error_message and r.error_message.startswith("not sent:")]
    # without giving up, each of the ~2900 requests left would take one 50 ms reconnect attempt (minutes)
    assert len(unsent) > spec.requests // 2
    assert result.summary.completed > 0 and result.summary.requests == spec.requests
    assert not result.valid
    assert any("the server stopped accepting connections mid-run" in r and f"{len(unsent)} of 3000" in r
               for r in result.invalid_reasons)
