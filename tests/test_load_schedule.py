"""Open-loop arrival schedules: Poisson statistics, constant spacing, seeds, duration cut."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.load import LoadSpec, arrival_offsets


def test_poisson_gaps_are_exponential_with_mean_one_over_rate() -> None:
    offsets = arrival_offsets(LoadSpec(rate=200.0, requests=20_000, seed=1))
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    # memoryless: P(gap > 2/rate) = e^-2
    assert np.mean(gaps > 2 / 200) == pytest.approx(np.exp(-2), abs=0.01)
    # counts per 50 ms window are Poisson(10): variance equals mean
    counts = np.bincount((offsets // 0.05).astype(int))[:-1]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)


def test_constant_arrivals_are_evenly_spaced() -> None:
    offsets = arrival_offsets(LoadSpec(rate=8.0, arrival="constant", requests=5))
    assert offsets.tolist() == [0.0, 0.125, 0.25, 0.375, 0.5]


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = arrival_offsets(LoadSpec(rate=10.0, requests=50, seed=7))
    b = arrival_offsets(LoadSpec(rate=10.0, requests=50, seed=7))
    c = arrival_offsets(LoadSpec(rate=10.0, requests=50, seed=8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@settings(max_examples=50, deadline=None)
@given(rate=st.floats(0.5, 500.0), duration=st.floats(0.1, 20.0), seed=st.integers(0, 10**6))
def test_duration_schedules_hold_every_arrival_before_the_end(rate: float, duration: float, seed: int) -> None:
    spec = LoadSpec(rate=rate, requests=None, duration_s=duration, seed=seed)
    offsets = arrival_offsets(spec)
    assert np.all(offsets < duration) and np.all(np.diff(offsets) >= 0)
    # the precomputed pool is long enough that the schedule was cut by time, not by size
    full = arrival_offsets(LoadSpec(rate=rate, requests=len(offsets) + 1, seed=seed))
    assert full[-1] >= duration or len(offsets) == 0


def test_closed_loop_spec_has_no_schedule() -> None:
    with pytest.raises(ValueError, match="rate"):
        arrival_offsets(LoadSpec(concurrency=4))
