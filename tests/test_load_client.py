"""The client against the scripted truth server: arithmetic, first-token rule, usage, matched work.

Tolerance: every per-request TTFT and every chunk gap must be within 15 ms of the truth server's own
log (generous for a noisy 2-core box; the benchmark in benchmarks/fidelity measures the real error).
"""

from __future__ import annotations

import pytest

from pytest_llmserve.load import ClientOptions, LoadSpec, run_load
from pytest_llmserve.testing.truth_script import Script
from pytest_llmserve.testing.truth_server import TruthServer

TOL_MS = 15.0
PARSERS = ["httptools", "h11"]


def truth_by_id(srv: TruthServer) -> dict[str, dict]:
    return {t["id"]: t for t in srv.truth()}


@pytest.mark.parametrize("parser", PARSERS)
def test_ttft_itl_tpot_e2e_match_the_truth_log_within_15ms(parser: str) -> None:
    spec = LoadSpec(concurrency=3, requests=6, warmup=1, input_len=12, output_len=6)
    with TruthServer(Script(ttft_ms=40, itl_ms=8)) as srv:
        result = run_load(srv.url, "truth-model", spec, options=ClientOptions(http_parser=parser))
        truth = truth_by_id(srv)
    # validity is not asserted: the in-process server shares the GIL, so a merged chunk is possible here
    assert result.summary.errors == {} and result.summary.token_mismatches == 0
    measured = [r for r in result.records if not r.warmup]
    assert len(measured) == 6 and all(r.ok for r in measured)
    for rec in measured:
        t = truth[rec.response_id]
        true_ttft = (t["token_ns"][0] - t["t_recv_ns"]) / 1e6
        assert true_ttft >= 40.0 - 1.0  # the server is never early (1 ms timer granularity)
        assert rec.ttft_ms == pytest.approx(true_ttft, abs=TOL_MS)
        true_gaps = [(b - a) / 1e6 for a, b in zip(t["token_ns"], t["token_ns"][1:])]
        assert len(rec.itl_ms) == len(true_gaps) == 5
        for got, want in zip(rec.itl_ms, true_gaps):
            assert got == pytest.approx(want, abs=TOL_MS)
        assert rec.tpot_ms == pytest.approx((rec.e2e_ms - rec.ttft_ms) / 5)
        assert rec.e2e_ms == pytest.approx(rec.ttft_ms + sum(rec.itl_ms))
        assert rec.text == " t0 t1 t2 t3 t4 t5"
        assert rec.finish_reason == "length"
    s = result.summary
    assert s.ttft_ms.n == 6 and s.itl_ms.n == 30 and s.tpot_ms.n == 6
    assert s.ttft_ms.p50 == pytest.approx(40.0, abs=TOL_MS)
    assert s.itl_ms.p50 == pytest.approx(8.0, abs=TOL_MS / 3)
    assert s.output_tok_s == pytest.approx(36 / s.duration_s)


@pytest.mark.parametrize("parser", PARSERS)
def test_role_only_first_chunk_is_not_counted_as_the_first_token(parser: str) -> None:
    spec = LoadSpec(endpoint="chat", concurrency=2, requests=2, warmup=0, output_len=3)
    with TruthServer(Script(ttft_ms=60, itl_ms=5, role_chunk="immediate")) as srv:
        result = run_load(srv.url, "truth-model", spec, options=ClientOptions(http_parser=parser))
        truth = truth_by_id(srv)
    assert result.summary.errors == {} and result.summary.token_mismatches == 0
    for rec in result.records:
        t = truth[rec.response_id]
        assert rec.chunks == 3 + 3  # role chunk + 3 tokens + usage + [DONE]
        assert len(rec.token_times_ns) == 3
        # counting the role chunk would give a TTFT of about 0 ms
        assert rec.ttft_ms == pytest.approx((t["token_ns"][0] - t["t_recv_ns"]) / 1e6, abs=TOL_MS)
        assert rec.ttft_ms > 45.0
        assert rec.text == " t0 t1 t2"


def test_usage_chunk_gives_server_token_counts() -> None:
    spec = LoadSpec(concurrency=1, requests=2, warmup=0, input_len=17, output_len=5)
    with TruthServer(Script(ttft_ms=5, itl_ms=1)) as srv:
        result = run_load(srv.url, "truth-model", spec)
    for rec in result.records:
        assert (rec.prompt_tokens, rec.completion_tokens, rec.output_tokens) == (17, 5, 5)
    assert result.summary.usage_missing == 0


def test_without_usage_chunk_tokens_are_counted_from_chunks_and_flagged() -> None:
    spec = LoadSpec(concurrency=1, requests=2, warmup=0, output_len=4)
    with TruthServer(Script(ttft_ms=5, itl_ms=1, usage="never")) as srv:
        result = run_load(srv.url, "truth-model", spec)
    assert result.summary.errors == {} and result.summary.token_mismatches == 0
    assert all(r.completion_tokens is None and r.output_tokens == 4 for r in result.records)
    assert result.summary.usage_missing == 2


def test_token_count_mismatch_invalidates_the_run_and_says_why() -> None:
    spec = LoadSpec(concurrency=2, requests=4, warmup=0, output_len=8)
    with TruthServer(Script(ttft_ms=5, itl_ms=1, tokens=5)) as srv:  # a server that ignores min_tokens
        result = run_load(srv.url, "truth-model", spec)
    assert result.summary.completed == 4 and result.summary.token_mismatches == 4
    assert not result.valid
    assert any("output_len=8" in r and "ignore_eos" in r for r in result.invalid_reasons)
    assert result.records[0].finish_reason == "stop" and result.records[0].output_tokens == 5


def test_without_ignore_eos_short_outputs_are_fine_and_the_body_says_so() -> None:
    spec = LoadSpec(concurrency=1, requests=2, warmup=0, output_len=8, ignore_eos=False)
    with TruthServer(Script(ttft_ms=5, itl_ms=1, tokens=3)) as srv:
        result = run_load(srv.url, "truth-model", spec)
    assert result.summary.errors == {} and result.summary.token_mismatches == 0
    assert not any("output_len" in r for r in result.invalid_reasons)
    assert all(r.finish_reason == "stop" for r in result.records)


@pytest.mark.parametrize("variant", [
    {"split_frames": True}, {"crlf": True}, {"comments": True}, {"crlf": True, "split_frames": True},
])
def test_split_frames_crlf_and_comments_do_not_change_tokens(variant: dict) -> None:
    spec = LoadSpec(endpoint="chat", concurrency=2, requests=3, warmup=0, output_len=5)
    with TruthServer(Script(ttft_ms=10, itl_ms=3, **variant)) as srv:
        result = run_load(srv.url, "truth-model", spec)
        truth = truth_by_id(srv)
    assert result.summary.errors == {} and result.summary.token_mismatches == 0
    for rec in result.records:
        assert rec.text == " t0 t1 t2 t3 t4" and rec.completion_tokens == 5
        t = truth[rec.response_id]
        # a split event counts when its last piece arrives: that is when the truth log stamps it
        assert rec.ttft_ms == pytest.approx((t["token_ns"][0] - t["t_recv_ns"]) / 1e6, abs=TOL_MS)


def test_prompt_is_sent_as_token_ids_of_the_requested_length_with_matched_work() -> None:
    spec = LoadSpec(concurrency=1, requests=1, warmup=0, input_len=33, output_len=4, vocab_size=50,
                    extra_body={"temperature": 0})
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        result = run_load(srv.url, "truth-model", spec)
        t = srv.truth()[0]
    assert result.records[0].prompt_tokens == 33
    assert t["max_tokens"] == 4 and t["stream"] is True


@pytest.mark.parametrize("parser", PARSERS)
def test_a_body_delimited_by_closing_the_connection_is_complete(parser: str) -> None:
    import json
    import socket
    import threading

    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:  # HTTP/1.0 style: no length, no chunking, the body ends when the server closes
        for _ in range(3):  # the warm-up GET, then two completions, one connection each
            c, _ = lsock.accept()
            req = b""
            while b"\r\n\r\n" not in req:
                req += c.recv(65536)
            head, _, rest = req.partition(b"\r\n\r\n")
            length = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")), b"0"))
            while len(rest) < length:
                rest += c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            for k in range(3):
                chunk = {"id": "x", "choices": [{"text": f" w{k}", "finish_reason": "length" if k == 2 else None}]}
                c.sendall(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            c.sendall(b"data: [DONE]\n\n")
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    spec = LoadSpec(concurrency=1, requests=2, warmup=0, output_len=3, ignore_eos=False)
    result = run_load(f"http://127.0.0.1:{port}", "m", spec, options=ClientOptions(http_parser=parser))
    lsock.close()
    assert result.summary.errors == {} and [r.text for r in result.records] == [" w0 w1 w2"] * 2
    assert result.client_check.reconnects == 2  # each response closed its connection
