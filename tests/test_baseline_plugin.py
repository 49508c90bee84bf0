"""The statistical baseline gate through pytest: record then gate, inconclusive fail/warn, re-measuring
invalid rounds, old one-number files, shape refusal, corrupt sidecar, and the new options (flag, env, ini)."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from pytest_llmserve.testing import Script, TruthServer

ARGS = ("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider", "-p", "no:randomly")
SEQUENTIAL = """
def test_gate(llm_load):
    llm_load.until_decided(concurrency=2, requests=8, warmup=0, input_len=4, output_len={out}).assert_slo()
"""
PLAIN = """
def test_gate(llm_load):
    llm_load(concurrency=2, requests=6, warmup=0, input_len=4, output_len=3).assert_slo()
"""
ENTRY = "test_gate.py::test_gate[truth]"


class FailsFirst(TruthServer):
    """A stand-in server that resets the connection of its first `n` completions, then serves normally."""

    def __init__(self, n: int, script: Script) -> None:
        self._left, self._good = n, script
        super().__init__(script)

    @property
    def script(self) -> Script:  # read once per request
        if self._left > 0:
            self._left -= 1
            return self._good.with_overrides({"reset_after": 1})
        return self._good

    @script.setter
    def script(self, value: Script) -> None:
        self._good = value


@pytest.fixture(scope="module")
def truth_url():
    with TruthServer(Script(ttft_ms=10, itl_ms=20)) as server:
        yield server.url


def _project(pytester, url, body=PLAIN, gate="budget_s = 1\nmargin = { ttft_p95_ms = 0.5, itl_p50_ms = 0.5, "
             "output_tok_s = 0.5 }", out=3):
    # a lenient client self-check: a busy machine must not turn these tests into tests of the self-check
    pytester.makefile(".toml", llmserve=f'[baseline_gate]\n{gate}\n\n[[targets]]\nname = "truth"\nkind = "openai"\n'
                                         f'url = "{url}"\nmodel = "truth-model"\n'
                                         'client = { max_merged_token_frac = 1.0, max_loop_lag_p99_ms = 1000 }\n')
    pytester.makepyfile(test_gate=body.format(out=out))


def _stored(pytester):
    hw = pytester.path / "baselines" / "cpu-2c"
    return json.loads((hw / "truth.json").read_text()), hw / "truth.samples.json.gz"


def test_record_then_gate_passes_the_same_server_catches_a_slower_one_and_refuses_bad_baselines(pytester, truth_url):
    _project(pytester, truth_url, SEQUENTIAL)
    pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "2").assert_outcomes(passed=1)
    data, side = _stored(pytester)
    entry = data["entries"][ENTRY]
    assert data["schema"] == 2 and entry["repeats"] >= 2 and entry["shape"]["output_len"] == 3
    assert set(entry["metrics"]["ttft_p95_ms"]) == {"value", "ci95", "n", "rounds", "run_to_run"}
    assert len(json.loads(gzip.decompress(side.read_bytes()))["entries"][ENTRY]) == entry["repeats"]

    same = pytester.runpytest(*ARGS, "-v", "--llmserve-report-json", "r.json")
    same.assert_outcomes(passed=1)
    assert "change [CI]" in same.stdout.str() and "detectable" in same.stdout.str()
    assert "measured " in same.stdout.str() and "; stopped: " in same.stdout.str()  # what it spent, and why
    rows = json.loads((pytester.path / "r.json").read_text())["results"][0]["baseline_gate"]
    gated = {r["metric"]: r for r in rows if r["gated"]}
    assert set(gated) == {"ttft_p95_ms", "itl_p50_ms", "output_tok_s"}
    assert all(r["verdict"] != "regression" and r["min_detectable"] > 0 for r in gated.values())

    with TruthServer(Script(ttft_ms=40, itl_ms=60)) as slow:  # 3x slower decode, 4x slower first token
        _project(pytester, slow.url, SEQUENTIAL)
        result = pytester.runpytest(*ARGS, "--llmserve-report-md", "out/r.md")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "itl_p50_ms: regression:" in out and "output_tok_s: regression:" in out
    assert "vs baseline" in out and "margin 50%" in out  # the terminal row carries the comparison
    md = (pytester.path / "out" / "r.md").read_text()
    assert "**Baseline comparison of `test_gate.py::test_gate[truth]`**" in md and "| regression |" in md
    png = next((pytester.path / "out" / "r-ecdf").glob("*.png"))
    assert png.read_bytes()[:4] == b"\x89PNG" and f"](r-ecdf/{png.name})" in md

    _project(pytester, truth_url, SEQUENTIAL, out=4)  # another request shape
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "recorded with another request shape" in out and "output_len=3" in out and "output_len=4" in out

    _project(pytester, truth_url, SEQUENTIAL)
    side.write_bytes(side.read_bytes()[:40])  # a truncated sample file
    result = pytester.runpytest(*ARGS, "--update-baselines")
    result.assert_outcomes(failed=1)
    assert "truth.samples.json.gz is corrupt" in result.stdout.str()
    assert len(side.read_bytes()) == 40 and _stored(pytester)[0] == data  # nothing overwritten


def test_a_one_start_baseline_assumes_the_configured_start_spread_and_says_so(pytester, truth_url):
    narrow = "budget_s = 1\nmargin = { ttft_p95_ms = 0.1, itl_p50_ms = 0.1, output_tok_s = 0.1 }"
    _project(pytester, truth_url, SEQUENTIAL, gate=narrow)
    pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "2").assert_outcomes(passed=1)
    gated = pytester.runpytest(*ARGS, "-v", "--llmserve-report-json", "r.json")
    gated.assert_outcomes(passed=1)  # inconclusive warns by default
    rows = {r["metric"]: r for r in json.loads((pytester.path / "r.json").read_text())["results"][0]["baseline_gate"]
            if r["gated"]}
    assert all(r["start_spread_assumed"] and r["start_to_start"] == 0.05 for r in rows.values())
    assert rows["itl_p50_ms"]["verdict"] == "inconclusive"  # 10 % margin, 5 % assumed a side: no room
    assert "a spread of 5% between starts is assumed (baseline_gate.start_spread)" in rows["itl_p50_ms"]["reason"]
    assert "--llmserve-add-start" in gated.stdout.str()  # the run's note says how to measure it instead
    _project(pytester, truth_url, SEQUENTIAL, gate=narrow + "\nstart_spread = 0")  # runs that repeat exactly
    pytester.runpytest(*ARGS, "--llmserve-report-json", "r.json").assert_outcomes(passed=1)
    rows = json.loads((pytester.path / "r.json").read_text())["results"][0]["baseline_gate"]
    assert not any(r["start_spread_assumed"] for r in rows)


def test_an_inconclusive_comparison_fails_or_warns_as_configured(pytester, truth_url):
    _project(pytester, truth_url)
    pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "1").assert_outcomes(passed=1)
    for mode in ("warn", "fail"):
        _project(pytester, truth_url, gate=f'inconclusive = "{mode}"')
        result = pytester.runpytest(*ARGS, "-v")  # 6 requests cannot decide a p95 (a p95 needs 200)
        out = result.stdout.str()
        assert "baseline comparison inconclusive for" in out
        # the one-round baseline is too small for a p95: the row says to re-record, and with how many repeats
        assert re.search(r"the baseline holds \d+ requests, fewer than the 200 a p95 needs: re-record with "
                         r"--llmserve-repeats \d+", out), out[-3000:]
        if mode == "warn":
            result.assert_outcomes(passed=1, warnings=1)
            assert "passed with a warning" in out
        else:
            result.assert_outcomes(failed=1)
            assert "inconclusive" in out.split("llmserve summary")[1]


def test_a_round_with_connection_resets_is_measured_again_and_the_report_says_why(pytester):
    with FailsFirst(10, Script(ttft_ms=5, itl_ms=5)) as server:  # more than a round: some reach round 1
        _project(pytester, server.url)
        result = pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "1", "-v")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "round 1: attempt 1 of 3 not usable (transient connection errors: connection_reset=" in out
    assert "attempts, the last valid" in out


def test_old_one_number_baseline_is_compared_the_old_way_and_says_to_re_record(pytester, truth_url):
    _project(pytester, truth_url)
    hw = pytester.path / "baselines" / "cpu-2c"
    hw.mkdir(parents=True)
    (hw / "truth.json").write_text(json.dumps({"schema": 1, "hardware": "cpu-2c", "target": "truth",
                                               "entries": {ENTRY: {"ttft_p95_ms": 0.5}}}))
    result = pytester.runpytest(*ARGS, "-v")
    result.assert_outcomes(failed=1)  # 10 ms against a stored 0.5 ms is far past the old rel 0.5 + 5 ms
    out = result.stdout.str()
    assert "old one-number format" in out and "re-record with --update-baselines" in out
    assert "regression" in out


def _set_option(pytester, monkeypatch, how: str, name: str, value: int) -> tuple[str, ...]:
    """Give option llmserve_<name> the value `value` as a flag (returned), an env variable or an ini key."""
    if how == "env":
        monkeypatch.setenv(f"LLMSERVE_{name.upper()}", str(value))
    elif how == "ini":
        pytester.makeini(f"[pytest]\nllmserve_{name} = {value}\n")
    return (f"--llmserve-{name}", str(value)) if how == "flag" else ()


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_repeats_option_sets_the_rounds_recorded(pytester, truth_url, monkeypatch, how):
    _project(pytester, truth_url)
    want = {"flag": 2, "env": 3, "ini": 1}[how]
    extra = _set_option(pytester, monkeypatch, how, "repeats", want)
    pytester.runpytest(*ARGS, "--update-baselines", *extra).assert_outcomes(passed=1)
    assert _stored(pytester)[0]["entries"][ENTRY]["repeats"] == want


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_retries_option_sets_how_often_an_invalid_round_is_measured_again(pytester, monkeypatch, how):
    want = {"flag": 1, "env": 0, "ini": 2}[how]
    extra = _set_option(pytester, monkeypatch, how, "retries", want)
    with TruthServer(Script(ttft_ms=5, itl_ms=5, reset_after=1)) as broken:  # every request reset
        _project(pytester, broken.url)
        result = pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "1", "-v", *extra)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert f"attempt {want + 1} of" not in out
    if want:
        assert f"round 1: attempt {want} of {want + 1} not usable (transient connection errors" in out
    else:
        assert "not usable" not in out


@pytest.mark.parametrize("args", [("--llmserve-repeats", "0"), ("--llmserve-retries", "x")])
def test_bad_counts_are_one_usage_error(pytester, args):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest(*ARGS, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{args[1]!r} is not an integer >= " in result.stderr.str()


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_add_start_option_adds_a_runs_rounds_as_the_next_server_start(pytester, truth_url, monkeypatch, how):
    _project(pytester, truth_url, SEQUENTIAL)
    pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "2").assert_outcomes(passed=1)
    first = _stored(pytester)[0]["entries"][ENTRY]["repeats"]
    if how == "env":
        monkeypatch.setenv("LLMSERVE_ADD_START", "yes")
    elif how == "ini":
        pytester.makeini("[pytest]\nllmserve_add_start = true\n")
    extra = ("--llmserve-add-start",) if how == "flag" else ()
    added = pytester.runpytest(*ARGS, "--llmserve-repeats", "2", "-v", *extra)
    added.assert_outcomes(passed=1)
    assert "baselines updated (old -> new):" in added.stdout.str()
    data, side = _stored(pytester)
    entry = data["entries"][ENTRY]
    starts = [r.get("start", 0) for r in json.loads(gzip.decompress(side.read_bytes()))["entries"][ENTRY]]
    assert entry["server_starts"] == 2 and entry["repeats"] == len(starts) > first
    assert starts == [0] * first + [1] * (len(starts) - first)
    assert "start_to_start" in entry["metrics"]["itl_p50_ms"]

    monkeypatch.delenv("LLMSERVE_ADD_START", raising=False)
    (pytester.path / "tox.ini").unlink(missing_ok=True)  # where makeini wrote it
    gated = pytester.runpytest(*ARGS, "--llmserve-report-json", "r.json")
    gated.assert_outcomes(passed=1)
    rows = json.loads((pytester.path / "r.json").read_text())["results"][0]["baseline_gate"]
    assert rows and {r["starts"] for r in rows} == {2}, gated.stdout.str()


def test_add_start_refuses_another_request_shape_and_records_a_first_start_when_nothing_is_stored(pytester, truth_url):
    _project(pytester, truth_url, SEQUENTIAL)
    fresh = pytester.runpytest(*ARGS, "--llmserve-add-start", "--llmserve-repeats", "1", "-v")
    fresh.assert_outcomes(passed=1)
    assert "no statistical baseline to add a server start to: recorded as its first start" in fresh.stdout.str()
    assert "server_starts" not in _stored(pytester)[0]["entries"][ENTRY]
    before = _stored(pytester)[0]
    _project(pytester, truth_url, SEQUENTIAL, out=4)
    other = pytester.runpytest(*ARGS, "--llmserve-add-start", "--llmserve-repeats", "1")
    other.assert_outcomes(failed=1)
    assert "recorded with another request shape" in other.stdout.str()
    assert _stored(pytester)[0] == before  # nothing added


def _stored_host(pytester, host):
    path = pytester.path / "baselines" / "cpu-2c" / "truth.json"
    data = json.loads(path.read_text())
    data["entries"][ENTRY]["host"] = host
    path.write_text(json.dumps(data))


def test_a_baseline_from_another_cpu_gives_no_verdict_and_takes_no_added_start(pytester, truth_url):
    from pytest_llmserve.hardware.host import host_fingerprint

    _project(pytester, truth_url, SEQUENTIAL)
    pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "2").assert_outcomes(passed=1)
    assert _stored(pytester)[0]["entries"][ENTRY]["host"] == host_fingerprint()
    _stored_host(pytester, {"cpu": "AMD EPYC 9R14", "isa": ["avx2"]})
    with TruthServer(Script(ttft_ms=40, itl_ms=60)) as slow:  # a regression this host would flag
        _project(pytester, slow.url, SEQUENTIAL)
        result = pytester.runpytest(*ARGS, "-v", "--llmserve-report-json", "r.json")
    result.assert_outcomes(passed=1)  # inconclusive = "warn" (the default)
    out = result.stdout.str()
    assert "the baseline was recorded on AMD EPYC 9R14 (avx2), this host is" in out and "no verdict across hosts" in out
    report = json.loads((pytester.path / "r.json").read_text())["results"][0]
    assert {r["verdict"] for r in report["baseline_gate"] if r["gated"]} == {"inconclusive"}
    assert report["measurement"]["rounds"] == 1 and "another host" in report["measurement"]["stopped"]  # no budget spent

    _project(pytester, truth_url, SEQUENTIAL)
    added = pytester.runpytest(*ARGS, "--llmserve-add-start", "--llmserve-repeats", "1")
    added.assert_outcomes(failed=1)
    assert "a start from another host is not added" in added.stdout.str()


def test_a_baseline_that_does_not_name_its_host_is_gated_with_a_note(pytester, truth_url):
    _project(pytester, truth_url, SEQUENTIAL)
    pytester.runpytest(*ARGS, "--update-baselines", "--llmserve-repeats", "2").assert_outcomes(passed=1)
    path = pytester.path / "baselines" / "cpu-2c" / "truth.json"
    data = json.loads(path.read_text())
    del data["entries"][ENTRY]["host"]
    path.write_text(json.dumps(data))
    result = pytester.runpytest(*ARGS, "-v")
    result.assert_outcomes(passed=1)
    assert "the baseline does not say which CPU recorded it" in result.stdout.str()
