"""The engine-vs-engine comparison: first divergence, the per-token rate, its Wilson interval, the verdict."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.checks.divergence import (PromptDivergence, compare_engines, first_divergence, prompts_needed,
                                               rate_interval, verdict_of)
from pytest_llmserve.checks.equivalence import Continuation
from pytest_llmserve.gates.engine_equivalence import EngineEquivalenceSettings
from pytest_llmserve.reference.prompt_windows import window_prompts
from pytest_llmserve.reference.hf import Prompt
from pytest_llmserve.checks.stats import Interval, wilson_interval

tokens = st.lists(st.integers(0, 5), max_size=12)


def _cont(ids, top=None) -> Continuation:
    return Continuation(tuple(ids), tuple(top or [{t: -0.1} for t in ids]))


@given(tokens, tokens)
def test_first_divergence_is_the_first_unequal_index_and_the_prefix_before_it_agrees(a, b):
    pos = first_divergence(a, b)
    if pos is None:
        assert a == b
    else:
        assert a[:pos] == b[:pos]
        assert pos == min(len(a), len(b)) or a[pos] != b[pos]


@given(st.integers(0, 400), st.integers(0, 400), st.floats(0.5, 0.999))
def test_wilson_interval_holds_the_estimate_inside_0_1_and_narrows_with_n(k, extra, confidence):
    n = k + extra
    iv = wilson_interval(k, n, confidence)
    assert 0.0 <= iv.low <= iv.high <= 1.0
    if n:
        assert iv.low - 1e-12 <= k / n <= iv.high + 1e-12
        bigger = wilson_interval(4 * k, 4 * n, confidence)
        assert bigger.high - bigger.low <= iv.high - iv.low + 1e-12


def test_wilson_interval_matches_the_textbook_value_and_is_not_degenerate_at_zero():
    iv = wilson_interval(10, 100, 0.95)  # Wilson 1927; e.g. Newcombe 1998, Table I: 0.0552 - 0.1744
    assert (round(iv.low, 4), round(iv.high, 4)) == (0.0552, 0.1744)
    zero = wilson_interval(0, 1000, 0.95)
    assert zero.low == 0.0 and 0.0 < zero.high < 0.004
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)


def test_the_rate_counts_agreed_positions_plus_the_divergence_and_stops_there():
    prompts = [("a", (1,)), ("b", (2,)), ("c", (3,))]
    ref = [_cont([1, 2, 3, 4]), _cont([5, 6, 7, 8]), _cont([9, 9, 9, 9])]
    cand = [_cont([1, 2, 3, 4]), _cont([5, 0, 7, 8]), _cont([9, 9, 9])]  # b differs at 1; c ends early at 3
    report = compare_engines("new", "old", prompts, ref, cand, max_tokens=4, threshold=0.5)
    assert [r.position for r in report.rows] == [None, 1, 3]
    assert report.positions == 4 + 2 + 4 and report.diverged == 2
    assert report.rate == pytest.approx(2 / 10) and report.prompt_rate == pytest.approx(2 / 3)
    assert report.earliest()[0].prompt_id == "b" and report.earliest()[0].reference_next[0] == 6


def test_the_gaps_at_a_divergence_come_from_each_sides_own_top_k():
    ref = _cont([1, 2], [{1: -0.1}, {2: -0.60, 3: -0.62}])
    cand = _cont([1, 3], [{1: -0.1}, {3: -0.50, 2: -0.70}])
    (row,) = compare_engines("new", "old", [("p", (0,))], [ref], [cand], max_tokens=2).rows
    assert row.reference_gap == pytest.approx(0.02) and row.candidate_gap == pytest.approx(0.2)
    far = _cont([1, 4], [{1: -0.1}, {4: -0.1}])
    (row,) = compare_engines("new", "old", [("p", (0,))], [ref], [far], max_tokens=2).rows
    assert row.reference_gap is None and row.candidate_gap is None


def _iv(low, high):
    return Interval((low + high) / 2, low, high, 0.95, 0.0)


def test_verdict_pass_below_fail_above_inconclusive_across_the_threshold():
    assert verdict_of(_iv(0.001, 0.02), 0.03) == "pass"
    assert verdict_of(_iv(0.031, 0.05), 0.03) == "fail"
    assert verdict_of(_iv(0.02, 0.04), 0.03) == "inconclusive"


def _rows(diverged: int, prompts: int, length: int, at: int = 3) -> list[PromptDivergence]:
    return ([PromptDivergence(f"d{i}", at, at + 1) for i in range(diverged)]
            + [PromptDivergence(f"s{i}", None, length) for i in range(prompts - diverged)])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(0, 200), st.integers(1, 40))
def test_rate_interval_contains_the_rate_and_is_never_narrower_than_independent_positions(prompts, diverged, length):
    diverged = min(diverged, prompts)
    rows = _rows(diverged, prompts, length, at=min(3, length - 1))
    iv, deff = rate_interval(rows, 0.95)
    positions = sum(r.at_risk for r in rows)
    plain = wilson_interval(diverged, positions, 0.95)
    assert deff >= 1.0 and iv.estimate == pytest.approx(diverged / positions)
    assert iv.low <= plain.low + 1e-12 and iv.high >= plain.high - 1e-12


def test_identical_engines_pass_at_the_default_size_and_a_handful_of_prompts_is_inconclusive():
    big, _ = rate_interval(_rows(0, 2000, 32), 0.95)
    assert verdict_of(big, 0.03) == "pass"
    small, _ = rate_interval(_rows(0, 3, 32), 0.95)
    assert verdict_of(small, 0.03) == "inconclusive"


@given(st.floats(0.0, 0.2), st.floats(0.005, 0.2), st.floats(1, 64))
@settings(max_examples=80, deadline=None)
def test_prompts_needed_is_the_smallest_count_that_decides(rate, threshold, per_prompt):
    if abs(rate - threshold) < 1e-3:
        return
    n = prompts_needed(rate, threshold, 0.95, per_prompt)
    assert n is not None

    def verdict(prompts):
        m = prompts * per_prompt
        return verdict_of(wilson_interval(rate * m, m, 0.95), threshold)

    assert verdict(n) != "inconclusive"
    assert n == 1 or verdict(n - 1) == "inconclusive"
    assert prompts_needed(threshold, threshold, 0.95, per_prompt) is None


def test_the_report_names_the_rate_the_threshold_and_the_earliest_prompts():
    prompts = [(f"p{i}", (i,)) for i in range(40)]
    ref = [_cont([1, 2, 3, 4]) for _ in prompts]
    cand = [_cont([1, 9, 3, 4]) if i % 2 else _cont([1, 2, 3, 4]) for i in range(40)]
    report = compare_engines("trt", "vllm", prompts, ref, cand, max_tokens=4, threshold=0.03, prompts_planned=100)
    text = report.render()
    assert report.verdict == "fail"
    assert "compared 40 of 100 planned prompts" in text and "> threshold 0.03" in text
    assert "20/40 prompts diverged" in text and "prompt p1 at token 1" in text and "VERDICT: FAIL" in text
    assert report.to_dict()["divergence_per_token"] == pytest.approx(20 / (20 * 4 + 20 * 2))


@given(st.integers(1, 300), st.integers(0, 2**31), st.integers(1, 20), st.integers(0, 30))
@settings(max_examples=50, deadline=None)
def test_window_prompts_are_seeded_sized_and_start_with_the_shared_bos(n, seed, low, span):
    source = [Prompt("a", (0, 5, 6, 7, 8)), Prompt("b", (0, 9, 10, 11))]
    got = window_prompts(source, n, seed=seed, min_len=low, max_len=low + span)
    assert len(got) == n and got == window_prompts(source, n, seed=seed, min_len=low, max_len=low + span)
    assert all(p.token_ids[0] == 0 and 0 not in p.token_ids[1:] for p in got)
    assert all(2 <= len(p.token_ids) <= max(2, low + span) for p in got)


def test_window_prompts_refuse_bad_sizes_in_one_line():
    with pytest.raises(ValueError, match="min_prompt_len <= max_prompt_len"):
        window_prompts([Prompt("a", (1, 2))], 3, min_len=5, max_len=2)
    with pytest.raises(ValueError, match="prompts = 0 must be >= 1"):
        window_prompts([Prompt("a", (1, 2))], 0)


@pytest.mark.parametrize("raw, message", [
    ({"divergence_threshold": 1.5}, "divergence_threshold = 1.5 must be a rate in (0, 1)"),
    ({"prompts": 0}, "prompts = 0 must be an integer >= 1"),
    ({"prompts": 10.5}, "prompts = 10.5 must be an integer >= 1"),
    ({"budget_s": 0}, "budget_s = 0 must be a number of seconds > 0"),
    ({"max_tokens": True}, "max_tokens = True must be an integer >= 1"),
    ({"min_prompt_len": 9, "max_prompt_len": 4}, "min_prompt_len = 9 exceeds max_prompt_len = 4"),
    ({"treshold": 0.1}, "unknown key(s) treshold; allowed: prompts, prompt_file"),
    ("x", "must be a table"),
])
def test_settings_refuse_bad_values_naming_the_key(raw, message):
    with pytest.raises(ValueError) as info:
        EngineEquivalenceSettings.from_mapping(raw)
    assert message in str(info.value)


def test_settings_defaults_and_a_valid_table():
    assert EngineEquivalenceSettings.from_mapping({}).prompts >= 1000  # "a few thousand prompts" by default
    made = EngineEquivalenceSettings.from_mapping({"prompts": 50, "divergence_threshold": 0.01, "budget_s": 2})
    assert (made.prompts, made.divergence_threshold, made.budget_s) == (50, 0.01, 2.0)
    assert math.isclose(EngineEquivalenceSettings().confidence, 0.95)
