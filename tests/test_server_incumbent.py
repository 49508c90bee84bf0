"""Speculative-decoding acceptance against the incumbent: recorded with the baseline, gated by a relative drop."""

from __future__ import annotations

import json

import pytest

from pytest_llmserve.checks.server_incumbent import check_drops, server_field, stored_server
from pytest_llmserve.checks.slo import SloEvaluation, validate_limits
from pytest_llmserve.testing import Script, TruthServer

ARGS = ("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider", "-p", "no:randomly")
LIMIT = {"max_spec_acceptance_drop": 0.1}


def test_a_drop_beyond_the_limit_fails_naming_both_figures_and_the_limit():
    (bad,) = check_drops(LIMIT, {"spec_acceptance_length": 2.1}, {}, {"spec_acceptance_length": 2.6}, recording=False)
    assert bad.verdict == "FAIL" and bad.reason == "acceptance length 2.1 vs incumbent 2.6 (−19 %, limit −10 %)"
    (ok,) = check_drops(LIMIT, {"spec_acceptance_length": 2.4}, {}, {"spec_acceptance_length": 2.6}, recording=False)
    assert ok.verdict == "ok" and "(−8 %, limit −10 %)" in ok.reason
    report = SloEvaluation(metrics={}, limits=LIMIT, incumbent=[bad]).report("t")
    assert not report.passed and report.problems == ("max_spec_acceptance_drop: " + bad.reason,)
    assert [(r.metric, r.baseline, r.verdict) for r in report.rows] == [
        ("spec_acceptance_length_vs_incumbent", 2.6, "FAIL")]


def test_either_side_without_the_figure_is_not_measurable_and_says_which():
    why = {"spec_acceptance_length": "not measurable on this server: no speculative draft was made"}
    (c,) = check_drops(LIMIT, {}, why, {"spec_acceptance_length": 2.6}, recording=False)
    assert c.failed and "this run: not measurable on this server: no speculative draft" in c.reason
    (c,) = check_drops(LIMIT, {"spec_acceptance_length": 2.6}, {}, stored_server({"metrics": {}}), recording=False)
    assert c.verdict == "not measurable" and "baseline entry has no acceptance length" in c.reason
    (c,) = check_drops(LIMIT, {"spec_acceptance_length": 2.6}, {}, None, recording=False)
    assert "no baseline stored for this test" in c.reason
    (c,) = check_drops(LIMIT, {"spec_acceptance_length": 2.6}, {}, None, recording=True)
    assert c.verdict == "recorded" and not c.failed


def test_the_entry_keeps_the_server_figures_and_old_entries_read_as_having_none():
    assert server_field({"spec_acceptance_length": 2.60001, "prefix_cache_hit_rate": 0.5, "ttft_p95_ms": 3.0}) == {
        "server": {"spec_acceptance_length": 2.6, "prefix_cache_hit_rate": 0.5}}
    assert server_field({"ttft_p95_ms": 3.0}) == {}
    assert stored_server({"shape": {}, "metrics": {}}) == {} and stored_server({"ttft_p95_ms": 3.0}) == {}
    assert validate_limits(LIMIT, "w") == LIMIT
    with pytest.raises(ValueError, match="is a fraction"):
        validate_limits({"max_spec_acceptance_drop": 10}, "w")


TEST = """
import pytest

@pytest.mark.slo(max_spec_acceptance_drop=0.1)
def test_spec(llm_load):
    llm_load(concurrency=2, requests=6, warmup=0, input_len=4, output_len=8).assert_slo()
"""


def test_record_with_acceptance_2_6_then_2_6_passes_and_2_0_fails_naming_both(pytester):
    with TruthServer(Script(ttft_ms=5, itl_ms=5, spec_acceptance=2.6)) as server:
        # client metrics out of the gate (margin 0): this test is about the server's figure only
        pytester.makefile(".toml", llmserve=(
            '[baseline_gate]\nmargin = { ttft_p95_ms = 0, itl_p50_ms = 0, output_tok_s = 0 }\n\n'
            f'[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{server.url}"\nmodel = "truth-model"\n'
            'client = { max_merged_token_frac = 1.0, max_loop_lag_p99_ms = 1000 }\n'))
        pytester.makepyfile(test_spec=TEST)
        pytester.runpytest(*ARGS, "--update-baselines").assert_outcomes(passed=1)
        stored = json.loads((pytester.path / "baselines" / "cpu-2c" / "truth.json").read_text())
        assert stored["entries"]["test_spec.py::test_spec[truth]"]["server"]["spec_acceptance_length"] == 2.6

        same = pytester.runpytest(*ARGS, "-v")
        same.assert_outcomes(passed=1)
        assert "acceptance length 2.6 vs incumbent 2.6 (+0 %, limit −10 %)" in same.stdout.str()

        server.script = Script(ttft_ms=5, itl_ms=5, spec_acceptance=2.0)
        worse = pytester.runpytest(*ARGS)
        worse.assert_outcomes(failed=1)
        assert "max_spec_acceptance_drop: acceptance length 2.0 vs incumbent 2.6 (−23 %, limit −10 %)" in \
            worse.stdout.str()
