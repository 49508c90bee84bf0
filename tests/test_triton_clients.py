"""Contract tests for the Triton load clients against a scripted server speaking the published protocols.

The server (pytest_llmserve.testing.kserve_server) implements Triton's HTTP generate extension
(generate_stream as SSE, errors after a 200) and the gRPC GRPCInferenceService from tritonclient's
own generated service definitions; the clients are the real ones (aiohttp SSE, tritonclient gRPC).
Its "model" is scripted (fixed delays, an EOS token at a fixed position), so request shapes,
matched work, token counts, error handling and record fields are checked exactly. Latency
lower bounds only: the client cannot see a token before the server sends it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.load.records import RequestRecord
from pytest_llmserve.load.spec import CheckLimits, ClientOptions, LoadSpec
from pytest_llmserve.load.triton_client import run_grpc, run_http, run_triton_load
from pytest_llmserve.load.triton_protocol import ModelInfo, TritonOptions, fetch_model_info, request_fields
from pytest_llmserve.servers.base import ServerHandle
from pytest_llmserve.servers.registry import backend_for
from pytest_llmserve.servers.triton import TritonEndpoints
from pytest_llmserve.testing.kserve_server import KServeTestServer, ScriptedModel

pytest.importorskip("tritonclient.grpc")

SPEC = LoadSpec(concurrency=4, requests=8, warmup=1, input_len=6, output_len=12)


@pytest.fixture(scope="module")
def server():
    with KServeTestServer(ScriptedModel(name="tiny", ttft_s=0.03, itl_s=0.004)) as srv:
        yield srv


def _run(protocol, srv, spec, **kw):
    if protocol == "http":
        return run_http(srv.http_url, srv.model.name, spec, **kw)
    return run_grpc(srv.grpc_url, srv.model.name, spec, **kw)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_matched_work_decodes_exactly_output_len_tokens_per_request(server, protocol):
    result = _run(protocol, server, SPEC)
    assert result.summary.completed == 8 and result.summary.errors == {} and result.summary.token_mismatches == 0
    assert [r.index for r in result.records] == list(range(9)) and result.records[0].warmup
    for rec in result.records:
        assert isinstance(rec, RequestRecord) and rec.ok and rec.output_tokens == 12
        assert rec.text == "".join(f" t{i}" for i in range(12)) and len(rec.token_times_ns) == 12
        assert rec.t_send_ns < rec.t_first_token_ns <= rec.t_last_token_ns
        assert rec.ttft_ms >= 30.0  # the script waits 30 ms before the first token
        assert rec.completion_tokens is None and rec.finish_reason is None  # Triton reports no usage
    assert result.summary.ttft_ms.n == 8 and result.summary.itl_ms.n == 8 * 11


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_without_matched_work_the_model_stops_at_its_eos_and_the_summary_accepts_it(server, protocol):
    result = _run(protocol, server, replace(SPEC, ignore_eos=False))
    assert {r.output_tokens for r in result.records} == {3}  # natural_len of the script
    assert result.summary.token_mismatches == 0 and result.summary.completed == 8


def test_requests_carry_min_tokens_unreachable_end_id_and_streaming(server):
    server.state.requests.clear()
    run_http(server.http_url, "tiny", replace(SPEC, requests=2, warmup=0), opts=TritonOptions(end_id=-7))
    sent = server.state.requests
    assert len(sent) == 2 and all(r["end_id"] == -7 and r["min_tokens"] == 12 and r["max_tokens"] == 12 for r in sent)
    assert all(r["stream"] is True and r["exclude_input_in_output"] is True for r in sent)
    assert all(len(r["text_input"].split()) == 6 for r in sent)


def test_older_ensembles_get_min_length_instead_of_min_tokens():
    with KServeTestServer(ScriptedModel(name="old", min_tokens_input="min_length", ttft_s=0.0)) as srv:
        result = run_grpc(srv.grpc_url, "old", replace(SPEC, requests=3, warmup=0), http_url=srv.http_url)
        assert result.summary.token_mismatches == 0 and result.summary.completed == 3
        assert all(r["min_length"] == 12 and "min_tokens" not in r for r in srv.state.requests)


def test_request_fields_refuse_what_the_model_does_not_declare():
    info = ModelInfo(name="m", inputs={"text_input": "TYPE_STRING", "max_tokens": "TYPE_INT32"}, max_batch_size=8)
    with pytest.raises(ValueError, match="matched work .* needs inputs min_tokens/min_length and end_id"):
        request_fields(info, SPEC, 0, TritonOptions())
    assert set(request_fields(info, replace(SPEC, ignore_eos=False), 0, TritonOptions())) == {"text_input", "max_tokens"}
    with pytest.raises(ValueError, match="extra input 'top_k' is not declared"):
        request_fields(info, replace(SPEC, ignore_eos=False), 0, TritonOptions(extra_inputs={"top_k": 1}))
    with pytest.raises(ValueError, match="give text prompts"):
        request_fields(info, replace(SPEC, ignore_eos=False, prompts=((1, 2, 3),)), 0, TritonOptions())


def test_unknown_model_fails_before_the_run_with_the_server_message(server):
    with pytest.raises(RuntimeError, match="unknown model"):
        fetch_model_info(server.http_url, "nope")


def test_http_error_after_200_is_a_stream_error_with_the_server_message():
    with KServeTestServer(ScriptedModel(name="m", fail_after_tokens=2, ttft_s=0.0)) as srv:
        result = run_http(srv.http_url, "m", LoadSpec(concurrency=2, requests=2, warmup=0, output_len=8))
    for rec in result.records:
        assert rec.status == 200 and rec.error_kind == "stream_error" and "scripted failure" in rec.error_message
        assert rec.output_tokens == 2
    assert result.summary.errors == {"stream_error": 2} and result.summary.error_rate == 1.0


def test_grpc_error_is_attributed_when_one_request_is_in_flight_else_counted_and_timed_out():
    # the first token comes after 0.2 s, so with two streams both requests are in flight at the error
    with KServeTestServer(ScriptedModel(name="m", fail_after_tokens=1, ttft_s=0.2)) as srv:
        one = run_grpc(srv.grpc_url, "m", LoadSpec(concurrency=1, requests=2, warmup=0, output_len=8))
        many = run_grpc(srv.grpc_url, "m", LoadSpec(concurrency=2, requests=2, warmup=0, output_len=8,
                                                     request_timeout_s=0.5))
    assert [r.error_kind for r in one.records] == ["stream_error", "stream_error"] and one.stream_errors == []
    assert [r.error_kind for r in many.records] == ["timeout", "timeout"] and len(many.stream_errors) == 2


def test_grpc_flags_only_final_response_ends_the_request_without_counting_a_token():
    with KServeTestServer(ScriptedModel(name="m", empty_final=True, ttft_s=0.0)) as srv:
        result = run_grpc(srv.grpc_url, "m", replace(SPEC, requests=3, warmup=0))
    assert all(r.ok and r.output_tokens == 12 and r.chunks == 13 and r.t_end_ns >= r.t_last_token_ns
               for r in result.records)


def test_requests_without_a_final_response_are_timeouts_not_successes():
    with KServeTestServer(ScriptedModel(name="m", ttft_s=1.0)) as srv:
        result = run_grpc(srv.grpc_url, "m", LoadSpec(concurrency=1, requests=1, warmup=0, output_len=4,
                                                      request_timeout_s=0.2))
    assert [r.error_kind for r in result.records] == ["timeout"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_open_loop_records_scheduled_times_and_queueing_from_schedule(protocol):
    with KServeTestServer(ScriptedModel(name="m", ttft_s=0.01, max_batch_size=1)) as srv:
        result = _run(protocol, srv, LoadSpec(rate=200.0, arrival="constant", concurrency=None, requests=6, warmup=0,
                                              output_len=4))
    scheduled = [r.t_scheduled_ns for r in result.records]
    assert all(s is not None for s in scheduled) and scheduled == sorted(scheduled)
    assert scheduled[1] - scheduled[0] == pytest.approx(5_000_000, abs=1)  # 200/s constant: 5 ms apart
    summary = result.summary
    assert summary.completed == 6 and summary.ttft_from_schedule_ms.n == 6
    # one request at a time on the server: the last one waits behind the others, seen from its schedule
    assert summary.ttft_from_schedule_ms.p99 >= summary.ttft_ms.p50


def test_duration_runs_keep_sending_until_the_time_is_up(server):
    result = run_http(server.http_url, "tiny", replace(SPEC, requests=None, duration_s=0.4, warmup=0))
    assert result.summary.requests >= 4 and result.summary.completed == result.summary.requests


def test_triton_load_samples_server_metrics_while_it_runs():
    model = ScriptedModel(name="m", ttft_s=0.02, itl_s=0.01, max_batch_size=2, tokens_per_block=4, max_blocks=40)
    with KServeTestServer(model) as srv:
        endpoints = SimpleNamespace(http_url=srv.http_url, grpc_url=srv.grpc_url, metrics_url=srv.metrics_url, model="m")
        result = run_triton_load(endpoints, LoadSpec(concurrency=6, requests=12, warmup=0, input_len=4, output_len=16),
                                 metrics_interval_s=0.02)
    metrics = result.server_metrics
    assert result.summary.completed == 12 and metrics.source == "triton" and metrics.samples >= 3
    assert metrics.running_max == 2 and metrics.waiting_max >= 1  # six streams, two batch slots
    assert 0 < metrics.kv_usage_max <= 0.25  # 2 requests x ceil((4 + 16) / 4) blocks of 40
    assert metrics.queue_time_mean_s is not None and metrics.queue_time_mean_s > 0


def test_run_result_is_the_openai_clients_type_and_unmatched_work_invalidates_it():
    with KServeTestServer(ScriptedModel(name="m", ttft_s=0.0, honor_min_tokens=False)) as srv:
        good = run_http(srv.http_url, "m", replace(SPEC, requests=3, warmup=0)).to_run_result()
        # end_id = the model's EOS id and a server that drops min_tokens: requests stop early
        bad = run_grpc(srv.grpc_url, "m", replace(SPEC, requests=3, warmup=0), opts=TritonOptions(end_id=2)).to_run_result()
    assert type(good).__name__ == "RunResult" and good.valid and good.metrics()["error_rate"] == 0.0
    assert good.metrics()["ttft_p95_ms"] > 0 and not good.client_check.kernel_timestamps
    assert not bad.valid and any("did not stream exactly output_len=12" in r for r in bad.invalid_reasons)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_triton_handle_is_loaded_by_its_backend_through_the_handles_endpoints(server, protocol):
    target = Target(name="t", kind="triton", model="m", served_model_name="tiny", options={"protocol": protocol})
    endpoints = TritonEndpoints(http_url=server.http_url, grpc_url=server.grpc_url, metrics_url=server.metrics_url,
                                model="tiny", repository=Path("unused"))
    handle = ServerHandle(target, server.http_url, "tiny", endpoints=endpoints)
    result = backend_for("triton").run_load(handle, replace(SPEC, warmup=0), ClientOptions())
    assert type(result).__name__ == "RunResult" and result.valid and result.summary.completed == 8
    # the target's client limits apply (Triton's client has no loop probe: the send-lag limit of an open loop)
    strict = ClientOptions(limits=CheckLimits(max_send_lag_p99_ms=-1.0))
    late = backend_for("triton").run_load(handle, replace(SPEC, warmup=0, rate=100.0), strict)
    assert not late.valid and any("sends were late" in r for r in late.invalid_reasons)
    with pytest.raises(KeyError, match="no Triton server planned"):
        backend_for("triton").run_load(replace(handle, endpoints=None), SPEC, ClientOptions())
