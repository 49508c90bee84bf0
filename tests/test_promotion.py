"""The latency/throughput promotion gate: verdicts, sample-size rules, stored baselines, error rates."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest

from pytest_llmserve.checks.promotion import (
    EXIT_CODES,
    PromotionCheck,
    compare_samples,
    compare_to_stored,
    default_min_samples,
    parse_statistic,
    promote,
)
from pytest_llmserve.checks.stats import binomial_cdf, binomial_sf


def ttft(rng: np.random.Generator, n: int, scale: float = 1.0, sigma: float = 0.5) -> np.ndarray:
    return scale * (20.0 + rng.lognormal(math.log(40.0), sigma, n))


@pytest.mark.parametrize("stat, q, min_n", [("p95", 95.0, 200), ("P99", 99.0, 1000), ("median", 50.0, 20),
                                            ("p5", 5.0, 200), ("mean", None, 3)])
def test_statistics_parse_and_demand_enough_tail_samples(stat, q, min_n):
    assert parse_statistic(stat) == q
    assert default_min_samples(stat) == min_n


@pytest.mark.parametrize("bad", ["p100", "p0", "max", "95"])
def test_unknown_statistic_is_refused_with_examples(bad):
    with pytest.raises(ValueError, match="'p95'"):
        parse_statistic(bad)


def test_twenty_percent_slower_p95_is_a_regression_with_exit_code_1():
    rng = np.random.default_rng(0)
    r = compare_samples("ttft_ms", ttft(rng, 1500, 1.2), ttft(rng, 1500))
    assert r.verdict == "regression" and r.change.low > 0
    assert promote([r]).exit_code == 1
    assert "higher (worse)" in r.reason


def test_faster_candidate_is_an_improvement_that_suggests_updating_the_baseline():
    rng = np.random.default_rng(1)
    r = compare_samples("ttft_ms", ttft(rng, 1500, 0.75), ttft(rng, 1500))
    assert r.verdict == "improvement" and promote([r]).exit_code == 0
    assert "--update-baselines" in r.reason


def test_unchanged_build_passes_and_reports_what_it_could_detect():
    rng = np.random.default_rng(2)
    r = compare_samples("ttft_ms", ttft(rng, 3000, sigma=0.3), ttft(rng, 3000, sigma=0.3))
    assert r.verdict == "pass"
    assert r.change.half_width < 0.05 and 0.05 < r.min_detectable <= 0.11
    assert r.samples_needed < 3000


def test_small_but_significant_worsening_within_the_margin_passes():
    rng = np.random.default_rng(3)
    r = compare_samples("ttft_ms", ttft(rng, 20000, 1.04, 0.3), ttft(rng, 20000, 1.0, 0.3))
    assert r.change.low > 0 and r.change.high < r.margin
    assert r.verdict == "pass" and "significant" in r.reason


def test_too_few_samples_are_inconclusive_and_say_how_many_are_needed():
    rng = np.random.default_rng(4)
    r = compare_samples("ttft_ms", ttft(rng, 150, 1.5), ttft(rng, 150))
    assert r.verdict == "inconclusive" and r.samples_needed >= 200
    assert f"collect about {r.samples_needed} per side" in r.reason
    assert promote([r]).exit_code == 2


def test_wide_interval_that_cannot_rule_out_the_margin_is_inconclusive():
    rng = np.random.default_rng(5)
    r = compare_samples("ttft_ms", ttft(rng, 250, 1.05, 0.8), ttft(rng, 250, 1.0, 0.8))
    assert r.change.low <= 0 and r.change.high > r.margin
    assert r.verdict == "inconclusive" and r.samples_needed > 250


def test_throughput_is_higher_is_better_and_uses_a_t_interval_over_runs():
    rng = np.random.default_rng(6)
    inc, worse = rng.normal(6000, 60, 5), rng.normal(4800, 60, 5)
    r = compare_samples("output_tok_s", worse, inc, higher_is_better=True, statistic="mean")
    assert r.verdict == "regression" and r.change.estimate < -0.15 and r.worsening[0] > 0.15
    same = compare_samples("output_tok_s", rng.normal(6000, 60, 5), inc, higher_is_better=True, statistic="mean")
    assert same.verdict == "pass"
    one_run = compare_samples("output_tok_s", worse[:1], inc, higher_is_better=True, statistic="mean")
    assert one_run.verdict == "inconclusive"


def test_stored_summary_is_compared_with_the_candidate_interval():
    rng = np.random.default_rng(7)
    cand = ttft(rng, 2000)
    p95 = float(np.percentile(cand, 95))
    assert compare_to_stored("ttft_ms", cand, p95 / 1.3).verdict == "regression"
    ok = compare_to_stored("ttft_ms", cand, p95)
    assert ok.verdict == "pass" and ok.n_incumbent is None and ok.source == "stored"
    assert "candidate noise only" in ok.render()
    with pytest.raises(ValueError, match="--update-baselines"):
        compare_to_stored("ttft_ms", cand, 0.0)


def test_stored_standard_error_widens_the_interval_so_a_noisy_baseline_cannot_force_a_regression():
    rng = np.random.default_rng(10)
    cand = ttft(rng, 2000)
    stored = float(np.percentile(cand, 95)) / 1.13
    without = compare_to_stored("ttft_ms", cand, stored)
    with_se = compare_to_stored("ttft_ms", cand, stored, stored_se=0.08 * stored)
    assert without.verdict == "regression" and with_se.verdict == "inconclusive"
    assert with_se.change.half_width > 2 * without.change.half_width
    assert "stored value and its SE" in with_se.render()
    runs = rng.normal(6000, 60, 5)
    narrow = compare_to_stored("tok_s", runs, 6000.0, statistic="mean", higher_is_better=True)
    wide = compare_to_stored("tok_s", runs, 6000.0, statistic="mean", higher_is_better=True, stored_se=300.0)
    assert wide.change.half_width > narrow.change.half_width
    with pytest.raises(ValueError, match="standard error"):
        compare_to_stored("ttft_ms", cand, stored, stored_se=-1.0)


def test_overall_verdict_any_regression_wins_then_inconclusive():
    rng = np.random.default_rng(8)
    inc = ttft(rng, 1500)
    reg = compare_samples("a", ttft(rng, 1500, 1.3), inc)
    ok = compare_samples("b", ttft(rng, 1500), inc)
    unsure = compare_samples("c", ttft(rng, 50), inc)
    better = compare_samples("d", ttft(rng, 1500, 0.7), inc)
    assert [reg.verdict, ok.verdict, unsure.verdict, better.verdict] == ["regression", "pass", "inconclusive",
                                                                         "improvement"]
    assert promote([ok, unsure, reg]).verdict == "regression"
    assert promote([ok, unsure, better]).verdict == "inconclusive"
    assert promote([ok, better]).verdict == "improvement" and promote([ok]).verdict == "pass"
    assert promote([]).verdict == "inconclusive"
    assert EXIT_CODES == {"pass": 0, "improvement": 0, "regression": 1, "inconclusive": 2}


def test_render_lists_values_interval_detectability_and_exit_code():
    rng = np.random.default_rng(9)
    r = compare_samples("ttft_ms", ttft(rng, 1500, 1.2), ttft(rng, 1500))
    text = promote([r]).render()
    for needle in ("ttft_ms", "p95 ↓", f"{r.incumbent_value:.4g}", f"{r.candidate_value:.4g}",
                   f"{r.change.estimate:+.1%}", f"±{r.change.half_width:.1%}", f"{r.min_detectable:.1%}",
                   "1500/1500", "REGRESSION", "exit code 1", "margin 10%"):
        assert needle in text, needle
    assert isinstance(r, PromotionCheck) and r.as_dict()["verdict"] == "regression"


def test_bad_margin_and_nonpositive_samples_are_refused():
    with pytest.raises(ValueError, match="margin"):
        compare_samples("x", [1.0] * 300, [1.0] * 300, margin=0)
    with pytest.raises(ValueError, match="positive"):
        compare_samples("x", [1.0] * 300, [0.0] * 300)


# --- error rates by simulation: the real gate must pass, trivial gates must not --------------------------

Gate = Callable[[np.ndarray, np.ndarray], str]
SIMS, ALPHA, MIN_POWER, N = 200, 0.05, 0.8, 1500


def real_gate(cand: np.ndarray, inc: np.ndarray) -> str:
    return compare_samples("ttft_ms", cand, inc, alpha=ALPHA, n_resamples=1000, seed=0).verdict


def simulated_regression_counts(gate: Gate) -> tuple[int, int]:
    """Regressions flagged under no change and under a 10 % slowdown (p95 +10 %), lognormal σ=0.5."""
    rng = np.random.default_rng(2025)
    null = sum(gate(ttft(rng, N), ttft(rng, N)) == "regression" for _ in range(SIMS))
    slower = sum(gate(ttft(rng, N, 1.10), ttft(rng, N)) == "regression" for _ in range(SIMS))
    return null, slower


def error_rates_acceptable(null_flags: int, slow_flags: int) -> bool:
    """Binomial tolerances: a correct gate breaks either bound with probability < 1e-6."""
    max_null = next(k for k in range(SIMS + 1) if binomial_sf(k + 1, SIMS, ALPHA) < 1e-6)
    min_slow = next(k for k in range(SIMS, -1, -1) if binomial_cdf(k - 1, SIMS, MIN_POWER) < 1e-6)
    return null_flags <= max_null and slow_flags >= min_slow


@pytest.mark.parametrize(
    "gate, acceptable",
    [(real_gate, True), (lambda c, i: "regression", False), (lambda c, i: "pass", False)],
    ids=["promotion-gate", "always-regression", "always-passes"],
)
def test_false_alarms_stay_under_alpha_and_a_ten_percent_regression_is_caught(gate: Gate, acceptable: bool):
    null, slower = simulated_regression_counts(gate)
    assert error_rates_acceptable(null, slower) == acceptable, (null, slower)
