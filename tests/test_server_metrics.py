"""Server-metrics scraping: parsers on each server's exposition format, the summary's arithmetic and
warnings, the background sampler against the scripted Triton stand-in, and once against the real
CPU vLLM (tests/conftest.py's `tiny_vllm`). The vLLM, trtllm-serve and Triton texts below use the
metric names and label sets those servers publish (vLLM test_metrics.py / metrics docs,
tensorrt_llm/metrics/collector.py, Triton metrics.md + the TensorRT-LLM backend's custom metrics).
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from pytest_llmserve.evidence.server_metrics import (
    MetricsSampler,
    Sample,
    canonical_from_iteration_stats,
    canonical_from_prometheus,
    parse_payload,
    parse_prometheus,
    summarize_samples,
)
from pytest_llmserve.testing.kserve_server import KServeTestServer, ScriptedModel

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.42
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 7.0
# HELP vllm:request_queue_time_seconds Histogram of time spent in WAITING phase for request.
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{engine="0",model_name="tiny"} 1.5
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="tiny"} 10.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 10.0
vllm:request_queue_time_seconds_count{engine="0",model_name="tiny"} 10.0
"""

TRTLLM_TEXT = """\
# HELP trtllm_kv_cache_utilization KV cache utilization
# TYPE trtllm_kv_cache_utilization gauge
trtllm_kv_cache_utilization{engine_type="pytorch",model_name="tiny"} 0.97
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running{engine_type="pytorch",model_name="tiny"} 8.0
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{engine_type="pytorch",model_name="tiny"} 2.0
# TYPE trtllm_num_paused_requests gauge
trtllm_num_paused_requests{engine_type="pytorch",model_name="tiny"} 1.0
# TYPE trtllm_request_queue_time_seconds histogram
trtllm_request_queue_time_seconds_bucket{engine_type="pytorch",le="+Inf",model_name="tiny"} 4.0
trtllm_request_queue_time_seconds_count{engine_type="pytorch",model_name="tiny"} 4.0
trtllm_request_queue_time_seconds_sum{engine_type="pytorch",model_name="tiny"} 0.2
"""

TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 20
nv_inference_request_success{model="tensorrt_llm",version="1"} 20
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="ensemble",version="1"} 40000
nv_inference_queue_duration_us{model="tensorrt_llm",version="1"} 0
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 30
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 120
"""


def test_vllm_exposition_maps_to_the_canonical_quantities():
    source, values = canonical_from_prometheus(parse_prometheus(VLLM_TEXT))
    assert source == "vllm"
    assert values == {"kv_usage": 0.42, "running": 3.0, "waiting": 5.0, "preemptions_total": 7.0,
                      "queue_time_sum_s": 1.5, "queue_time_count": 10.0}


def test_trtllm_prometheus_exposition_maps_paused_requests_not_preemptions():
    source, values = canonical_from_prometheus(parse_prometheus(TRTLLM_TEXT))
    assert source == "trtllm" and values["kv_usage"] == 0.97 and values["paused"] == 1.0
    assert "preemptions_total" not in values and values["queue_time_count"] == 4.0


def test_triton_exposition_uses_backend_gauges_and_sums_queue_time_over_models():
    source, values = canonical_from_prometheus(parse_prometheus(TRITON_TEXT))
    assert source == "triton" and values["kv_usage"] == pytest.approx(0.25)  # used / max without a fraction row
    assert (values["running"], values["waiting"]) == (6, 1)
    assert values["queue_time_sum_s"] == pytest.approx(0.04) and values["queue_time_count"] == 40


def test_trtllm_serve_json_iteration_stats_give_peaks_over_the_iterations_returned():
    stats = [{"iter": 1, "numActiveRequests": 2, "numQueuedRequests": 0,
              "kvCacheStats": {"usedNumBlocks": 10, "maxNumBlocks": 100}, "inflightBatchingStats": {"numPausedRequests": 0}},
             {"iter": 2, "numActiveRequests": 4, "numQueuedRequests": 3,
              "kvCacheStats": {"usedNumBlocks": 50, "maxNumBlocks": 100}, "inflightBatchingStats": {"numPausedRequests": 2}}]
    assert canonical_from_iteration_stats(stats) == {"kv_usage": 0.5, "running": 4, "waiting": 3, "paused": 2}
    assert parse_payload(json.dumps(stats), "application/json")[0] == "trtllm-iteration-stats"


def _samples(*rows):
    return [Sample(t_ns=i, source="vllm", values=row) for i, row in enumerate(rows)]


def test_summary_warns_when_kv_usage_stays_high_and_when_preemptions_happen():
    summary = summarize_samples(_samples(
        {"kv_usage": 0.5, "preemptions_total": 3, "queue_time_sum_s": 1.0, "queue_time_count": 10},
        {"kv_usage": 0.97, "preemptions_total": 3},
        {"kv_usage": 0.99, "preemptions_total": 5, "queue_time_sum_s": 3.0, "queue_time_count": 20}))
    assert summary.kv_usage_max == 0.99 and summary.kv_high_fraction == pytest.approx(2 / 3)
    assert summary.preemptions_delta == 2 and summary.queue_time_mean_s == pytest.approx(0.2)
    assert any("KV cache usage stayed above 95%" in w for w in summary.warnings)
    assert any("2 preemptions" in w for w in summary.warnings)
    assert "WARNING" in summary.table()


def test_one_spike_above_95_percent_is_not_stays_high_and_no_preemption_means_no_warning():
    summary = summarize_samples(_samples({"kv_usage": 0.2, "preemptions_total": 1}, {"kv_usage": 0.99, "preemptions_total": 1},
                                         {"kv_usage": 0.3, "preemptions_total": 1}))
    assert summary.warnings == () and summary.preemptions_delta == 0


def test_a_counter_that_goes_down_is_reported_not_subtracted():
    summary = summarize_samples(_samples({"preemptions_total": 9}, {"preemptions_total": 1}))
    assert summary.preemptions_delta is None and any("went down" in w for w in summary.warnings)


def test_failed_scrapes_are_counted_not_raised():
    sampler = MetricsSampler("http://127.0.0.1:9/metrics", interval_s=0.01, timeout_s=0.5)
    sampler.start()
    summary = sampler.stop()
    assert summary.samples == 0 and summary.errors >= 2 and summary.source == "none"


def test_sampler_sees_queueing_on_the_scripted_triton_during_load():
    # ~0.5 s a request, 1.5 s in all: the queue outlasts the sampler's child-process start-up on a busy machine
    model = ScriptedModel(name="m", ttft_s=0.05, itl_s=0.05, max_batch_size=1)
    with KServeTestServer(model) as srv, httpx.Client(timeout=10) as client:
        body = {"text_input": "a b c", "max_tokens": 10, "stream": True}
        with MetricsSampler(srv.metrics_url, interval_s=0.02) as sampler:
            threads = [threading.Thread(target=client.post, args=(f"{srv.http_url}/v2/models/m/generate_stream",),
                                        kwargs={"json": body}) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        summary = sampler.summary
    assert summary.source == "triton" and summary.samples >= 3
    assert summary.running_max == 1 and summary.waiting_max >= 1
    assert summary.queue_time_mean_s > 0  # two of three requests waited for the single batch slot


def test_sampler_reads_the_real_cpu_vllm_metrics(tiny_vllm):
    """One short run against the real server: the counters move by exactly the requests sent."""
    body = {"model": tiny_vllm.model, "prompt": [11, 12, 13, 14], "max_tokens": 48, "ignore_eos": True}
    with httpx.Client(timeout=120) as client, MetricsSampler(tiny_vllm.metrics_url, interval_s=0.05) as sampler:
        threads = [threading.Thread(target=client.post, args=(tiny_vllm.base_url + "/v1/completions",),
                                    kwargs={"json": body}) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    summary = sampler.summary
    first, last = sampler.samples[0].values, sampler.samples[-1].values
    assert summary.source == "vllm" and summary.errors == 0
    assert last["queue_time_count"] - first["queue_time_count"] == 4
    assert summary.kv_usage_max is not None and 0 <= summary.kv_usage_max <= 1
    assert summary.queue_time_mean_s is not None and summary.preemptions_delta == 0
