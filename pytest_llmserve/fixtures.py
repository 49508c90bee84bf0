"""Fixtures users write tests with: llm_target, llm_server, llm_load."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NoReturn

import pytest

from .integrations import benchmark as benchmark_bridge
from .settings.config import ConfigError, Target
from .store.baseline_ids import baseline_id
from .store.baseline_samples import check_shape
from .store.baselines import BaselineError, is_statistical
from .gates.drive import client_count, drive_server, start_metrics
from .load import LoadProgress, LoadSpec, RunResult
from .load.fit import FittedLoad, fit_load
from .load.trace import TraceReplay
from .load.workloads import Workload, workload
from .gates.measure import Planner, baseline_rounds, measure, merge_results, plan_mode
from .hardware.host import host_difference, host_fingerprint
from .gates.outcome import LoadOutcome
from .report.progress import Heartbeat, pytest_emitter
from .servers.info import CacheReset, max_model_len, reset_prefix_cache
from .servers.base import HostUnsupported, ServerError, ServerHandle
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
    except HostUnsupported as exc:
        _skip_or_fail(llm_target, exc)
    except ServerError as exc:
        _fail_once(str(exc))


@pytest.fixture
def llm_server(_llm_server_session: ServerHandle) -> ServerHandle:
    """The running server; a server that died earlier in the session fails the test with its log tail."""
    try:
        _llm_server_session.ensure_alive()
    except ServerError as exc:
        _fail_once(str(exc))
    return _llm_server_session


@pytest.fixture(scope="session")
def llm_servers(request: pytest.FixtureRequest) -> Callable[[str], ServerHandle]:
    """Start-or-get the server of any configured target by name (for tests comparing two targets)."""
    session = get_session(request.config)

    def get(name: str) -> ServerHandle:
        try:
            target = session.config.target(name)
            handle = session.pool.get(target)
            handle.ensure_alive()
        except ConfigError as exc:
            _fail_once(f"llm_servers({name!r}): {exc}")
        except HostUnsupported as exc:
            _skip_or_fail(target, exc)
        except ServerError as exc:
            _fail_once(str(exc))
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
    nodeid, key = request.node.nodeid, baseline_id(request.node)  # key: where its baselines are stored

    def spec_of(spec_args: dict[str, Any]) -> tuple[FittedLoad, list[str]]:
        shown = ", ".join(f"{k}={v!r}" for k, v in spec_args.items())
        if session.requests_override is not None and spec_args.get("duration_s") is None:
            spec_args["requests"] = session.requests_override
        context: list[str] = []
        try:
            explicit = dict(spec_args)
            name = spec_args.pop("workload", None)
            trace = spec_args.pop("trace", None)
            if trace is not None:
                replay = resolve_trace(llm_server, trace, spec_args)
                spec = replay.spec
                context.append(replay.describe())
            elif name is not None:
                wl = resolve_workload(llm_server, name, spec_args)
                spec = wl.spec
                context.append(wl.describe())
            else:
                spec = LoadSpec(**spec_args)
            spec.validate()
            # endpoint, prompt form and matched work as the server's probed capabilities allow
            fitted = fit_load(spec, llm_server.capabilities, explicit=explicit)
        except (TypeError, ValueError) as exc:
            _fail_once(f"llm_load({shown}): {exc}")
        return fitted, context + _work_lines(fitted)

    resets: list[CacheReset] = []

    def one(fitted: FittedLoad, spec: LoadSpec) -> RunResult:
        resets.append(reset_prefix_cache(llm_server.base_url))  # each round starts from a cold cache
        shape = f"rate={spec.rate}/s" if spec.rate else f"c={spec.concurrency}"
        # no /metrics polling from this process during the run: it stalls the client (measured); the
        # client's own count of finished requests instead (None with several client processes)
        counted = LoadProgress()
        status = client_count(counted)
        with Heartbeat(pytest_emitter(request.config), f"{llm_server.target.name} {shape}", status=status,
                       total=spec.warmup + spec.requests if spec.requests else None):
            try:
                return fitted.check(drive_server(llm_server, spec, counted))
            except Exception:  # a client error from a server that died: its exit and log are the cause
                if not llm_server.alive():
                    _fail_with_death(llm_server)
                raise

    def measured(spec_args: dict[str, Any], sequential: bool) -> LoadOutcome:
        fitted, context = spec_of(spec_args)
        spec = fitted.spec
        gate = session.gate_settings(llm_server.target)
        entry, baseline = None, None
        if not session.store.update:
            try:
                entry = session.store.lookup_entry(llm_server.target.name, key)
                if sequential and entry is not None and is_statistical(entry):
                    check_shape(entry, spec, session.store.path_for(llm_server.target.name), key)
                    baseline = baseline_rounds(session.store, llm_server.target.name, key)
            except BaselineError as exc:
                _fail_once(str(exc))
        other_host = entry is not None and host_difference(entry.get("host"), host_fingerprint()) is not None
        mode = plan_mode(entry, session.store.update, sequential, other_host)
        if mode == "record" and not sequential:
            mode = "repeat"
        planner = Planner(gate, mode, session.repeats(gate), baseline)
        sampler = start_metrics(llm_server.metrics_url)
        try:
            m = measure(lambda i: one(fitted, spec if i == 0 else dataclasses.replace(spec, warmup=0)), planner,
                        session.retries(gate), llm_server.alive)
        finally:
            server_metrics = sampler.stop() if sampler is not None else None
        if other_host and sequential:
            m.stopped = "one round: the baseline was recorded on another host, so no round count gives a verdict"
        result = merge_results(m.results)
        benchmark_bridge.record_load(request.config, request.node, llm_server.target.name, result)
        try:
            llm_server.ensure_alive()
        except ServerError as exc:
            _fail_once(str(exc))
        hit_rate = server_metrics.prefix_cache_hit_rate if server_metrics is not None else None
        if resets and (resets[-1].done or hit_rate is None or hit_rate > 0):  # a cache never hit inflated nothing
            context.append(resets[-1].line)
        resets.clear()
        return LoadOutcome(result=result, target=llm_server.target, nodeid=nodeid, baseline_id=key,
                           session=session, marker_limits=limits, context=context,
                           metrics_url=llm_server.metrics_url,
                           optimisations=session.optimisations_of(llm_server),
                           server_metrics=server_metrics, item=request.node, measurement=m)

    def run(**spec_args: Any) -> LoadOutcome:
        return measured(spec_args, sequential=False)

    run.until_decided = lambda **spec_args: measured(spec_args, sequential=True)  # type: ignore[attr-defined]
    return run


def resolve_workload(server: ServerHandle, name: str, spec_args: dict[str, Any]) -> Workload:
    """A named profile for this server: the target's `workloads` table, then the test's arguments;
    lengths scaled to the server's max_model_len (the table's, else what GET /v1/models says)."""
    table = server.target.workloads
    shape = {k: table[k] for k in ("requests", "concurrency", "warmup") if k in table}
    args = shape | dict(table.get(name, {})) | spec_args  # all profiles < this profile < the test's arguments
    limit = table.get("max_model_len") or max_model_len(server.base_url, server.model)
    return workload(name, max_model_len=limit, **args)


def resolve_trace(server: ServerHandle, path: str, spec_args: dict[str, Any]) -> TraceReplay:
    """A trace file (or "shipped") for this server: trace_speed / trace_repeat / seed from the arguments."""
    from .load.trace import SHIPPED_TRACE, load_trace, trace_spec

    known = {"trace_speed": "speed", "trace_repeat": "repeat", "seed": "seed", "request_timeout_s": "request_timeout_s"}
    unknown = set(spec_args) - set(known) - {"requests"}
    if unknown:
        raise ValueError(f"a trace sets its own load shape; leave out {', '.join(sorted(unknown))}")
    limit = server.target.workloads.get("max_model_len") or max_model_len(server.base_url, server.model)
    return trace_spec(load_trace(SHIPPED_TRACE if path == "shipped" else path), max_model_len=limit,
                      **{known[k]: v for k, v in spec_args.items() if k in known})


def _fail_once(message: str) -> NoReturn:
    """Fail the test with `message` shown once: raised from inside an `except`, pytest.fail would chain
    the caught error ("During handling of the above exception...") and print its message, a server's
    log tail included, a second time."""
    raise pytest.fail.Exception(message, pytrace=False) from None


def _work_lines(fitted: FittedLoad) -> list[str]:
    """How the work was fitted to the server, for the SLO table's context lines."""
    return [fitted.describe(), *fitted.notes]


def _skip_or_fail(target: Target, exc: HostUnsupported) -> NoReturn:
    """A target this host cannot run: skip its tests where the target says `unsupported_host = "skip"`."""
    if target.unsupported_host == "skip":
        pytest.skip(f"{exc} (unsupported_host = \"skip\")")
    _fail_once(f"{exc}; set unsupported_host = \"skip\" on the target to skip its tests on such hosts")


def _fail_with_death(server: ServerHandle) -> None:
    try:
        server.ensure_alive()
    except ServerError as exc:
        _fail_once(str(exc))
