"""Start servers once per session, wait until they really serve, and stop every one of them."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..settings.config import Target
from .base import HostUnsupported, LaunchPlan, PortCollision, ServerHandle, ServerStartError, describe_exit
from .capabilities import Capabilities, CapabilityError
from .capability_probe import probe_capabilities
from .probes import served_models
from .process import ManagedProcess, free_port, read_tail
from .registry import backend_for

PORT_ATTEMPTS = 3
POLL_S = 0.5


@dataclass
class ServerPool:
    """Session-owned servers, started lazily by target name and all stopped at session end."""

    log_dir: Path
    progress: Callable[[str], None] = lambda message: None
    handles: dict[str, ServerHandle] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    failure_kinds: dict[str, type[ServerStartError]] = field(default_factory=dict)  # raised again as the same kind
    leftovers: dict[str, list[int]] = field(default_factory=dict)
    probed: dict[str, Capabilities] = field(default_factory=dict)  # kept after the servers stop (for reports)

    def merge_remote(self, probed: Mapping[str, Capabilities], failures: Mapping[str, str]) -> None:
        """What another process's pool found (an xdist worker's), for the reports; the first word on a target stays."""
        for name, caps in probed.items():
            self.probed.setdefault(name, caps)
        for name, message in failures.items():
            self.failures.setdefault(name, message)

    def get(self, target: Target) -> ServerHandle:
        """The running server for `target`, starting it on first use; a failed start is not retried."""
        if target.name in self.failures:
            # the same kind: a target this host cannot run still skips in every later test, not fails
            raise self.failure_kinds.get(target.name, ServerStartError)(self.failures[target.name])
        if target.name not in self.handles:
            try:
                self.handles[target.name] = handle = start_server(target, self.log_dir, self.progress)
            except ServerStartError as exc:
                self.failures[target.name] = str(exc)
                self.failure_kinds[target.name] = type(exc)
                raise
            if handle.capabilities is not None:
                self.probed[target.name] = handle.capabilities
        return self.handles[target.name]

    def stop(self, name: str) -> list[int]:
        """Stop one server's whole process tree; return pids that survived (should be none)."""
        handle = self.handles.pop(name, None)
        if handle is None or handle.process is None:
            return []
        survivors = handle.process.terminate_tree()
        if survivors:
            self.leftovers[name] = survivors
        return survivors

    def stop_all(self) -> dict[str, list[int]]:
        """Stop everything; the mapping lists survivors per target (empty when clean)."""
        for name in list(self.handles):
            self.stop(name)
        return dict(self.leftovers)


def start_server(target: Target, log_dir: Path, progress: Callable[[str], None] = lambda m: None) -> ServerHandle:
    """Launch (unless external) and wait for readiness; on any failure nothing is left running."""
    backend = backend_for(target.kind)
    if not target.is_managed:
        plan = backend.plan(target, 0, log_dir)
        handle = ServerHandle(target=target, base_url=plan.base_url, model=target.model_name, metrics_url=plan.metrics_url,
                              endpoints=plan.endpoints)
        _wait_ready(handle, plan, target.startup_timeout_s)
        _probe(handle, plan, progress)
        return handle
    reason = backend.unsupported_reason(target)
    if reason:
        raise HostUnsupported(f"target {target.name!r} cannot run on this host: {reason}; not started")
    last_error: ServerStartError | None = None
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        workdir = log_dir / f"{target.name}-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        plan = backend.plan(target, port, workdir)
        if target.cpus:  # the whole server tree on these CPUs (e.g. leave a core to the load client)
            plan = dataclasses.replace(plan, argv=["taskset", "-c", target.cpus, *plan.argv])
        for path, text in plan.files.items():
            path.write_text(text)
        log_path = log_dir / f"{target.name}-{port}.log"
        progress(f"llmserve: starting {target.kind} target {target.name!r} on port {port} (log {log_path})")
        started = time.monotonic()
        try:
            process = ManagedProcess.spawn(plan.argv, plan.env, log_path, cwd=plan.cwd)
        except OSError as exc:  # e.g. a launcher that does not exist or is not executable
            raise ServerStartError(
                f"server for target {target.name!r} could not be started: {plan.argv[0]!r}: "
                f"{exc.strerror or exc}; check the target's launcher (or that the server is installed)"
            ) from None
        handle = ServerHandle(
            target=target, base_url=plan.base_url, model=target.model_name,
            process=process, log_path=log_path, metrics_url=plan.metrics_url, workdir=workdir, endpoints=plan.endpoints,
        )
        try:
            _wait_ready(handle, plan, target.startup_timeout_s)
        except ServerStartError as exc:
            process.terminate_tree()
            if backend.is_port_collision(read_tail(log_path, 200)):
                if attempt < PORT_ATTEMPTS:
                    progress(f"llmserve: port {port} was taken, retrying with another port")
                    last_error = exc
                    continue
                raise PortCollision(f"target {target.name!r}: each of {PORT_ATTEMPTS} free ports was taken before "
                                    f"the server could bind it (last: {port}); is something on this host grabbing "
                                    f"ports? {exc}") from None
            raise
        except BaseException:  # Ctrl-C (or any other error) while waiting: leave nothing running
            process.terminate_tree()
            raise
        handle.startup_s = time.monotonic() - started
        try:
            _probe(handle, plan, progress)
        except BaseException:
            process.terminate_tree()
            raise
        process.remember_tree()
        progress(f"llmserve: target {target.name!r} ready in {handle.startup_s:.1f} s at {plan.base_url}")
        return handle
    assert last_error is not None
    raise last_error


def _probe(handle: ServerHandle, plan: LaunchPlan, progress: Callable[[str], None]) -> None:
    """Find out what the server's API accepts (once, before any load); a wrong server or model stops here."""
    if not plan.openai_api:
        return
    target = handle.target
    try:
        handle.capabilities = probe_capabilities(
            handle.base_url, handle.model, readiness=plan.answered.get("route", plan.readiness_route),
            overrides=target.capabilities, tokenizer_candidates=tokenizer_candidates(target), target=target.name,
            metrics_path=_metrics_path(handle))
    except CapabilityError as exc:
        raise ServerStartError(str(exc)) from None
    if not handle.capabilities.metrics:
        handle.metrics_url = None  # nothing to sample during load
    progress(f"llmserve: target {target.name!r} capabilities: {handle.capabilities.describe()}")


def _metrics_path(handle: ServerHandle) -> str:
    """The path of the backend's metrics URL on the server's own host, else /metrics."""
    from urllib.parse import urlsplit

    if handle.metrics_url and handle.metrics_url.startswith(handle.base_url):
        return urlsplit(handle.metrics_url).path or "/metrics"
    return "/metrics"


def tokenizer_candidates(target: Target) -> tuple[str, ...]:
    """Where a local tokenizer for the target's model may be: its model path, as given or beside the config."""
    if not target.model:
        return ()
    out = [target.model]
    if not target.source.startswith("<"):
        out.append(str(Path(target.source).parent / target.model))
    return tuple(out)


def _wait_ready(handle: ServerHandle, plan: LaunchPlan, timeout_s: float) -> None:
    """Run the probes in order until each passes; fail at once if the process exits.

    After the first probe (the server answers HTTP) the served model name is checked, so a
    wrong name fails at once instead of timing out in the completion probe.
    """
    deadline = time.monotonic() + timeout_s
    for index, probe in enumerate(plan.probes):
        if index == 1 and plan.lists_models:
            _check_model_name(handle)
        reason: str | None = "not tried"
        while True:
            if not handle.alive():
                code = handle.process.returncode() if handle.process else None
                raise ServerStartError(describe_exit(handle.target, code, handle.log_path, "exited while starting"))
            try:
                reason = probe.check(handle.base_url)
            except CapabilityError as exc:  # answers, but is not what the target says (not OpenAI, wrong model)
                raise ServerStartError(str(exc)) from None
            if reason is None:
                break
            if time.monotonic() > deadline:
                raise ServerStartError(
                    describe_exit(handle.target, None, handle.log_path,
                                  f"was not ready after {timeout_s:g} s (startup_timeout_s; last probe: {reason})")
                )
            time.sleep(POLL_S)


def _check_model_name(handle: ServerHandle) -> None:
    """A server that answers but serves another model is a configuration error, not a pass."""
    try:
        models = served_models(handle.base_url)
    except Exception as exc:  # noqa: BLE001 - any failure here is reported with context
        raise ServerStartError(f"target {handle.target.name!r}: GET /v1/models failed: {exc}") from None
    if handle.model not in models:
        raise ServerStartError(
            f"target {handle.target.name!r} expects model {handle.model!r} but the server at "
            f"{handle.base_url} serves {models}; set served_model_name (or model for kind 'openai')"
        )
