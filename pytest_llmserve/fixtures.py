"""Fixtures users write tests with: llm_target, llm_server, llm_load."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from .config import ConfigError, Target
from .load import LoadSpec, run_load
from .outcome import LoadOutcome
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
            spec.validate()
        except (TypeError, ValueError) as exc:
            pytest.fail(f"llm_load({', '.join(f'{k}={v!r}' for k, v in spec_args.items())}): {exc}", pytrace=False)
        result = run_load(llm_server.base_url, llm_server.model, spec)
        try:
            llm_server.ensure_alive()
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        return LoadOutcome(result=result, target=llm_server.target, nodeid=request.node.nodeid,
                           session=session, marker_limits=limits)

    return run
