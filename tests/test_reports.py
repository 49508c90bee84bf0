"""Reports people read: the combined terminal table, JSON, Markdown for PRs, JUnit properties, baseline
changes, server metrics in SLO context, and progress lines that survive pytest's output capture."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_llmserve.store.entries import EntryChange
from pytest_llmserve.gates.outcome import server_lines
from pytest_llmserve.report.progress import Heartbeat, Snapshot, default_interval, format_progress
from pytest_llmserve.report.summary import change_lines
from pytest_llmserve.evidence.server_metrics import Sample, summarize_samples
from pytest_llmserve.testing import Script, TruthServer

TESTS = """
import pytest

def test_fast(llm_load):
    llm_load(concurrency=2, requests=6, warmup=0, input_len=4, output_len=3).assert_slo()

@pytest.mark.slo(ttft_p95_ms=0.001)
def test_strict(llm_load):
    llm_load(concurrency=2, requests=6, warmup=0, input_len=4, output_len=3).assert_slo()
"""


@pytest.fixture(scope="module")
def truth_url():
    # ITL well above scheduling noise, so the client self-check stays valid on a busy machine
    with TruthServer(Script(ttft_ms=10, itl_ms=20)) as server:
        yield server.url


def _project(pytester: pytest.Pytester, url: str, model: str = "truth-model") -> None:
    # wide gate margins: these tests are about the reports, not about catching a 10 % change
    pytester.makefile(".toml", llmserve='[baseline_gate]\nmargin = { ttft_p95_ms = 0.5, itl_p50_ms = 0.5, '
                                         'output_tok_s = 0.5 }\n\n'
                                         f'[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{url}"\n'
                                         f'model = "{model}"\n')
    pytester.makepyfile(test_perf=TESTS)


def test_session_reports_one_table_json_markdown_and_junit_properties(pytester, truth_url):
    _project(pytester, truth_url)
    args = ("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider")
    first = pytester.runpytest(*args, "--update-baselines")
    first.assert_outcomes(passed=1, failed=1)  # the absolute limit fails even while recording
    assert "baselines updated (old -> new):" in first.stdout.str()
    assert "ttft_p95_ms: (new) -> " in first.stdout.str()

    result = pytester.runpytest(*args, "--llmserve-report-json", "out/r.json", "--llmserve-report-md", "out/r.md",
                                "--junitxml", "out/junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    summary = out[out.index("llmserve summary"):]
    assert "2 checks: 1 passed, 1 failed" in summary
    head = next(line for line in summary.splitlines() if line.lstrip().startswith("target"))
    # the second run compares with the baseline the first recorded, so the statistical column is there too
    assert head.split() == ["target", "test", "metric", "measured", "limit", "baseline", "vs", "baseline", "verdict"]
    strict = [line for line in summary.splitlines() if "test_strict[truth]" in line and " ttft_p95_ms " in line]
    assert len(strict) == 1 and strict[0].startswith("x ") and strict[0].split()[-1] == "FAIL"
    assert "<= 0.001" in strict[0]
    fast = [line for line in summary.splitlines() if "test_fast[truth]" in line and " e2e_p95_ms " in line]
    # e2e is not a gated metric: its statistical verdict is information, in parentheses
    assert len(fast) == 1 and fast[0].split()[-1].strip("()") in ("ok", "pass", "improvement", "inconclusive")
    assert not fast[0].startswith("x")
    assert "SLO test_perf.py::test_fast[truth] |" not in summary  # full tables only with -v

    data = json.loads((pytester.path / "out" / "r.json").read_text())
    assert data["schema"] == 1 and data["summary"] == {"checks": 2, "passed": 1, "failed": 1}
    row = next(r for r in data["rows"] if r["test"].endswith("test_strict[truth]") and r["metric"] == "ttft_p95_ms")
    assert row["verdict"] == "FAIL" and row["limit"] == "<= 0.001" and row["baseline"] > 0
    assert {"server_metrics", "result", "metrics", "context", "rows"} <= set(data["results"][0])
    assert data["unused_baselines"] == []

    md = (pytester.path / "out" / "r.md").read_text()
    assert md.startswith("## ❌ llmserve: 1 of 2 checks passed (hardware `cpu-2c`)")
    assert md.index("| | check | target | test | what failed |") < md.index("<details>")
    failing = next(line for line in md.splitlines() if line.startswith("| ❌ | slo |"))
    assert "ttft_p95_ms" in failing and "(limit <= 0.001)" in failing and ": FAIL" in failing
    assert md.count("<details>") == md.count("</details>") == 1 + 2  # all metrics + one per check

    case = next(tc for tc in ET.parse(pytester.path / "out" / "junit.xml").iter("testcase")
                if tc.get("name") == "test_strict[truth]")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["llmserve.target"] == "truth" and props["llmserve.verdict"] == "fail"
    assert props["llmserve.ttft_p95_ms.limit"] == "<= 0.001" and props["llmserve.ttft_p95_ms.verdict"] == "FAIL"
    assert float(props["llmserve.ttft_p95_ms"]) > 0 and float(props["llmserve.ttft_p95_ms.baseline"]) > 0

    again = pytester.runpytest(*args, "--update-baselines")
    changed = again.stdout.str().split("baselines updated (old -> new):", 1)[1].splitlines()
    # the section is the indented block under its header (the failure table printed later has the same names)
    section = [line.strip() for line in itertools.takewhile(lambda line: line.startswith("  "), changed[1:])]
    moved = [line for line in section if line.startswith(("ttft_", "e2e_", "tpot_", "itl_"))]
    assert moved, changed[:20]
    # re-measured values: "metric: old -> new (+x.x%)"; a value that happens to repeat is only counted,
    # one the new run could not measure (NaN, never recorded) is listed as removed
    assert any(line.endswith("%)") for line in moved), moved
    assert all(" -> " in line for line in moved), moved


def test_verbose_summary_adds_every_full_table(pytester, truth_url):
    _project(pytester, truth_url)
    result = pytester.runpytest("--llmserve-hardware", "fake:cpu-2c", "-v", "-p", "no:cacheprovider", "-k", "fast",
                                "--update-baselines")
    summary = result.stdout.str().split("llmserve summary", 1)[1]
    assert "SLO test_perf.py::test_fast[truth] |" in summary


def test_baseline_change_lines_show_old_new_and_relative_change():
    change = EntryChange(Path("t.json"), "t::x", {"a_ms": 10.0, "b_ms": 5.0, "gone_ms": 1.0},
                            {"a_ms": 12.5, "b_ms": 5.0, "c_ms": 3.0})
    assert change_lines(change) == ["a_ms: 10.0 -> 12.5 (+25.0%)", "c_ms: (new) -> 3.0", "gone_ms: 1.0 -> (removed)",
                                    "(1 metric unchanged)"]


def test_server_metrics_become_slo_context_with_warnings():
    def sample(i: int, kv: float, pre: float) -> Sample:
        return Sample(i, "vllm", {"kv_usage": kv, "running": 8.0, "waiting": 3.0, "preemptions_total": pre,
                                  "queue_time_sum_s": 0.01 * i, "queue_time_count": 10.0 * i})

    lines = server_lines(summarize_samples([sample(1, 0.97, 0), sample(2, 0.99, 2), sample(3, 0.98, 5)]))
    assert lines[0].startswith("server (vllm, 3 samples): KV cache max 99.0 %, running max 8, waiting max 3, "
                               "preemptions 5, queue time mean 1.00 ms")
    assert any(line.startswith("WARNING: KV cache usage stayed above 95%") for line in lines)
    assert any(line.startswith("WARNING: 5 preemptions") for line in lines)
    assert server_lines(summarize_samples([])) == []


# ------------------------------------------------------------------ progress lines
def test_progress_line_says_target_level_counts_errors_time_and_time_left():
    assert (format_progress("tiny-vllm c=16", 12.34, 256, Snapshot(120, 3))
            == "llmserve: tiny-vllm c=16 120/256 requests, 3 errors, 12.3 s, ~14 s left")
    assert format_progress("x c=1", 2.0, 64) == "llmserve: x c=1 running 64 requests, 2.0 s"
    assert (format_progress("x", 1.0, 10, Snapshot(4), source="server count")
            == "llmserve: x 4/10 requests (server count), 1.0 s, ~2 s left")
    assert format_progress("x", 30.0, 1000, Snapshot(100)).endswith(", 30.0 s, ~4 min 30 s left")
    assert format_progress("x", 5.0, 10, Snapshot(0)) == "llmserve: x 0/10 requests, 5.0 s"  # no pace yet
    assert format_progress("x", 5.0, None, Snapshot(7)) == "llmserve: x 7 requests, 5.0 s"  # no total
    assert format_progress("x", 9.0, 10, Snapshot(10)) == "llmserve: x 10/10 requests, 9.0 s"


def test_heartbeat_emits_while_the_body_runs_and_stops_after():
    import time

    lines: list[str] = []
    with Heartbeat(lines.append, "t c=1", total=8, interval_s=0.05) as hb:
        hb.update(3, 1)
        time.sleep(0.3)
    n = len(lines)
    time.sleep(0.15)
    assert n >= 2 and len(lines) == n
    assert lines[-1].startswith("llmserve: t c=1 3/8 requests, 1 error, ")


def test_progress_interval_comes_from_the_environment_and_zero_turns_it_off(monkeypatch):
    monkeypatch.setenv("LLMSERVE_PROGRESS_INTERVAL", "0")
    assert Heartbeat(print, "x").emit is None
    monkeypatch.setenv("LLMSERVE_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="give seconds between progress lines"):
        default_interval()


def test_progress_lines_reach_the_terminal_through_capture_during_llm_load(pytester, truth_url, monkeypatch):
    monkeypatch.setenv("LLMSERVE_PROGRESS_INTERVAL", "0.2")
    pytester.makefile(".toml", llmserve=f'[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{truth_url}"\n'
                                         'model = "truth-model"\n')
    pytester.makepyfile("""
        def test_long(llm_load):
            # 12 sequential requests of ~10 + 3 x 20 ms: well over two progress intervals
            llm_load(concurrency=1, requests=12, warmup=0, input_len=4, output_len=4)
        """)
    result = pytester.runpytest("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider")  # capture on
    result.assert_outcomes(passed=1)
    lines = [line for line in result.outlines if line.startswith("llmserve: truth c=1 ")]
    assert lines, result.stdout.str()
    done = [int(line.split()[3].split("/")[0]) for line in lines]  # the client's own count of finished requests
    assert all(line.split()[3].endswith("/12") for line in lines) and done == sorted(done) and max(done) <= 12
    assert any(0 < n < 12 and line.endswith(" left") for n, line in zip(done, lines))


def test_cpu_vllm_run_puts_server_metrics_in_the_report(pytester, tiny_vllm):
    _project(pytester, tiny_vllm.base_url, tiny_vllm.model)
    result = pytester.runpytest("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider", "-k", "fast",
                                "--update-baselines", "--llmserve-report-json", "r.json", "-v")
    # pass or fail (a busy machine can make the client self-check reject the run): the report is the point
    assert sum(result.parseoutcomes().get(k, 0) for k in ("passed", "failed")) == 1
    server = json.loads((pytester.path / "r.json").read_text())["results"][0]["server_metrics"]
    assert server["source"] == "vllm" and server["samples"] >= 2
    assert server["kv_usage_max"] is not None and server["running_max"] is not None
    assert "server (vllm, " in result.stdout.str()


def test_invalid_run_under_update_keeps_the_stored_baseline(pytester, truth_url):
    _project(pytester, truth_url)
    args = ("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider", "-k", "fast", "--update-baselines")
    pytester.runpytest(*args).assert_outcomes(passed=1)
    stored = pytester.path / "baselines" / "cpu-2c" / "truth.json"
    before = json.loads(stored.read_text())["entries"]["test_perf.py::test_fast[truth]"]
    # a server that stops after 2 of the 3 tokens asked for: unmatched work makes the run invalid
    with TruthServer(Script(ttft_ms=10, itl_ms=20, tokens=2)) as short:
        _project(pytester, short.url)
        result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    assert "the stored baseline was kept, not overwritten" in result.stdout.str()
    assert json.loads(stored.read_text())["entries"]["test_perf.py::test_fast[truth]"] == before
