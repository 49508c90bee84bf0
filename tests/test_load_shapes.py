"""Load shapes end to end: warm-up exclusion, closed/open loop, duration runs, several processes."""

from __future__ import annotations

import asyncio

import pytest

from pytest_llmserve.load import ClientOptions, LoadSpec, run_load, run_load_async
from pytest_llmserve.testing.truth_script import Script
from pytest_llmserve.testing.truth_server import TruthServer


def test_warmup_requests_are_sent_first_flagged_and_excluded() -> None:
    spec = LoadSpec(concurrency=2, requests=4, warmup=3, output_len=3)
    with TruthServer(Script(ttft_ms=2, itl_ms=1)) as srv:
        result = run_load(srv.url, "truth-model", spec)
        truth = srv.truth()
    assert len(truth) == 7 and len(result.records) == 7
    warm = [r for r in result.records if r.warmup]
    assert [r.index for r in warm] == [0, 1, 2]
    # every warm-up request finished before the first measured one was sent
    first_measured = min(r.t_send_ns for r in result.records if not r.warmup)
    assert max(r.t_end_ns for r in warm) <= first_measured
    assert result.summary.requests == 4 and result.summary.ttft_ms.n == 4


def test_closed_loop_never_exceeds_the_concurrency() -> None:
    spec = LoadSpec(concurrency=3, requests=9, warmup=0, output_len=4)
    with TruthServer(Script(ttft_ms=5, itl_ms=2)) as srv:
        result = run_load(srv.url, "truth-model", spec)
    events = sorted([(r.t_send_ns, 1) for r in result.records] + [(r.t_end_ns, -1) for r in result.records])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 3
    assert result.client_check.turnaround_p99_ms is not None


def test_open_loop_measures_from_the_schedule_too_so_queueing_is_not_hidden() -> None:
    # 25 req/s offered to a client capped at one request in flight, each request ~60 ms: requests queue
    # behind the cap, which latency-from-send hides (coordinated omission) and latency-from-schedule shows
    spec = LoadSpec(rate=25, arrival="constant", concurrency=1, requests=8, warmup=0, output_len=3)
    with TruthServer(Script(ttft_ms=40, itl_ms=10)) as srv:
        result = run_load(srv.url, "truth-model", spec)
    s = result.summary
    assert s.completed == 8
    assert all(r.t_scheduled_ns is not None for r in result.records)
    sched = sorted(r.t_scheduled_ns for r in result.records)
    assert [round((b - a) / 1e6) for a, b in zip(sched, sched[1:])] == [40] * 7  # constant 1/rate
    assert s.ttft_from_schedule_ms.p99 > s.ttft_ms.p99 + 50  # the backlog grows ~20 ms per request
    assert s.ttft_ms.p50 < 70
    assert "ttft_from_schedule_p99_ms" in result.metrics()
    assert result.client_check.send_lag_p99_ms is not None


def test_open_loop_without_cap_sends_on_schedule() -> None:
    spec = LoadSpec(rate=50, arrival="poisson", concurrency=None, requests=10, warmup=1, output_len=2, seed=3)
    with TruthServer(Script(ttft_ms=30, itl_ms=5)) as srv:
        result = run_load(srv.url, "truth-model", spec)
    measured = [r for r in result.records if not r.warmup]
    assert len(measured) == 10 and all(r.ok for r in measured)
    # uncapped: nothing waits behind another request, so from-schedule ~= from-send (within the send lag)
    lag = max((r.t_send_ns - r.t_scheduled_ns) / 1e6 for r in measured)
    assert result.summary.ttft_from_schedule_ms.p99 <= result.summary.ttft_ms.p99 + lag + 0.01


def test_duration_run_stops_issuing_when_time_is_up() -> None:
    spec = LoadSpec(concurrency=2, requests=None, duration_s=0.4, warmup=0, output_len=3)
    with TruthServer(Script(ttft_ms=20, itl_ms=5)) as srv:
        result = run_load(srv.url, "truth-model", spec)
    sends = sorted(r.t_send_ns for r in result.records)
    assert (sends[-1] - sends[0]) / 1e9 < 0.4
    assert 4 <= len(result.records) <= 2 * 0.4 / 0.030 + 2  # each request takes >= 30 ms


def test_chat_endpoint_runs_with_text_prompts() -> None:
    spec = LoadSpec(endpoint="chat", concurrency=1, requests=2, warmup=0, input_len=7, output_len=2,
                    prompts=("hello there", "general kenobi"))
    with TruthServer(Script(ttft_ms=2, itl_ms=1)) as srv:
        result = run_load(srv.url, "truth-model", spec)
        truth = srv.truth()
    assert [r.prompt_tokens for r in result.records] == [2, 2]
    assert all(t["path"] == "/v1/chat/completions" for t in truth)


def test_run_load_works_from_inside_a_running_event_loop() -> None:
    spec = LoadSpec(concurrency=1, requests=2, warmup=0, output_len=2)
    with TruthServer(Script(ttft_ms=2, itl_ms=1)) as srv:

        async def both() -> tuple:
            sync_result = run_load(srv.url, "truth-model", spec)  # a thread with its own loop
            async_result = await run_load_async(srv.url, "truth-model", spec)
            return sync_result, async_result

        a, b = asyncio.run(both())
    assert a.summary.completed == b.summary.completed == 2


def test_several_client_processes_split_the_load_and_merge_records() -> None:
    spec = LoadSpec(concurrency=4, requests=8, warmup=2, output_len=3)
    with TruthServer(Script(ttft_ms=5, itl_ms=2)) as srv:
        result = run_load(srv.url, "truth-model", spec, options=ClientOptions(workers=2))
        truth = srv.truth()
    assert len(truth) == 10
    assert sorted(r.index for r in result.records) == list(range(10))
    assert result.summary.completed == 8 and result.client_check.workers == 2


def test_a_path_prefix_and_v1_suffix_in_the_url_are_handled() -> None:
    spec = LoadSpec(concurrency=1, requests=1, warmup=0, output_len=2)
    with TruthServer(Script(ttft_ms=2, itl_ms=1)) as srv:
        ok = run_load(srv.url + "/v1/", "truth-model", spec)
        prefixed = run_load(srv.url + "/proxy", "truth-model", spec)
    assert ok.summary.completed == 1
    assert prefixed.summary.errors == {"http_404": 1}


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "ftp://x"])
def test_non_http_urls_are_refused_with_a_hint(url: str) -> None:
    with pytest.raises(ValueError, match="plain http"):
        run_load(url, "m", LoadSpec(requests=1))


def test_several_processes_share_one_open_loop_schedule() -> None:
    spec = LoadSpec(rate=100, arrival="constant", concurrency=None, requests=12, warmup=0, output_len=2)
    with TruthServer(Script(ttft_ms=5, itl_ms=2)) as srv:
        result = run_load(srv.url, "truth-model", spec, options=ClientOptions(workers=2))
    sched = sorted(r.t_scheduled_ns for r in result.records)
    assert [round((b - a) / 1e6) for a, b in zip(sched, sched[1:])] == [10] * 11  # one schedule, interleaved
    assert result.summary.completed == 12


def test_a_failing_worker_process_raises_with_its_error() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(RuntimeError, match="load worker 0 of 2 failed:(.|\n)*is the server running"):
        run_load(f"http://127.0.0.1:{port}", "m", LoadSpec(concurrency=2, requests=2),
                 options=ClientOptions(workers=2))
