"""How many client processes a target's load gets when its config does not say."""

from __future__ import annotations

import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.gates.drive import STREAMS_PER_WORKER, client_options
from pytest_llmserve.load import LoadSpec


def _target(**kw) -> Target:  # noqa: ANN003
    return Target(name="t", kind="openai", model="m", url="http://127.0.0.1:1", **kw)


@pytest.mark.parametrize(("cpus", "streams", "expected"), [
    ("1", 1024, 1),  # one core: one process
    ("1-4", 1, 1),
    ("1-4", STREAMS_PER_WORKER, 1),
    ("1-4", STREAMS_PER_WORKER + 1, 2),
    ("1-4", 3 * STREAMS_PER_WORKER, 3),
    ("1-4", 100 * STREAMS_PER_WORKER, 4),  # never more than the cores it was given
    ("8,10", 4096, 2),
])
def test_workers_follow_streams_up_to_the_client_cores(cpus, streams, expected) -> None:
    spec = LoadSpec(concurrency=streams, requests=streams, warmup=0, output_len=2)
    assert client_options(_target(client_cpus=cpus), spec).workers == expected


def test_configured_workers_win_and_limits_pass_through() -> None:
    target = _target(client_cpus="1-4", client={"workers": 1, "max_loop_lag_p99_ms": 20})
    options = client_options(target, LoadSpec(concurrency=4096, requests=4096, warmup=0, output_len=2))
    assert options.workers == 1 and options.limits.max_loop_lag_p99_ms == 20.0


@pytest.mark.parametrize(("available", "server_cpus", "streams", "expected"), [
    ({0, 1}, None, 4096, 1),  # the 2-core box: nothing is free beside an unpinned server and pytest
    (set(range(16)), None, 1, 1),
    (set(range(16)), None, 2 * STREAMS_PER_WORKER, 2),  # a 16-core GPU runner: enough for the streams
    (set(range(16)), None, 100 * STREAMS_PER_WORKER, 13),  # 16 - 2 for the server - 1 for pytest
    (set(range(16)), "0-7", 100 * STREAMS_PER_WORKER, 7),  # the server's pinned cores are not free
    ({0, 1, 2, 3}, "0-3", 4096, 1),
])
def test_without_client_cpus_workers_come_from_the_free_cores(available, server_cpus, streams, expected) -> None:
    spec = LoadSpec(concurrency=streams, requests=streams, warmup=0, output_len=2)
    assert client_options(_target(cpus=server_cpus), spec, available=available).workers == expected


def test_without_client_cpus_this_process_affinity_bounds_the_workers() -> None:
    import os

    spec = LoadSpec(concurrency=100 * STREAMS_PER_WORKER, requests=1, warmup=0, output_len=2)
    assert client_options(_target(), spec).workers == max(1, len(os.sched_getaffinity(0)) - 3)
