"""Open-loop arrival schedules: absolute send offsets computed up front from a seed (no drift)."""

from __future__ import annotations

import numpy as np

from .spec import LoadSpec

# Upper bound on precomputed arrivals for a duration run (rate * duration is the expectation).
_MAX_ARRIVALS = 10_000_000


def arrival_offsets(spec: LoadSpec) -> np.ndarray:
    """Send offsets in seconds from the start of the measured window, first at 0.

    Poisson: exponential gaps with mean 1/rate (seeded); constant: gaps of exactly 1/rate. With
    `requests` the schedule has that many arrivals; with `duration_s` it holds every arrival before
    the end. Offsets are absolute, so a late send never shifts the ones after it (unlike sleeping
    a relative gap after each send, which accumulates lag).
    """
    if spec.rate is None:
        raise ValueError("arrival_offsets needs an open-loop spec (rate=R requests/s)")
    if spec.arrival_times is not None:  # a replayed trace: its own offsets, nothing drawn
        return np.asarray(spec.arrival_times, dtype=np.float64)
    rate = float(spec.rate)
    if spec.requests is not None:
        n = spec.requests
    else:
        expected = rate * float(spec.duration_s or 0.0)
        n = int(min(_MAX_ARRIVALS, expected + 10 * np.sqrt(expected) + 10))
    if spec.arrival == "constant":
        offsets = np.arange(n, dtype=np.float64) / rate
    else:
        rng = np.random.default_rng([spec.seed, 0x5EED])
        gaps = rng.exponential(1.0 / rate, size=n)
        gaps[0] = 0.0
        offsets = np.cumsum(gaps)
    if spec.duration_s is not None:
        offsets = offsets[offsets < spec.duration_s]
    return offsets
