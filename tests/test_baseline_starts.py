"""A baseline recorded over several server starts (--llmserve-add-start): the spread between starts is in
the gate's noise model, so a shift of the size the baseline's own starts show is not a regression, while a
real one still is; labels survive the sidecar, and a bad label is a corrupt file."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.store.baseline_samples import round_from_dict, round_to_dict
from pytest_llmserve.store.baselines import BaselineError, BaselineStore
from pytest_llmserve.checks.baseline_gate import Round, compare_rounds, start_spread

ALPHA = 0.05 / 3  # the default gate: α = 0.05 over three gated metrics


def session(rng, start, k, start_sd, round_sd=0.01, shift=1.0):
    """k rounds of one server start: the start's own effect (SD start_sd) times each round's (SD round_sd)."""
    s = 1 + start_sd * rng.standard_normal()
    out = []
    for _ in range(k):
        u = s * (1 + round_sd * rng.standard_normal()) * shift
        out.append(Round.of({"ttft_ms": [10.0] * 16}, {"itl_p50_ms": 20.0 * u, "output_tok_s": 500.0 / u}, start))
    return out


def baseline(rng, starts, k, start_sd):
    return [r for j in range(starts) for r in session(rng, j, k, start_sd)]


def verdict(base, cand, metric="itl_p50_ms", margin=0.10, assumed=0.0):
    return compare_rounds(metric, base, cand, higher_is_better=metric == "output_tok_s", margin=margin,
                          alpha=ALPHA, power=0.9, assumed_start_spread=assumed)


def unlabelled(rounds):
    return [Round(r.samples, r.values, 0) for r in rounds]


def test_start_to_start_shifts_do_not_false_alarm_when_the_baseline_holds_several_starts():
    # starts differ by 8 % (SD), rounds inside a start by 1 %: H200 call 7 saw 5-10 % between two runs
    rng = np.random.default_rng(11)
    sims, labelled, blind = 300, 0, 0
    for _ in range(sims):
        base, cand = baseline(rng, 4, 2, 0.08), session(rng, 0, 3, 0.08)
        labelled += verdict(base, cand).verdict == "regression"
        blind += verdict(unlabelled(base), cand).verdict == "regression"
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
    assert labelled / sims <= bound
    assert blind / sims > 2 * bound  # the within-start model alone is the false alarm of H200 call 7


def test_a_one_start_baseline_with_the_assumed_spread_does_not_false_alarm_on_shifts_of_that_size():
    # starts 5 % apart (SD), the default assumption: without it a one-start baseline false-alarms often
    rng = np.random.default_rng(21)
    sims, assumed, blind = 300, 0, 0
    for _ in range(sims):
        base, cand = baseline(rng, 1, 3, 0.05), session(rng, 0, 3, 0.05)
        assumed += verdict(base, cand, assumed=0.05).verdict == "regression"
        blind += verdict(base, cand).verdict == "regression"
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
    assert assumed / sims <= bound
    assert blind / sims > 2 * bound


def test_a_one_start_baseline_still_catches_a_regression_far_past_the_assumed_spread():
    rng = np.random.default_rng(22)
    caught = sum(verdict(baseline(rng, 1, 3, 0.05), session(rng, 0, 3, 0.05, shift=1.5), assumed=0.05).verdict
                 == "regression" for _ in range(100))
    assert caught >= 90


def test_the_assumption_is_reported_says_what_to_do_and_gives_way_to_measured_starts():
    rng = np.random.default_rng(23)
    one = verdict(baseline(rng, 1, 4, 0.0), session(rng, 0, 4, 0.0), assumed=0.05)
    assert one.start_spread_assumed and one.start_to_start == 0.05 and one.to_dict()["start_spread_assumed"]
    assert one.verdict == "inconclusive" and one.requests_needed is None  # 10 % margin, 5 % a side: no room
    assert "one server start" in one.check.reason and "start_spread" in one.check.reason
    wide = verdict(baseline(rng, 1, 4, 0.0), session(rng, 0, 4, 0.0), margin=0.5, assumed=0.05)
    assert wide.verdict == "pass"  # a margin wide enough for the assumption decides
    several = verdict(baseline(rng, 3, 2, 0.0), session(rng, 0, 2, 0.0), assumed=0.05)
    assert several.starts == 3 and not several.start_spread_assumed  # measured starts replace the assumption


def test_a_regression_well_past_the_start_to_start_spread_is_still_caught():
    rng = np.random.default_rng(12)
    caught = sum(verdict(baseline(rng, 5, 2, 0.02), session(rng, 0, 3, 0.02, shift=1.5)).verdict == "regression"
                 for _ in range(100))
    assert caught >= 90


def test_a_check_reports_the_starts_and_their_spread_and_says_when_they_leave_no_room():
    rng = np.random.default_rng(3)
    wide = verdict(baseline(rng, 3, 2, 0.20), session(rng, 0, 2, 0.0))  # starts 20 % apart, margin 10 %
    assert wide.starts == 3 and wide.start_to_start > 0.05
    assert wide.requests_needed is None and not wide.precise
    if wide.verdict == "inconclusive":
        assert "server starts" in wide.check.reason and "--llmserve-add-start" in wide.check.reason
    d = wide.to_dict()
    assert d["starts"] == 3 and d["start_to_start"] == wide.start_to_start
    one = verdict(baseline(rng, 1, 4, 0.0), session(rng, 0, 2, 0.0))
    assert one.starts == 1 and math.isnan(one.start_to_start)


def test_one_round_per_start_still_gives_an_interval():
    rng = np.random.default_rng(5)
    c = verdict(baseline(rng, 5, 1, 0.03), session(rng, 0, 1, 0.03))
    assert math.isfinite(c.check.change.se) and c.starts == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(1.0, 100.0), min_size=1, max_size=4), min_size=1, max_size=6))
def test_start_spread_is_never_negative_and_is_zero_for_identical_starts(groups):
    rounds = [Round.of({}, {"x": v}, j) for j, g in enumerate(groups) for v in g]
    s = start_spread("x", rounds)
    assert s.starts == len(groups)
    if len(groups) < 2:
        assert math.isnan(s.var)
    else:
        assert s.var >= 0 and s.df == len(groups) - 1 and 0 < s.weight <= 1
        same = [Round.of({}, {"x": v}, j) for j in range(len(groups)) for v in groups[0]]
        assert start_spread("x", same).var == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(4)), st.integers(0, 2**31 - 1))
def test_renaming_the_starts_changes_nothing(order, seed):
    rng = np.random.default_rng(seed)
    base, cand = baseline(rng, 4, 2, 0.05), session(rng, 0, 2, 0.05)
    renamed = [Round(r.samples, r.values, order[r.start]) for r in base]
    a, b = verdict(base, cand), verdict(renamed, cand)
    assert a.verdict == b.verdict and a.check.change.se == pytest.approx(b.check.change.se)


def test_the_start_label_survives_the_sidecar_and_is_absent_for_the_first_start(tmp_path):
    first, later = Round.of({"ttft_ms": [1.0, 2.0]}, {"itl_p50_ms": 3.0}), Round.of({"ttft_ms": [1.0]}, {}, 2)
    assert "start" not in round_to_dict(first, ["itl_p50_ms"])  # files of one start keep their old bytes
    assert round_from_dict(round_to_dict(later, [])).start == 2
    store = BaselineStore(root=tmp_path, hardware="cpu-2c", update=True)
    store.record_entry("t", "a", {"shape": {}, "metrics": {"x": {"value": 1.0}}},
                       [round_to_dict(first, ["itl_p50_ms"]), round_to_dict(later, [])])
    assert [round_from_dict(r).start for r in store.rounds("t", "a")] == [0, 2]


@pytest.mark.parametrize("label", [-1, True, "1", 1.5])
def test_a_bad_start_label_makes_the_sidecar_corrupt(tmp_path, label):
    side = tmp_path / "cpu-2c" / "t.samples.json.gz"
    side.parent.mkdir(parents=True)
    (tmp_path / "cpu-2c" / "t.json").write_text(json.dumps(
        {"schema": 2, "hardware": "cpu-2c", "entries": {"a": {"shape": {}, "metrics": {"x": {"value": 1.0}}}}}))
    side.write_bytes(gzip.compress(json.dumps({"schema": 2, "hardware": "cpu-2c", "entries": {
        "a": [{"samples": {}, "values": {"x": 1.0}, "start": label}]}}).encode()))
    with pytest.raises(BaselineError, match="corrupt"):
        BaselineStore(root=tmp_path, hardware="cpu-2c").rounds("t", "a")
