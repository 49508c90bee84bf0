"""pytest-benchmark bridge: every llm_load run is an entry of --benchmark-json, with per-request stats."""

from __future__ import annotations

import json
import statistics
import types

import pytest

from pytest_llmserve.integrations.benchmark import LoadBenchmark, entry_for_run, wanted
from pytest_llmserve.settings.config import Target
from pytest_llmserve.load import LoadSpec, run_load
from pytest_llmserve.testing import Script, TruthServer

pytest.importorskip("pytest_benchmark")

SCRIPT = Script(ttft_ms=10, itl_ms=20)  # 3 tokens: the truth server needs >= 50 ms per request


@pytest.fixture(scope="module")
def truth_url():
    with TruthServer(SCRIPT) as server:
        yield server.url


def test_metadata_stats_are_pytest_benchmarks_own_over_the_samples():
    data = (0.05, 0.07, 0.06, 0.20)
    entry = LoadBenchmark("t::llm_load#1", "m.py::t::llm_load#1", "llmserve x", None, None, data, {"k": 1})
    flat = entry.to_metadata().as_dict(include_data=True)
    stats = flat["stats"]
    assert stats["rounds"] == 4 and stats["iterations"] == 1 and stats["data"] == list(data)
    assert (stats["min"], stats["max"]) == (0.05, 0.20)
    assert stats["mean"] == pytest.approx(statistics.mean(data))
    assert stats["median"] == pytest.approx(statistics.median(data))
    assert stats["stddev"] == pytest.approx(statistics.stdev(data))
    assert stats["ops"] == pytest.approx(1 / statistics.mean(data))
    assert flat["extra_info"] == {"k": 1} and flat["fullname"] == "m.py::t::llm_load#1"
    assert LoadBenchmark.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry


def test_entry_samples_are_per_request_end_to_end_seconds(truth_url):
    spec = LoadSpec(concurrency=2, requests=4, warmup=1, input_len=8, output_len=3)
    result = run_load(truth_url, SCRIPT.model, spec)
    item = types.SimpleNamespace(
        name="test_x[truth]", nodeid="m.py::test_x[truth]",
        callspec=types.SimpleNamespace(id="truth", params={"llm_target": Target(name="truth", kind="openai")}),
    )
    entry = entry_for_run(item, 2, "truth", "cpu-2c", result)
    measured = [r for r in result.records if not r.warmup]
    assert entry.data == tuple(r.e2e_ms / 1000 for r in measured)
    assert len(entry.data) == 4  # the warm-up request is not a round
    assert all(0.050 <= s < 5.0 for s in entry.data)  # scripted 10 + 2 x 20 ms; seconds, not ms
    assert (entry.name, entry.fullname) == ("test_x[truth]::llm_load#2", "m.py::test_x[truth]::llm_load#2")
    assert entry.params == {"llm_target": "truth"} and entry.param == "truth"
    assert entry.extra_info["metrics"]["e2e_p50_ms"] == result.metrics()["e2e_p50_ms"]
    assert entry.extra_info["target"] == "truth" and entry.extra_info["hardware"] == "cpu-2c"
    json.dumps(entry.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("args", "expected"),
    [((), False), (("--benchmark-json=b.json",), True), (("--benchmark-autosave",), True),
     (("--benchmark-json=b.json", "--benchmark-disable"), False), (("--benchmark-json=b.json", "--benchmark-skip"), False)],
)
def test_entries_are_added_only_when_pytest_benchmark_is_asked_for_output(pytester, args, expected):
    assert wanted(pytester.parseconfig(*args)) is expected


LOAD_TESTS = """
def test_one(llm_load):
    llm_load(concurrency=2, requests=4, warmup=0, input_len=8, output_len=3)
    llm_load(concurrency=1, requests=3, warmup=0, input_len=8, output_len=3)

def test_own_benchmark_too(llm_load, benchmark):
    benchmark.pedantic(sum, args=([1, 2],), rounds=2)
    llm_load(concurrency=2, requests=4, warmup=0, input_len=8, output_len=3)
"""


def test_load_runs_appear_in_benchmark_json_next_to_native_benchmarks(pytester, truth_url):
    pytester.makefile(".toml", llmserve=f'[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{truth_url}"\n'
                                        'model = "truth-model"\n')
    pytester.makepyfile(test_load=LOAD_TESTS)
    result = pytester.runpytest_subprocess("--benchmark-json", "bench.json", "--llmserve-hardware", "fake:cpu-2c")
    result.assert_outcomes(passed=2)
    out = json.loads((pytester.path / "bench.json").read_text())
    by_name = {b["fullname"]: b for b in out["benchmarks"]}
    assert sorted(by_name) == [
        "test_load.py::test_one[truth]::llm_load#1",
        "test_load.py::test_one[truth]::llm_load#2",
        "test_load.py::test_own_benchmark_too[truth]",
        "test_load.py::test_own_benchmark_too[truth]::llm_load#1",
    ]
    second = by_name["test_load.py::test_one[truth]::llm_load#2"]
    assert second["name"] == "test_one[truth]::llm_load#2" and second["group"] == "llmserve truth"
    assert second["param"] == "truth" and second["params"] == {"llm_target": "truth"}
    stats = second["stats"]
    assert stats["rounds"] == 3 and len(stats["data"]) == 3
    assert 0.050 <= stats["min"] <= stats["median"] <= stats["max"] < 5.0
    info = second["extra_info"]
    assert info["target"] == "truth" and info["hardware"] == "cpu-2c" and info["spec"]["requests"] == 3
    assert set(info["metrics"]) >= {"ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms", "output_tok_s", "error_rate"}
    assert second["options"]["timer"].startswith("llmserve load client")
    assert out["machine_info"]["llmserve_hardware"]["label"] == "cpu-2c"
    assert by_name["test_load.py::test_own_benchmark_too[truth]"]["stats"]["rounds"] == 2  # the native one
