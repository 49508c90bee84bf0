"""Fixtures users write tests with: llm_target, llm_server, llm_load."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import pytest

from . import benchmark_bridge
from .config import ConfigError, Target, parse_cpu_list
from .load import CheckLimits, ClientOptions, LoadSpec, RunResult, run_load
from .load.fit import FittedLoad, fit_load
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
    """Run streaming load against the test's target: `llm_load(concurrency=8, output_len=64)`."""
    session = get_session(request.config)
    marker = request.node.get_closest_marker("slo")
    limits = dict(marker.kwargs) if marker else {}

    def run(**spec_args: Any) -> LoadOutcome:
        if session.requests_override is not None and spec_args.get("duration_s") is None:
            spec_args["requests"] = session.requests_override
        try:
            spec = LoadSpec(**spec_args)
            # endpoint, prompt form and matched work as the server's probed capabilities allow
            fitted = fit_load(spec, llm_server.capabilities, explicit=spec_args)
            spec = fitted.spec
        except (TypeError, ValueError) as exc:
            pytest.fail(f"llm_load({', '.join(f'{k}={v!r}' for k, v in spec_args.items())}): {exc}", pytrace=False)
        sampler = MetricsSampler(llm_server.metrics_url).start() if llm_server.metrics_url else None
        shape = f"rate={spec.rate}/s" if spec.rate else f"c={spec.concurrency}"
        # no /metrics polling from this process during the run: it stalls the client (measured)
        status = None
        try:
            with Heartbeat(pytest_emitter(request.config), f"{llm_server.target.name} {shape}", status=status,
                           total=spec.warmup + spec.requests if spec.requests else None, source="server count"):
                try:
                    result = fitted.check(_run(llm_server, spec))
                except Exception:  # a client error from a server that died: its exit and log are the cause
                    if not llm_server.alive():
                        _fail_with_death(llm_server)
                    raise
        finally:
            server_metrics = sampler.stop() if sampler is not None else None
        benchmark_bridge.record_load(request.config, request.node, llm_server.target.name, result)
        try:
            llm_server.ensure_alive()
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        return LoadOutcome(result=result, target=llm_server.target, nodeid=request.node.nodeid,
                           session=session, marker_limits=limits, context=_work_lines(fitted),
                           optimisations=session.optimisations_of(llm_server),
                           server_metrics=server_metrics, item=request.node)

    return run


def _work_lines(fitted: FittedLoad) -> list[str]:
    """How the work was fitted to the server, for the SLO table's context lines."""
    return [fitted.describe(), *fitted.notes]


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
