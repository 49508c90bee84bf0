"""The one load path (drive.py): pinning, client options and the client chosen, for every caller alike."""

from __future__ import annotations

import os

import pytest

from pytest_llmserve.gates import drive as drive_mod
from pytest_llmserve.settings.config import Target
from pytest_llmserve.gates.drive import client_count, drive, drive_server, pinned, start_metrics
from pytest_llmserve.load import LoadProgress, LoadSpec
from pytest_llmserve.servers.base import ServerHandle

SPEC = LoadSpec(concurrency=2, requests=2, warmup=0, output_len=2)
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cpus")


@needs_two_cpus
def test_pinned_sets_the_affinity_inside_and_restores_it_after() -> None:
    before = os.sched_getaffinity(0)
    one = min(before)
    with pinned(str(one)):
        assert os.sched_getaffinity(0) == {one}
    assert os.sched_getaffinity(0) == before
    with pinned(None), pinned(""):
        assert os.sched_getaffinity(0) == before


@needs_two_cpus
@pytest.mark.parametrize("kind", ["openai", "triton"])
def test_a_targets_backend_runs_its_client_pinned_to_client_cpus_with_the_targets_options(monkeypatch, kind) -> None:
    import pytest_llmserve.servers.registry as registry

    seen = {}

    class Backend:
        def run_load(self, handle, spec, options, progress=None):  # noqa: ANN001, ANN201
            seen.update(cpus=os.sched_getaffinity(0), options=options, progress=progress, handle=handle)
            return "result"

    monkeypatch.setattr(registry, "backend_for", lambda k: Backend() if k == kind else None)
    before, one = os.sched_getaffinity(0), min(os.sched_getaffinity(0))
    target = Target(name="t", kind=kind, model="m", url="http://127.0.0.1:1", client_cpus=str(one),
                    client={"max_loop_lag_p99_ms": 77})
    handle, counted = ServerHandle(target, "http://127.0.0.1:1", "m"), LoadProgress()
    assert drive_server(handle, SPEC, counted) == "result"
    assert seen["cpus"] == {one} and seen["progress"] is counted and seen["handle"] is handle
    assert seen["options"].limits.max_loop_lag_p99_ms == 77 and seen["options"].workers == 1
    assert os.sched_getaffinity(0) == before


@needs_two_cpus
def test_drive_pins_the_openai_client(monkeypatch) -> None:
    seen = {}

    def fake_run_load(url, model, spec, *, options=None, progress=None):  # noqa: ANN001, ANN202
        seen.update(cpus=os.sched_getaffinity(0), url=url, model=model)
        return "result"

    monkeypatch.setattr(drive_mod, "run_load", fake_run_load)
    one = min(os.sched_getaffinity(0))
    assert drive("http://h:1", "m", SPEC, cpus=str(one)) == "result"
    assert seen == {"cpus": {one}, "url": "http://h:1", "model": "m"}


def test_no_metrics_endpoint_means_no_sampler_and_the_count_is_the_clients_own() -> None:
    assert start_metrics(None) is None and start_metrics("") is None
    counted = LoadProgress()
    status = client_count(counted)
    assert status() is None  # several client processes: no count
    counted.live, counted.done = True, 3
    assert status().done == 3
