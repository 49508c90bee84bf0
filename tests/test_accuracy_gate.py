"""The paired FP8 accuracy gate: TRT-LLM's numbers, paired power, directions, and its error rates."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from pytest_llmserve.checks.accuracy_gate import (
    AccuracyGateResult,
    accuracy_gate,
    trtllm_min_detectable,
    trtllm_threshold,
)
from pytest_llmserve.checks.stats import binomial_cdf, binomial_sf


def paired_binary(rng: np.random.Generator, n: int, acc: float, churn: float, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 outcomes: churn/2 of items flip each way, plus `drop` extra items lost by the candidate."""
    p10, p01 = churn / 2 + drop, churn / 2
    counts = rng.multinomial(n, [acc - p10, p10, p01, 1 - acc - p01])
    return np.repeat([1.0, 1.0, 0.0, 0.0], counts), np.repeat([1.0, 0.0, 1.0, 0.0], counts)


@pytest.mark.parametrize("n, theta, margin", [(4096, 2.75, 1.82), (1024, 5.49, 3.63), (512, 7.77, 5.14)])
def test_trtllm_helpers_reproduce_the_published_mmlu_table(n, theta, margin):
    assert round(trtllm_min_detectable(50, n), 2) == theta
    assert round(68.17 - trtllm_threshold(68.17, 50, n), 2) == margin
    assert round(trtllm_threshold(10.0, 50, n, higher_is_better=False) - 10.0, 2) == margin


def test_paired_gate_fails_a_drop_that_the_unpaired_trtllm_threshold_lets_through():
    base, cand = paired_binary(np.random.default_rng(0), 4096, 0.40, 0.02, 0.015)
    drop_pp = 100 * (base.mean() - cand.mean())
    sigma_pp = 100 * np.sqrt(base.mean() * (1 - base.mean()))
    assert 100 * cand.mean() >= trtllm_threshold(100 * base.mean(), sigma_pp, base.size)  # unpaired: passes
    r = accuracy_gate(base, cand, tolerance=0.0)
    assert r.verdict == "fail" and r.drop * 100 == pytest.approx(drop_pp)
    assert r.min_detectable_drop < r.min_detectable_drop_unpaired / 2
    assert r.mcnemar is not None and r.mcnemar.p_candidate_worse < 1e-3


def test_identical_precisions_pass_with_zero_delta():
    base = (np.random.default_rng(1).random(1000) < 0.3).astype(float)
    r = accuracy_gate(base, base.copy())
    assert r.passed and r.delta.estimate == 0 and r.sd_diff == 0
    assert r.min_detectable_drop == pytest.approx(r.tolerance)


def test_drop_within_tolerance_passes_and_beyond_it_fails():
    rng = np.random.default_rng(2)
    small = accuracy_gate(*paired_binary(rng, 5000, 0.5, 0.02, 0.004), tolerance=0.01)
    large = accuracy_gate(*paired_binary(rng, 5000, 0.5, 0.02, 0.03), tolerance=0.01)
    assert small.verdict == "pass" and large.verdict == "fail"
    assert large.candidate_score < large.threshold and small.candidate_score >= small.threshold
    assert "exceeds the tolerated 1.00 pp" in large.reason


def test_threshold_restates_the_verdict_as_a_candidate_score():
    rng = np.random.default_rng(3)
    for drop in (0.0, 0.01, 0.02, 0.03):
        r = accuracy_gate(*paired_binary(rng, 3000, 0.4, 0.05, drop), tolerance=0.01)
        assert (r.candidate_score < r.threshold) == (r.verdict == "fail")


def test_few_discordant_items_do_not_fail_on_bootstrap_noise_alone():
    base = np.ones(1000)
    cand = base.copy()
    cand[:4] = 0  # 4 items lost, none won: exact one-sided McNemar p = 1/16
    r = accuracy_gate(base, cand, tolerance=0.0)
    assert r.mcnemar is not None and r.mcnemar.p_candidate_worse == pytest.approx(1 / 16)
    assert r.delta.high < 0  # the bootstrap bound alone would call it a drop
    assert r.verdict == "pass"


def test_lower_is_better_metric_fails_when_it_rises():
    rng = np.random.default_rng(4)
    nll = rng.gamma(2.0, 2.0, 3000)
    worse = accuracy_gate(nll, nll + rng.normal(0.05, 0.1, nll.size), metric="nll", tolerance=0.01,
                          higher_is_better=False)
    better = accuracy_gate(nll, nll - 0.05, metric="nll", tolerance=0.01, higher_is_better=False)
    assert worse.verdict == "fail" and worse.threshold < worse.candidate_score and worse.mcnemar is None
    assert better.verdict == "pass" and better.drop < 0


def test_underpowered_gate_is_inconclusive_when_a_detectable_drop_is_required_and_says_how_many_items():
    rng = np.random.default_rng(5)
    small = accuracy_gate(*paired_binary(rng, 200, 0.4, 0.1, 0.0), require_detectable=0.03)
    assert small.verdict == "inconclusive" and "underpowered" in small.reason and not small.passed
    need = int(small.reason.rsplit("about ", 1)[1].split()[0])
    big = accuracy_gate(*paired_binary(rng, int(need * 1.3), 0.4, 0.1, 0.0), require_detectable=0.03)
    assert big.verdict == "pass" and big.min_detectable_drop <= 0.03


def test_mismatched_items_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="same items"):
        accuracy_gate([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="tolerance"):
        accuracy_gate([1, 0, 1], [1, 0, 1], tolerance=-0.1)


def test_render_shows_every_number_a_reviewer_needs():
    r = accuracy_gate(*paired_binary(np.random.default_rng(6), 5120, 0.2, 0.01, 0.0), metric="next-token")
    text = r.render()
    for needle in ("next-token", "n=5120", "α=0.05", "β=0.2", "δ=1.00 pp", f"{100 * r.baseline_score:.2f} %",
                   f"{100 * r.candidate_score:.2f} %", f"{100 * r.delta.low:+.2f} pp", f"{100 * r.threshold:.2f} %",
                   f"{100 * r.min_detectable_drop:.2f} pp", f"{100 * r.min_detectable_drop_unpaired:.2f} pp",
                   f"{r.p_value:.4g}", "McNemar", "PASS", "Could detect", "Could not"):
        assert needle in text, needle
    assert r.as_dict()["verdict"] == "pass"


def test_same_seed_same_result():
    data = paired_binary(np.random.default_rng(7), 2000, 0.5, 0.05, 0.01)
    assert accuracy_gate(*data, seed=3) == accuracy_gate(*data, seed=3)


# --- error rates by simulation: the real gate must pass, trivial gates must not --------------------------

Gate = Callable[[np.ndarray, np.ndarray], str]
SIMS, ALPHA, MIN_POWER = 300, 0.05, 0.8


def real_gate(base: np.ndarray, cand: np.ndarray) -> str:
    return accuracy_gate(base, cand, tolerance=0.0, alpha=ALPHA, n_resamples=1000, seed=0).verdict


def simulated_fail_counts(gate: Gate) -> tuple[int, int]:
    """Fails under no change (δ = 0, the hardest null) and under a 5 pp drop, n = 500 items."""
    rng = np.random.default_rng(2024)
    null = sum(gate(*paired_binary(rng, 500, 0.4, 0.1, 0.0)) == "fail" for _ in range(SIMS))
    drop = sum(gate(*paired_binary(rng, 500, 0.4, 0.1, 0.05)) == "fail" for _ in range(SIMS))
    return null, drop


def error_rates_acceptable(null_fails: int, drop_fails: int) -> bool:
    """Binomial tolerances: a correct gate breaks either bound with probability < 1e-6."""
    max_null = next(k for k in range(SIMS + 1) if binomial_sf(k + 1, SIMS, ALPHA) < 1e-6)
    min_drop = next(k for k in range(SIMS, -1, -1) if binomial_cdf(k - 1, SIMS, MIN_POWER) < 1e-6)
    return null_fails <= max_null and drop_fails >= min_drop


@pytest.mark.parametrize(
    "gate, acceptable",
    [(real_gate, True), (lambda b, c: "fail", False), (lambda b, c: "pass", False)],
    ids=["paired-gate", "always-fails", "always-passes"],
)
def test_false_alarm_rate_is_at_most_alpha_and_a_large_drop_is_caught(gate: Gate, acceptable: bool):
    null, drop = simulated_fail_counts(gate)
    assert error_rates_acceptable(null, drop) == acceptable, (null, drop)


def test_result_is_a_frozen_dataclass():
    r = accuracy_gate([1, 0, 1, 1], [1, 0, 1, 0])
    assert isinstance(r, AccuracyGateResult)
    with pytest.raises(AttributeError):
        r.verdict = "pass"  # type: ignore[misc]


def test_flips_clustered_in_passages_widen_the_interval_and_shrink_the_effective_n():
    # 40 passages x 128 positions; 4 passages lose 12 positions each, the others none: clustered losses
    rng = np.random.default_rng(11)
    base = (rng.random(40 * 128) < 0.4).astype(float)
    cand = base.copy()
    groups = np.repeat(np.arange(40), 128)
    for g in range(4):
        hit = np.flatnonzero((groups == g) & (base == 1))[:12]
        cand[hit] = 0.0
    iid = accuracy_gate(base, cand, tolerance=0.0)
    clustered = accuracy_gate(base, cand, tolerance=0.0, groups=groups)
    assert iid.verdict == "fail"  # 48 losses, 0 wins: decisive if the positions were independent
    assert clustered.n_clusters == 40 and clustered.design_effect > 2 and clustered.effective_n < 0.5 * clustered.n
    assert clustered.delta.low < iid.delta.low and clustered.min_detectable_drop > iid.min_detectable_drop
    assert "40 clusters" in clustered.render() and "effective n" in clustered.render()


def test_group_labels_must_match_the_items():
    with pytest.raises(ValueError, match="one label per item"):
        accuracy_gate([1, 0, 1, 1], [1, 0, 1, 0], groups=["a", "b"])
