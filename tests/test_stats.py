"""Properties and known values of the statistics behind the gates."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.checks import stats

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=60)
qs = st.floats(min_value=0, max_value=100)


def close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


@given(samples, qs, qs)
def test_percentile_is_monotone_in_q(xs, q1, q2):
    lo, hi = sorted((q1, q2))
    assert stats.percentile(xs, lo) <= stats.percentile(xs, hi) + 1e-9 * max(1.0, max(map(abs, xs)))


@given(samples, qs)
def test_percentile_lies_between_min_and_max(xs, q):
    assert min(xs) <= stats.percentile(xs, q) <= max(xs)


@given(samples, qs, st.randoms(use_true_random=False))
def test_percentile_ignores_order(xs, q, rnd):
    shuffled = list(xs)
    rnd.shuffle(shuffled)
    assert stats.percentile(shuffled, q) == stats.percentile(xs, q)


@given(samples, qs, st.floats(0.01, 100), st.floats(-1e3, 1e3))
def test_percentile_follows_shift_and_scale(xs, q, a, b):
    moved = [a * x + b for x in xs]
    scale = a * max(map(abs, xs)) + abs(b)
    assert close(stats.percentile(moved, q), a * stats.percentile(xs, q) + b, scale)


@given(samples, qs)
def test_negating_the_sample_mirrors_the_percentile(xs, q):
    assert close(stats.percentile([-x for x in xs], q), -stats.percentile(xs, 100 - q), max(map(abs, xs)))


def test_percentiles_match_numpy_linear_interpolation():
    xs = np.arange(1, 101, dtype=float)
    got = stats.percentiles(xs)
    assert list(got) == ["p50", "p90", "p95", "p99"]
    assert got == {k: float(np.percentile(xs, int(k[1:]))) for k in got}
    assert got["p95"] == pytest.approx(95.05)


@pytest.mark.parametrize(
    "values, q, message",
    [([], 50, "empty"), ([1.0, math.nan], 50, "NaN"), ([1.0], 101, "[0, 100]"), ([1.0], -1, "[0, 100]")],
)
def test_bad_input_is_rejected_with_what_to_fix(values, q, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        stats.percentile(values, q)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=80), st.floats(1, 99), st.sampled_from([0.8, 0.9, 0.95]))
def test_bootstrap_percentile_ci_contains_the_point_estimate(xs, q, conf):
    ci = stats.bootstrap_percentile_ci(xs, q, confidence=conf, n_resamples=1000, seed=1)
    assert ci.estimate == stats.percentile(xs, q)
    assert ci.low <= ci.estimate + 1e-9 * max(1.0, max(map(abs, xs))) and ci.estimate <= ci.high + 1e-9 * max(
        1.0, max(map(abs, xs)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1000, allow_nan=False), min_size=20, max_size=60, unique=True), st.sampled_from([50, 90, 95]))
def test_bootstrap_ci_narrows_when_the_sample_grows(xs, q):
    # 16 copies have the same empirical distribution with 16x the size: the CI should shrink ~4x
    small = stats.bootstrap_percentile_ci(xs, q, n_resamples=2000, seed=2)
    large = stats.bootstrap_percentile_ci(np.tile(xs, 16), q, n_resamples=2000, seed=2)
    assert large.high - large.low < small.high - small.low


def test_order_statistic_bootstrap_matches_brute_force_resampling():
    rng = np.random.default_rng(7)
    x = rng.lognormal(0, 0.6, 400)
    for q in (50, 95, 99):
        fast = stats.bootstrap_percentile_replicates(x, q, 40_000, np.random.default_rng(1))
        idx = np.random.default_rng(2).integers(0, x.size, size=(20_000, x.size))
        brute = np.percentile(x[idx], q, axis=1)
        sd = brute.std()
        for p in (0.05, 0.25, 0.5, 0.75, 0.95):
            assert abs(np.quantile(fast, p) - np.quantile(brute, p)) < 0.1 * sd, (q, p)
        assert fast.std() == pytest.approx(sd, rel=0.05)


def test_multinomial_mean_bootstrap_matches_index_resampling():
    d = np.repeat([-1.0, 0.0, 1.0], [30, 900, 70])
    fast = stats.bootstrap_mean_replicates(d, 40_000, np.random.default_rng(3))
    idx = np.random.default_rng(4).integers(0, d.size, size=(20_000, d.size))
    brute = d[idx].mean(axis=1)
    assert fast.mean() == pytest.approx(brute.mean(), abs=0.002)
    assert fast.std() == pytest.approx(brute.std(), rel=0.03)
    continuous = stats.bootstrap_mean_replicates(np.random.default_rng(5).normal(size=500), 4000, np.random.default_rng(6))
    assert continuous.std() == pytest.approx(1 / math.sqrt(500), rel=0.1)


def test_bootstrap_is_reproducible_from_its_seed():
    x = np.random.default_rng(0).exponential(size=300)
    a = stats.bootstrap_percentile_ci(x, 95, seed=11)
    assert a == stats.bootstrap_percentile_ci(x, 95, seed=11)
    assert a != stats.bootstrap_percentile_ci(x, 95, seed=12)


def test_relative_percentile_difference_covers_a_known_scale_change():
    rng = np.random.default_rng(8)
    inc, cand = rng.lognormal(3, 0.4, 3000), 1.2 * rng.lognormal(3, 0.4, 3000)
    ci = stats.bootstrap_percentile_diff_ci(cand, inc, 95, relative=True, seed=0)
    assert ci.estimate == pytest.approx(stats.percentile(cand, 95) / stats.percentile(inc, 95) - 1)
    assert ci.low < 0.2 < ci.high and ci.low > 0.05
    absolute = stats.bootstrap_percentile_diff_ci(cand, inc, 95, seed=0)
    assert absolute.estimate == pytest.approx(stats.percentile(cand, 95) - stats.percentile(inc, 95))


def test_paired_ci_rejects_unequal_lengths_and_says_to_score_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        stats.paired_bootstrap_mean_diff_ci([1, 0, 1], [1, 0])


def test_paired_ci_is_far_narrower_than_the_scores_spread_when_pairs_agree():
    rng = np.random.default_rng(9)
    base = (rng.random(2000) < 0.4).astype(float)
    cand = base.copy()
    cand[:20] = 1 - cand[:20]
    ci = stats.paired_bootstrap_mean_diff_ci(cand, base, seed=0)
    assert ci.contains(ci.estimate) and ci.half_width < 0.01


def test_mcnemar_exact_matches_hand_computed_binomial_sums():
    base = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    cand = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    r = stats.mcnemar_exact(base, cand)
    assert (r.losses, r.wins, r.discordant) == (10, 2, 12)
    assert r.p_two_sided == pytest.approx(158 / 4096)  # 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12
    assert r.p_candidate_worse == pytest.approx(79 / 4096)
    assert r.p_candidate_better == pytest.approx(1 - 13 / 4096)
    swapped = stats.mcnemar_exact(cand, base)
    assert swapped.p_candidate_better == pytest.approx(r.p_candidate_worse)


def test_mcnemar_without_discordant_items_sees_no_change():
    r = stats.mcnemar_exact([1, 0, 1], [1, 0, 1])
    assert r.p_two_sided == r.p_candidate_worse == 1.0


def test_mcnemar_refuses_non_binary_scores():
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_exact([0.5, 1], [1, 1])


@given(st.integers(0, 60), st.data(), st.floats(0.01, 0.99))
def test_binomial_cdf_equals_the_exact_sum(n, data, p):
    k = data.draw(st.integers(0, n))
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert stats.binomial_cdf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    assert stats.binomial_sf(k, n, p) == pytest.approx(1 - exact + math.comb(n, k) * p**k * (1 - p) ** (n - k),
                                                       rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "p, df, expected",
    [(0.975, 10, 2.228139), (0.95, 4, 2.131847), (0.95, 1, 6.313752), (0.995, 2, 9.924843),
     (0.975, 30, 2.042272), (0.025, 5, -2.570582), (0.999, 3, 10.21453)],
)
def test_student_t_quantile_matches_tables(p, df, expected):
    assert stats.student_t_quantile(p, df) == pytest.approx(expected, abs=2e-5)


def test_student_t_tends_to_the_normal_and_normal_quantile_is_phi_inverse():
    assert stats.normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert stats.student_t_quantile(0.975, 1e9) == stats.normal_quantile(0.975)
    assert stats.student_t_quantile(0.975, 5000) == pytest.approx(1.9604, abs=2e-4)


def test_welch_relative_ci_matches_a_hand_computation():
    c, i = np.array([105.0, 110, 100, 115]), np.array([100.0, 98, 102, 100])
    ci = stats.welch_relative_mean_diff_ci(c, i, confidence=0.9)
    a, b = c.var(ddof=1) / (4 * c.mean() ** 2), i.var(ddof=1) / (4 * i.mean() ** 2)
    df = (a + b) ** 2 / (a**2 / 3 + b**2 / 3)
    se = c.mean() / i.mean() * math.sqrt(a + b)
    assert ci.estimate == pytest.approx(c.mean() / i.mean() - 1)
    assert ci.high - ci.estimate == pytest.approx(stats.student_t_quantile(0.95, df) * se)
    with pytest.raises(ValueError, match="at least 2"):
        stats.welch_relative_mean_diff_ci([1.0], [1.0, 2.0])
