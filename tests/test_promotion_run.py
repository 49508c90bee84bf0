"""Live promotion runs: ABBA interleaving, round-aware gating, error counts, stored sample sets, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_llmserve import cli
from pytest_llmserve.load import LoadSpec
from pytest_llmserve.gates.promotion import (
    ABRun,
    Arm,
    ArmSamples,
    error_check,
    gate,
    interleaved_order,
    load_samples,
    run_ab,
    save_samples,
    spec_key,
)
from pytest_llmserve.testing import Script, TruthServer

SPEC = LoadSpec(concurrency=2, requests=8, warmup=0, input_len=4, output_len=4)


def arm(name: str, rng: np.random.Generator, rounds: int = 4, n: int = 300, scale: float = 1.0,
        round_sd: float = 0.0, tput: float = 1000.0) -> ArmSamples:
    """Synthetic samples: lognormal TTFT/TPOT/E2E per request; `round_sd` shifts each round as a whole."""
    a = ArmSamples(name, f"http://{name}", spec=spec_key(SPEC))
    for _ in range(rounds):
        shift = float(np.exp(rng.normal(0, round_sd)))
        a.ttft_ms.append(list(scale * shift * (20 + rng.lognormal(np.log(40), 0.4, n))))
        a.tpot_ms.append(list(scale * shift * (2 + rng.lognormal(np.log(3), 0.2, n))))
        a.e2e_ms.append(list(scale * shift * (200 + rng.lognormal(np.log(100), 0.3, n))))
        a.output_tok_s.append(tput / scale * float(rng.normal(1, 0.01)))
        a.requests += n
    return a


def test_rounds_are_interleaved_abba_so_linear_drift_cancels():
    order = [side for pair in interleaved_order(4) for side in pair]
    assert order == ["incumbent", "candidate", "candidate", "incumbent"] * 2
    # positions 0..7 under a linear drift: both sides have the same mean position
    pos = {s: np.mean([i for i, x in enumerate(order) if x == s]) for s in ("incumbent", "candidate")}
    assert pos["incumbent"] == pos["candidate"]


def test_same_distribution_rarely_reads_as_a_regression():
    rng = np.random.default_rng(7)
    verdicts = [c.verdict for _ in range(25) for c in gate(arm("c", rng), arm("i", rng)).checks]
    # one-sided α = 5 % per metric is the promise (a regression must also reach past the margin, so fewer)
    assert verdicts.count("regression") <= 5, verdicts
    assert verdicts.count("pass") >= 90


def test_thirty_percent_slower_candidate_is_a_regression_on_every_latency_metric():
    rng = np.random.default_rng(8)
    result = gate(arm("c", rng, scale=1.3), arm("i", rng))
    verdicts = {c.metric: c.verdict for c in result.checks}
    assert verdicts == {"ttft_p95_ms": "regression", "tpot_p95_ms": "regression", "e2e_p95_ms": "regression",
                        "output_tok_s": "regression"}
    assert result.exit_code == 1


def test_rounds_that_differ_make_the_round_the_unit_and_widen_the_interval():
    rng = np.random.default_rng(9)
    quiet = gate(arm("c", rng), arm("i", rng), metrics=["ttft_p95_ms"]).checks[0]
    drifting = gate(arm("c", rng, round_sd=0.15), arm("i", rng, round_sd=0.15), metrics=["ttft_p95_ms"]).checks[0]
    assert drifting.statistic == "p95/round" and drifting.n_candidate == 4
    assert "the round is the unit" in drifting.reason
    assert drifting.change.half_width > quiet.change.half_width
    # with the round-to-round spread in the interval, a 10 % margin cannot be decided from 4 rounds
    assert drifting.verdict == "inconclusive" and "rounds per side" in drifting.reason


def test_fewer_than_three_rounds_says_drift_was_not_checked():
    rng = np.random.default_rng(10)
    check = gate(arm("c", rng, rounds=2), arm("i", rng, rounds=2), metrics=["e2e_p95_ms"]).checks[0]
    assert "round-to-round variation not checked" in check.reason


def test_unknown_metric_names_the_accepted_forms():
    with pytest.raises(ValueError, match=r"<ttft\|tpot\|e2e>_<p95"):
        gate(arm("c", np.random.default_rng(0)), arm("i", np.random.default_rng(1)), metrics=["itl_p95_ms"])


@pytest.mark.parametrize("kc, ki, verdict", [(0, 0, "pass"), (12, 0, "regression"), (2, 1, "pass"), (30, 10, "regression")])
def test_more_failed_requests_is_a_regression_only_beyond_chance(kc, ki, verdict):
    c, i = ArmSamples("c", "u", requests=1000, errors={"timeout": kc}), ArmSamples("i", "u", requests=1000,
                                                                                    errors={"timeout": ki})
    assert error_check(c, i)[0] == verdict


def test_invalid_rounds_make_the_verdict_inconclusive_unless_allowed():
    rng = np.random.default_rng(11)
    cand, inc = arm("c", rng), arm("i", rng)
    cand.invalid.append("round 2: the client fell behind")
    result = gate(cand, inc)
    strict = ABRun(cand, inc, SPEC, 4, True, result, error_check(cand, inc))
    assert strict.verdict == "inconclusive" and strict.exit_code == 2
    assert "not trusted" in strict.render()
    lenient = ABRun(cand, inc, SPEC, 4, True, result, error_check(cand, inc), allow_invalid=True)
    assert lenient.verdict == result.verdict


def test_stored_samples_round_trip_and_refuse_other_work(tmp_path):
    rng = np.random.default_rng(12)
    path = save_samples(arm("old", rng), tmp_path / "old.json")
    again = load_samples(path, SPEC)
    assert again.ttft_ms == arm("old", np.random.default_rng(12)).ttft_ms
    with pytest.raises(ValueError, match="output_len: stored 4, now 64"):
        load_samples(path, LoadSpec(concurrency=2, requests=8, input_len=4, output_len=64))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="--record-only"):
        load_samples(tmp_path / "bad.json", SPEC)


def test_markdown_leads_with_the_verdict_and_collapses_the_reasoning():
    rng = np.random.default_rng(13)
    cand, inc = arm("new", rng, scale=1.3), arm("old", rng)
    ab = ABRun(cand, inc, SPEC, 4, True, gate(cand, inc), error_check(cand, inc))
    md = ab.markdown()
    assert md.splitlines()[0] == "### ❌ promotion: `new` vs `old`: **REGRESSION**"
    assert "<details><summary>how this was decided</summary>" in md
    assert md.index("| ttft_p95_ms") < md.index("<details>")


# ------------------------------------------------------------------ against real streaming servers
def test_live_ab_against_a_much_slower_server_is_a_regression_with_exit_1(capsys):
    spec = LoadSpec(concurrency=8, requests=24, warmup=0, input_len=4, output_len=4)
    # 5 ms vs 150 ms to the first token: a gap no scheduling noise on a busy machine can close
    with TruthServer(Script(ttft_ms=5, itl_ms=20)) as fast, TruthServer(Script(ttft_ms=150, itl_ms=20)) as slow:
        ab = run_ab(Arm("slow", slow.url, "truth-model"), Arm("fast", fast.url, "truth-model"), spec, rounds=4,
                    metrics=["ttft_p95_ms", "e2e_p95_ms"], allow_invalid=True, server_metrics=False)
    assert ab.interleaved and ab.verdict == "regression" and ab.exit_code == 1
    assert {c.verdict for c in ab.result.checks} == {"regression"}
    assert len(ab.candidate.ttft_ms) == 4 and all(len(r) == 24 for r in ab.candidate.ttft_ms)


def test_cli_same_server_twice_is_never_a_regression_and_records_then_reuses_samples(tmp_path, capsys):
    with TruthServer(Script(ttft_ms=10, itl_ms=20)) as server:
        common = ["--model", "truth-model", "--concurrency", "4", "--requests", "40", "--rounds", "3", "--warmup", "0",
                  "--input-len", "4", "--output-len", "3", "--quiet", "--no-server-metrics", "--margin", "0.5"]
        code = cli.main(["promote", "--candidate-url", server.url, "--incumbent-url", server.url, *common,
                         "--json", str(tmp_path / "ab.json"), "--md", str(tmp_path / "ab.md")])
        assert code in (0, 2)
        data = json.loads((tmp_path / "ab.json").read_text())
        assert data["exit_code"] == code and data["interleaved"] is True
        assert [c["metric"] for c in data["checks"]] == ["ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms", "output_tok_s"]
        assert cli.main(["promote", "--record-only", "--candidate-url", server.url, "--save-samples",
                         str(tmp_path / "inc.json"), *common]) == 0
        code = cli.main(["promote", "--candidate-url", server.url, "--incumbent-samples", str(tmp_path / "inc.json"),
                         *common, "--json", str(tmp_path / "stored.json")])
    assert code in (0, 2)
    assert json.loads((tmp_path / "stored.json").read_text())["interleaved"] is False


@pytest.mark.parametrize("args, message", [
    (["--candidate-url", "http://127.0.0.1:9"], "exactly one of --incumbent-url and --incumbent-samples"),
    (["--candidate-url", "http://a", "--incumbent-url", "http://b", "--incumbent-samples", "f"], "exactly one"),
    (["--candidate-url", "http://a", "--record-only"], "--record-only needs --save-samples"),
    (["--incumbent-url", "http://b"], "required: --candidate-url"),
])
def test_cli_usage_errors_exit_3_not_2_which_means_inconclusive(args, message, capsys):
    assert cli.main(["promote", *args]) == 3
    assert message in capsys.readouterr().err


def test_promotion_suite_fails_a_slower_candidate_and_reports_it(pytester):
    suite = (Path(__file__).resolve().parents[1] / "suites" / "test_promotion.py").read_text()
    pytester.makepyfile(test_promotion_suite_copy=suite)  # a name no module in tests/ has
    with TruthServer(Script(ttft_ms=5, itl_ms=20)) as fast, TruthServer(Script(ttft_ms=150, itl_ms=20)) as slow:
        pytester.makefile(".toml", llmserve=f"""
[[targets]]
name = "old"
kind = "openai"
url = "{fast.url}"
model = "truth-model"

[[targets]]
name = "new"
kind = "openai"
url = "{slow.url}"
model = "truth-model"
options = {{ promotion_incumbent = "old", promotion_requests = 40, promotion_rounds = 3, promotion_input_len = 4, promotion_output_len = 3, promotion_metrics = ["ttft_p95_ms", "e2e_p95_ms"] }}
""")
        result = pytester.runpytest("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider", "-rs",
                                    "--llmserve-report-json", "r.json")
    result.assert_outcomes(failed=1, skipped=1)
    out = result.stdout.str()
    assert "target 'old' names no incumbent" in out
    assert "VERDICT: REGRESSION" in out
    data = json.loads((pytester.path / "r.json").read_text())
    (entry,) = data["results"]
    assert entry["kind"] == "promotion" and entry["verdict"] == "regression" and entry["target"] == "new"
    assert [r["metric"].split()[0] for r in entry["rows"]] == ["ttft_p95_ms", "e2e_p95_ms", "failed", "run"] or \
        [r["metric"].split()[0] for r in entry["rows"]] == ["ttft_p95_ms", "e2e_p95_ms", "failed"]
    assert entry["rows"][0]["verdict"] == "regression" and entry["rows"][0]["limit"].startswith("margin 10%")
