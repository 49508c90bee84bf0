"""Fixtures users write tests with: llm_target, llm_server, llm_load."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import pytest

from . import benchmark_bridge
from .config import ConfigError, Target, parse_cpu_list
from .baseline_samples import check_shape
from .baselines import BaselineError, is_statistical
from .load import CheckLimits, ClientOptions, LoadSpec, RunResult, run_load
from .measure import Planner, baseline_rounds, measure, merge_results, plan_mode
from .outcome import LoadOutcome
from .progress import Heartbeat, pytest_emitter
from .server_metrics import MetricsSampler
from .servers.base import ServerError, ServerHandle
from .session import get_session


@pytest.fixture(scope="session")
def llm_target(request: pytest.FixtureRequest) -> Target:
    """The target this test instance runs against (tests are parametrized over selected targets)."""
    target = getattr(request, "param", None)
    if target is None:
        pytest.skip("no llmserve target selected: configure [tool.llmserve] targets or pass --llmserve-target")
    return target


@pytest.fixture(scope="session")
def _llm_server_session(request: pytest.FixtureRequest, llm_target: Target) -> ServerHandle:
    session = get_session(request.config)
    try:
        return session.pool.get(llm_target)
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def llm_server(_llm_server_session: ServerHandle) -> ServerHandle:
    """The running server; a server that died earlier in the session fails the test with its log tail."""
    try:
        _llm_server_session.ensure_alive()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    return _llm_server_session


@pytest.fixture(scope="session")
def llm_servers(request: pytest.FixtureRequest) -> Callable[[str], ServerHandle]:
    """Start-or-get the server of any configured target by name (for tests comparing two targets)."""
    session = get_session(request.config)

    def get(name: str) -> ServerHandle:
        try:
            handle = session.pool.get(session.config.target(name))
            handle.ensure_alive()
        except ConfigError as exc:
            pytest.fail(f"llm_servers({name!r}): {exc}", pytrace=False)
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        return handle

    return get


@pytest.fixture
def llm_load(request: pytest.FixtureRequest, llm_server: ServerHandle) -> Callable[..., LoadOutcome]:
    """Run streaming load against the test's target: `llm_load(concurrency=8, output_len=64)`.

    `llm_load.until_decided(...)` measures rounds of that spec until the baseline gate can decide (or its
    budget is spent); under --update-baselines both record `--llmserve-repeats` rounds or more.
    """
    session = get_session(request.config)
    marker = request.node.get_closest_marker("slo")
    limits = dict(marker.kwargs) if marker else {}
    nodeid = request.node.nodeid

    def spec_of(spec_args: dict[str, Any]) -> LoadSpec:
        if session.requests_override is not None and spec_args.get("duration_s") is None:
            spec_args["requests"] = session.requests_override
        try:
            spec = LoadSpec(**spec_args)
            spec.validate()
        except (TypeError, ValueError) as exc:
            pytest.fail(f"llm_load({', '.join(f'{k}={v!r}' for k, v in spec_args.items())}): {exc}", pytrace=False)
        return spec

    def one(spec: LoadSpec) -> RunResult:
        shape = f"rate={spec.rate}/s" if spec.rate else f"c={spec.concurrency}"
        # no /metrics polling from this process during the run: it stalls the client (measured)
        with Heartbeat(pytest_emitter(request.config), f"{llm_server.target.name} {shape}", status=None,
                       total=spec.warmup + spec.requests if spec.requests else None, source="server count"):
            try:
                return _run(llm_server, spec)
            except Exception:  # a client error from a server that died: its exit and log are the cause
                if not llm_server.alive():
                    _fail_with_death(llm_server)
                raise

    def measured(spec_args: dict[str, Any], sequential: bool) -> LoadOutcome:
        spec = spec_of(spec_args)
        gate = session.gate_settings(llm_server.target)
        entry, baseline = None, None
        if not session.store.update:
            try:
                entry = session.store.lookup_entry(llm_server.target.name, nodeid)
                if sequential and entry is not None and is_statistical(entry):
                    check_shape(entry, spec, session.store.path_for(llm_server.target.name), nodeid)
                    baseline = baseline_rounds(session.store, llm_server.target.name, nodeid)
            except BaselineError as exc:
                pytest.fail(str(exc), pytrace=False)
        mode = plan_mode(entry, session.store.update, sequential)
        if mode == "record" and not sequential:
            mode = "repeat"
        planner = Planner(gate, mode, session.repeats(gate), baseline)
        sampler = MetricsSampler(llm_server.metrics_url).start() if llm_server.metrics_url else None
        try:
            m = measure(lambda i: one(spec if i == 0 else dataclasses.replace(spec, warmup=0)), planner,
                        session.retries(gate), llm_server.alive)
        finally:
            server_metrics = sampler.stop() if sampler is not None else None
        result = merge_results(m.results)
        benchmark_bridge.record_load(request.config, request.node, llm_server.target.name, result)
        try:
            llm_server.ensure_alive()
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        return LoadOutcome(result=result, target=llm_server.target, nodeid=nodeid,
                           session=session, marker_limits=limits,
                           optimisations=session.optimisations_of(llm_server),
                           server_metrics=server_metrics, item=request.node, measurement=m)

    def run(**spec_args: Any) -> LoadOutcome:
        return measured(spec_args, sequential=False)

    run.until_decided = lambda **spec_args: measured(spec_args, sequential=True)  # type: ignore[attr-defined]
    return run


def _fail_with_death(server: ServerHandle) -> None:
    try:
        server.ensure_alive()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def _run(server: ServerHandle, spec: LoadSpec) -> RunResult:
    """Run the load, with the client pinned to the target's `client_cpus` while it runs."""
    if not server.target.client_cpus:
        return _run_client(server, spec)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, parse_cpu_list(server.target.client_cpus))
    try:
        return _run_client(server, spec)
    finally:
        os.sched_setaffinity(0, before)


def _run_client(server: ServerHandle, spec: LoadSpec) -> RunResult:
    """One client for every kind: OpenAI streaming, or Triton's generate_stream / gRPC stream."""
    if server.target.kind == "triton":
        from .load.triton_client import run_triton_load
        from .servers.triton import load_protocol, triton_endpoints

        endpoints = triton_endpoints(server.base_url)
        return run_triton_load(endpoints, spec, protocol=load_protocol(server.target)).to_run_result()
    return run_load(server.base_url, server.model, spec, options=client_options(server.target, spec))


# One client core kept 512 streams at 10 ms ITL (51k chunks/s) valid and exact (benchmarks/fidelity);
# half that per process leaves room for faster servers.
STREAMS_PER_WORKER = 256


def client_options(target: Target, spec: LoadSpec | None = None) -> ClientOptions:
    """The target's `client` table: self-check limits and client processes for this server.

    Without `client.workers`, the client uses one process per STREAMS_PER_WORKER streams, at most one
    per core of `client_cpus` (so never more than the cores it was given; one when none were).
    """
    limits = {k: float(v) for k, v in target.client.items() if k != "workers"}
    if "workers" in target.client:
        workers = int(target.client["workers"])
    else:
        cores = len(parse_cpu_list(target.client_cpus)) if target.client_cpus else 1
        streams = (spec.concurrency or 1) if spec is not None else 1
        workers = max(1, min(cores, math.ceil(streams / STREAMS_PER_WORKER)))
    return ClientOptions(limits=CheckLimits(**limits), workers=workers)
