"""The client's self-check: a client that cannot keep up says so and the run is invalid.

The lag here is made on purpose (a callback that blocks the event loop), so the verdict is certain;
nothing is timed against a limit on this shared machine.
"""

from __future__ import annotations

import asyncio
import time

from pytest_llmserve.load import CheckLimits, ClientOptions, LoadSpec, run_load_async
from pytest_llmserve.load.check import evaluate
from pytest_llmserve.load.client import Shard
from pytest_llmserve.load.records import RawRequest, RequestRecord, decode
from pytest_llmserve.load.summary import LoadSummary, Percentiles
from pytest_llmserve.testing.truth_script import Script
from pytest_llmserve.testing.truth_server import TruthServer


def run_with_hog(url: str, spec: LoadSpec, block_s: float, every_s: float):  # noqa: ANN201
    """Run the load on a loop that a hog blocks for block_s every every_s (a saturated client)."""

    async def main():  # noqa: ANN202
        loop = asyncio.get_running_loop()
        stop = False

        def hog() -> None:
            time.sleep(block_s)
            if not stop:
                loop.call_later(every_s, hog)

        loop.call_soon(hog)
        try:
            return await run_load_async(url, "truth-model", spec)
        finally:
            stop = True

    return asyncio.run(main())


def test_a_client_whose_loop_lags_marks_the_run_invalid() -> None:
    spec = LoadSpec(concurrency=4, requests=8, warmup=0, output_len=30)
    with TruthServer(Script(ttft_ms=5, itl_ms=2)) as srv:
        result = run_with_hog(srv.url, spec, block_s=0.06, every_s=0.01)
    check = result.client_check
    assert not result.valid and not check.valid
    assert check.loop_lag_p99_ms > 50 and check.merged_token_frac > 0.1
    assert any("fell behind" in r and "token chunks" in r for r in result.invalid_reasons)
    assert any("event-loop delay" in r for r in result.invalid_reasons)
    assert result.summary.errors == {}  # the requests themselves were fine


def test_late_sends_against_an_open_loop_schedule_invalidate_the_run() -> None:
    spec = LoadSpec(rate=200, arrival="constant", concurrency=None, requests=40, warmup=0, output_len=2)
    with TruthServer(Script(ttft_ms=1, itl_ms=50)) as srv:  # gaps of 50 ms: chunks never merge
        result = run_with_hog(srv.url, spec, block_s=0.04, every_s=0.005)
    check = result.client_check
    assert check.send_lag_p99_ms > 10
    assert any("late against the arrival schedule" in r for r in result.invalid_reasons)
    assert result.summary.ttft_from_schedule_ms.p99 > result.summary.ttft_ms.p99


def _summary(merged: int, chunks: int) -> LoadSummary:
    p = Percentiles.of([1.0])
    return LoadSummary(ttft_ms=p, itl_ms=p, tpot_ms=p, e2e_ms=p, output_tok_s=1, requests_s=1, completed=1, requests=1,
                       errors={}, error_rate=0, token_mismatches=0, duration_s=1, merged_chunks=merged,
                       token_chunks=chunks)


def test_merged_chunks_with_a_prompt_loop_are_attributed_to_the_server() -> None:
    shard = Shard(raws=[], loop_lag_ns=[100_000] * 99 + [4_000_000], read_lag_ns=[50_000] * 100)
    check = evaluate([shard], _summary(merged=30, chunks=100), LoadSpec(), CheckLimits())
    assert check.valid and check.notes and "the server sent them together" in check.notes[0]
    assert check.merged_by_client_frac == 0.0


def test_merged_chunks_with_a_late_loop_are_the_clients_fault() -> None:
    shard = Shard(raws=[], loop_lag_ns=[100_000] * 99 + [8_000_000])  # one 8 ms stall is enough
    check = evaluate([shard], _summary(merged=30, chunks=100), LoadSpec(), CheckLimits())
    assert not check.valid and check.reasons[0].startswith("30.0% of token chunks")
    assert "event-loop delay max 8.0 ms" in check.reasons[0]
    lenient = evaluate([shard], _summary(merged=30, chunks=100), LoadSpec(), CheckLimits(max_merged_token_frac=0.5))
    assert lenient.valid
    tolerant = evaluate([shard], _summary(merged=30, chunks=100), LoadSpec(), CheckLimits(merged_lag_tolerance_ms=10))
    assert tolerant.valid


def test_few_merged_chunks_are_fine_even_with_a_late_loop() -> None:
    shard = Shard(raws=[], loop_lag_ns=[20_000_000] * 10)
    assert evaluate([shard], _summary(merged=1, chunks=1000), LoadSpec(), CheckLimits()).valid


def test_limits_are_configurable_through_client_options() -> None:
    spec = LoadSpec(concurrency=2, requests=2, warmup=0, output_len=2)
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        limits = CheckLimits(max_loop_lag_p99_ms=-1.0)  # impossible to meet: always invalid
        result = asyncio.run(run_load_async(srv.url, "truth-model", spec, options=ClientOptions(limits=limits)))
    assert not result.valid and "event-loop delay" in result.invalid_reasons[0]


def _record(index: int, t_send: int, times: list[int]) -> RequestRecord:
    """A decoded request whose token chunks arrived at `times` (equal times: read together)."""
    r = RawRequest(index, False, None)
    r.t_send, r.status = t_send, 200
    for k, t in enumerate(times):
        r.ev_ts.append(t)
        last = k == len(times) - 1
        r.ev_data.append(b'{"choices":[{"text":" x","finish_reason":%s}]}' % (b'"length"' if last else b"null"))
    r.ev_ts.append(times[-1])
    r.ev_data.append(b"[DONE]")
    return decode(r)


def test_each_merge_is_judged_by_how_late_the_client_was_when_it_read_it() -> None:
    ms = 1_000_000
    t0 = 10**18

    # request 0's first two tokens were read together at +100 ms, while the loop was prompt: a server burst;
    # request 1's were read together at +400 ms, right after a 30 ms stall of the loop: the client's fault
    records = [_record(0, t0, [t0 + 100 * ms, t0 + 100 * ms, t0 + 110 * ms, t0 + 120 * ms]),
               _record(1, t0, [t0 + 400 * ms, t0 + 400 * ms, t0 + 410 * ms, t0 + 420 * ms])]
    probes = list(range(t0, t0 + 600 * ms, 5 * ms))
    lags = [30 * ms if abs(t - (t0 + 401 * ms)) < 3 * ms else 100_000 for t in probes]
    shard = Shard(raws=[], loop_lag_ns=lags, probe_at_ns=probes,
                  multi_reads={t0 + 100 * ms: t0 + 100 * ms + 50_000, t0 + 400 * ms: t0 + 401 * ms})
    summary = _summary(merged=2, chunks=8)
    summary.completed, summary.merged_first_tokens = 2, 2
    check = evaluate([shard], summary, LoadSpec(), CheckLimits(), records)
    assert check.merged_by_client_frac == 0.5  # one of the two first tokens
    assert not check.valid and "first tokens: 50.0%) while the client was more than 5 ms late" in check.reasons[0]
    prompt = Shard(raws=[], loop_lag_ns=[100_000] * len(probes), probe_at_ns=probes, multi_reads=shard.multi_reads)
    check = evaluate([prompt], summary, LoadSpec(), CheckLimits(), records)
    assert check.valid and check.merged_by_client_frac == 0.0 and "server sent them together" in check.notes[0]


def test_only_a_stall_still_going_on_when_the_later_chunk_arrived_blames_the_client() -> None:
    ms = 1_000_000
    t0 = 10**18
    merged_at = t0 + 200 * ms  # tokens 1 and 2 read together, promptly (50 us after the later one arrived)
    records = [_record(0, t0, [t0 + 190 * ms, merged_at, merged_at])]
    probes = list(range(t0, t0 + 400 * ms, 5 * ms))
    summary = _summary(merged=1, chunks=3)
    summary.completed = 1

    def verdict(stall_fired_at: int) -> float:
        lags = [20 * ms if t == stall_fired_at else 50_000 for t in probes]
        shard = Shard(raws=[], loop_lag_ns=lags, probe_at_ns=probes, multi_reads={merged_at: merged_at + 50_000})
        return evaluate([shard], summary, LoadSpec(), CheckLimits(), records).merged_by_client_frac

    assert verdict(t0 + 195 * ms) == 0.0  # a 20 ms stall that ended 5 ms before: token 1 was read alone after it
    assert verdict(t0 + 205 * ms) > 0.0  # the same stall ending 5 ms after: it covered the arrival, token 1 waited
    assert verdict(t0 + 300 * ms) == 0.0  # long after: nothing to do with it
