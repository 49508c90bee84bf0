"""Summary arithmetic on hand-made records: percentiles, TPOT, rates, errors, token checks, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.load import LoadSpec, Percentiles
from pytest_llmserve.load.client import Shard
from pytest_llmserve.load.records import RawRequest, decode
from pytest_llmserve.load.result import build_result
from pytest_llmserve.load.spec import ClientOptions

MS = 1_000_000


def raw_stream(index: int, t_send: int, token_times: list[int], n_usage: int | None = None, warmup: bool = False,
               chat: bool = False) -> RawRequest:
    r = RawRequest(index, warmup, None)
    r.t_send, r.status, r.t_head = t_send, 200, t_send + MS
    for k, t in enumerate(token_times):
        last = k == len(token_times) - 1
        choice = ({"delta": {"content": f" t{k}"}} if chat else {"text": f" t{k}"}) | {
            "finish_reason": "length" if last else None}
        r.ev_ts.append(t)
        r.ev_data.append(json.dumps({"id": f"cmpl-{index}", "choices": [choice]}).encode())
    if n_usage is not None:
        r.ev_ts.append(token_times[-1])
        r.ev_data.append(json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n_usage}}).encode())
    r.ev_ts.append(token_times[-1])
    r.ev_data.append(b"[DONE]")
    r.t_end = token_times[-1]
    return r


def failed(index: int, t_send: int, kind: str) -> RawRequest:
    r = RawRequest(index, False, None)
    r.t_send = r.t_end = t_send
    r.fail(kind, "boom")
    return r


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_numpy_linear_interpolation(values: list[float]) -> None:
    p = Percentiles.of(values)
    assert (p.p50, p.p90, p.p95, p.p99) == pytest.approx(tuple(np.percentile(values, [50, 90, 95, 99])))
    assert p.n == len(values) and p.p50 <= p.p90 <= p.p95 <= p.p99


def test_percentiles_of_nothing_are_nan_with_n_zero() -> None:
    p = Percentiles.of([])
    assert p.n == 0 and math.isnan(p.p99)


def test_metrics_from_known_timestamps() -> None:
    t0 = 1_700_000_000 * 10**9
    raws = [
        raw_stream(0, t0, [t0 + 50 * MS, t0 + 60 * MS, t0 + 80 * MS], n_usage=3, warmup=True),
        raw_stream(1, t0 + 100 * MS, [t0 + 150 * MS, t0 + 160 * MS, t0 + 170 * MS, t0 + 200 * MS], n_usage=4),
        raw_stream(2, t0 + 100 * MS, [t0 + 130 * MS, t0 + 140 * MS], n_usage=2),
        failed(3, t0 + 110 * MS, "http_503"),
    ]
    spec = LoadSpec(concurrency=2, requests=3, output_len=4)
    result = build_result(spec, [Shard(raws=raws)], ClientOptions())
    s = result.summary
    assert s.ttft_ms.n == 2 and s.ttft_ms.p50 == pytest.approx(40.0)  # (50 + 30) / 2
    assert sorted(g for r in result.records if not r.warmup and r.ok for g in r.itl_ms) == pytest.approx([10, 10, 10, 30])
    assert s.tpot_ms.p50 == pytest.approx((50 / 3 + 10 / 1) / 2)  # (e2e - ttft) / (N - 1) per request
    assert s.e2e_ms.p99 == pytest.approx(np.percentile([100, 40], 99))
    assert s.duration_s == pytest.approx(0.1)  # first measured send to last measured token
    assert s.output_tok_s == pytest.approx(6 / 0.1) and s.requests_s == pytest.approx(2 / 0.1)
    assert s.errors == {"http_503": 1} and s.error_rate == pytest.approx(1 / 3)
    assert s.token_mismatches == 1  # request 2 decoded 2 of output_len=4
    assert not result.valid and "output_len=4" in result.invalid_reasons[0]
    m = result.metrics()
    assert m["ttft_p50_ms"] == s.ttft_ms.p50 and m["error_rate"] == s.error_rate
    for key in ("ttft_p50_ms", "ttft_p90_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p95_ms", "itl_p99_ms",
                "tpot_p50_ms", "tpot_p95_ms", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", "output_tok_s", "requests_s"):
        assert key in m


def test_merged_chunks_are_counted_from_identical_arrival_times() -> None:
    t0 = 10**18
    rec = decode(raw_stream(0, t0, [t0 + 5 * MS, t0 + 9 * MS, t0 + 9 * MS, t0 + 12 * MS], n_usage=4))
    assert rec.merged_chunks == 1 and rec.itl_ms == pytest.approx([4, 0, 3])


def test_chat_reasoning_deltas_count_as_tokens_but_not_text() -> None:
    r = RawRequest(0, False, None)
    r.t_send, r.status = 0, 200
    for t, delta in [(1, {"role": "assistant", "content": ""}), (5, {"reasoning_content": "hmm"}), (9, {"content": "A"})]:
        r.ev_ts.append(t)
        r.ev_data.append(json.dumps({"choices": [{"delta": delta, "finish_reason": None}]}).encode())
    r.ev_ts.append(9)
    r.ev_data.append(b"[DONE]")
    rec = decode(r)
    assert rec.t_first_token_ns == 5 and rec.text == "A" and rec.output_tokens == 2


def test_to_dict_is_json_with_required_keys_and_no_nan() -> None:
    spec = LoadSpec(concurrency=1, requests=1, output_len=1)
    result = build_result(spec, [Shard(raws=[failed(0, 5, "timeout")])], ClientOptions())
    d = json.loads(json.dumps(result.to_dict(include_records=True), allow_nan=False))
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(d[key]) >= {"p50", "p90", "p95", "p99"} and d[key]["p50"] is None
    assert d["errors"] == {"timeout": 1} and d["requests"] == 1 and d["valid"] is False
    assert d["client_check"]["valid"] is True and "output_tok_s" in d and len(d["records"]) == 1
