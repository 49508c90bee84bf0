"""The truth server itself: routes, per-request scripts, truthful send times when the client stalls."""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pytest_llmserve.testing.truth_script import Request, Script, plan
from pytest_llmserve.testing.truth_server import TruthServer, _Conn


def test_models_health_truth_reset_and_unknown_routes() -> None:
    with TruthServer(Script(model="m1")) as srv, httpx.Client(base_url=srv.url) as http:
        assert http.get("/v1/models").json()["data"][0]["id"] == "m1"
        assert http.get("/health").status_code == 200
        assert http.get("/nope").status_code == 404
        http.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2, "stream": False})
        log = http.get("/truth").json()["requests"]
        assert len(log) == 1 and log[0]["max_tokens"] == 2 and log[0]["stream"] is False
        http.post("/truth/reset")
        assert http.get("/truth").json()["requests"] == []


def test_non_streaming_completion_carries_text_and_usage() -> None:
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        body = httpx.post(f"{srv.url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 3}).json()
    assert body["choices"][0]["message"]["content"] == " t0 t1 t2"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_x_truth_scripts_one_request_and_rejects_unknown_fields() -> None:
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 2, "x_truth": {"status": 429}})
        assert r.status_code == 429 and "scripted HTTP 429" in r.text
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "x_truth": {"bogus": 1}})
        assert r.status_code == 400 and "bogus" in r.text


def test_plan_is_absolute_in_time_and_ends_with_usage_and_done() -> None:
    steps = list(plan(Script(ttft_ms=50, itl_ms=10), Request(seq=1, chat=False, max_tokens=3,
                                                                   include_usage=True, prompt_tokens=4)))
    tokens = [(t, d) for t, kind, d in steps if kind == "token"]
    assert [t // 1_000_000 for t, _ in tokens] == [50, 60, 70]
    assert b'"finish_reason":"length"' in tokens[-1][1]
    assert b'"usage":{"prompt_tokens":4,"total_tokens":7,"completion_tokens":3}' in steps[-3][2]
    assert steps[-2][2] == b"data: [DONE]\n\n" and steps[-1][1] == "end"


def test_logged_send_times_wait_for_a_client_that_stops_reading() -> None:
    # the peer reads nothing: the kernel's buffer fills, later chunks wait in the server's own buffer,
    # and the log must say when they really went to the kernel, not when they were queued
    srv = TruthServer(Script())
    a, b = socket.socketpair()
    a.setblocking(False)
    conn = _Conn(a)
    srv._sel.register(a, selectors.EVENT_READ, conn)
    times: list[int] = []
    chunk = b"x" * 4096
    while not conn.out:
        times.append(time.time_ns())
        srv._write(conn, chunk, times)
    queued_at = times[-1]
    for _ in range(3):
        times.append(time.time_ns())
        srv._write(conn, chunk, times)
    assert srv.blocked_writes == 1 and len(conn.marks) == 4
    time.sleep(0.05)
    b.setblocking(False)
    t_read = time.time_ns()
    while conn.out:
        try:
            while b.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        srv._flush(conn)
    assert conn.marks == []
    assert times[-4] >= t_read > queued_at  # the partly sent chunk: its last byte left after the read
    assert all(t >= t_read for t in times[-3:])
    assert times == sorted(times)
    a.close(), b.close()


def test_cli_serves_until_terminated_and_writes_the_truth_log(tmp_path: Path) -> None:
    log = tmp_path / "truth.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pytest_llmserve.testing.truth_server", "--ttft-ms", "1",
                             "--itl-ms", "1", "--role-chunk", "none", "--truth-log", str(log)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        url = proc.stdout.readline().split()[4]
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    assert json.loads(log.read_text().splitlines()[0])["max_tokens"] == 2


def test_script_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="role_chunk"):
        Script(role_chunk="sometimes")
    with pytest.raises(ValueError, match="status=200"):
        Script(status=200)


@pytest.mark.parametrize("warm_path", ["/v1/models", "/health"])
def test_connections_are_warmed_on_the_route_the_options_name(warm_path):
    # transformers serve answers GET /v1/models with a 500 and a traceback: the fixture warms on /health there
    from pytest_llmserve.load import ClientOptions, LoadSpec, run_load

    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as server:
        spec = LoadSpec(concurrency=3, requests=6, warmup=0, input_len=4, output_len=2)
        run_load(server.url, "truth-model", spec, options=ClientOptions(warm_path=warm_path))
        other = "/health" if warm_path == "/v1/models" else "/v1/models"
        assert server.get_paths.get(warm_path, 0) >= 3 and other not in server.get_paths
