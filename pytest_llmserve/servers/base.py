"""What every backend provides (launch plan, readiness probes) and the handle tests receive."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from ..settings.config import Target
from .process import ManagedProcess, read_tail

if TYPE_CHECKING:
    from ..checks.optimisations import OptimisationsReport
    from ..load import ClientOptions, LoadProgress, LoadSpec, RunResult
    from ..evidence.precision import PrecisionInfo
    from .capabilities import Capabilities
    from .triton import TritonEndpoints


class ServerError(Exception):
    """A server could not be started or stopped serving; the message carries its log tail."""


class ServerStartError(ServerError):
    """The server exited, hung or answered wrongly while starting."""


class HostUnsupported(ServerStartError):
    """The target cannot run on this host at all (e.g. an instruction set it needs is missing): not started."""


class ServerDied(ServerError):
    """The server process ended while tests were using it."""


class PortCollision(ServerStartError):
    """The chosen port was taken between choosing it and the server binding it."""


@dataclass(frozen=True)
class Probe:
    """One readiness step: `check(base_url)` returns None when ready, else why not yet."""

    name: str
    check: Callable[[str], str | None]


@dataclass(frozen=True)
class LaunchPlan:
    """How to start one server instance on the given ports."""

    argv: list[str]
    env: dict[str, str]
    base_url: str
    probes: tuple[Probe, ...]
    metrics_url: str | None = None
    cwd: Path | None = None
    files: dict[Path, str] = field(default_factory=dict)  # files to write before launch (e.g. YAML options)
    lists_models: bool = True  # serves OpenAI GET /v1/models, so the served name can be checked
    openai_api: bool = True  # speaks the OpenAI API: its capabilities are probed once it is ready
    readiness_route: str = "/health"  # what the probes above wait on (`answered` may say otherwise)
    answered: dict[str, str] = field(default_factory=dict)  # filled by a readiness probe: {"route": ...}
    endpoints: TritonEndpoints | None = None  # where else it listens (Triton: gRPC and metrics ports)


class Backend(Protocol):
    """A server kind: everything that differs by kind, so that callers never ask which kind it is.

    It builds its launch plan, recognises its own failure messages, reads its own evidence (what
    the server wrote about its CUDA graphs, optimisations and precision), picks the load client
    and says whether the OpenAI capability probe applies. `defaults.BackendDefaults` holds what
    most backends share.
    """

    @property
    def kind(self) -> str: ...

    def plan(self, target: Target, port: int, workdir: Path) -> LaunchPlan: ...

    def is_port_collision(self, log_text: str) -> bool: ...

    def unsupported_reason(self, target: Target) -> str | None:
        """Why this host cannot run `target` at all (it is then not started), or None."""
        ...

    def optimisations(self, handle: ServerHandle) -> OptimisationsReport:
        """The optimisations report (CUDA graphs included) from what this server wrote."""
        ...

    def run_load(self, handle: ServerHandle, spec: LoadSpec, options: ClientOptions,
                 progress: LoadProgress | None = None) -> RunResult:
        """Drive `spec` against the server with the client that speaks its protocol."""
        ...

    def precision_log(self, handle: ServerHandle) -> str:
        """The log text `precision_from_log` reads; "" when this server's log says nothing about precision."""
        ...

    def precision_from_log(self, target: Target, log_text: str) -> PrecisionInfo | None:
        """What precision the server's log says it runs (PrecisionUnknown when it should but does not);
        None when its log is no evidence of that."""
        ...

    def not_probed_because(self) -> str | None:
        """Why the OpenAI capability probe does not apply to this server; None when it is probed."""
        ...

    @property
    def managed(self) -> bool:
        """Whether the plugin starts this server (False: it is already running at the target's `url`)."""
        ...

    def option_problem(self, options: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        """(key, value, problem) for the first of its own `options` (the suites' keys removed) it cannot take."""
        ...


@dataclass
class ServerHandle:
    """A running (or external) server as the tests see it."""

    target: Target
    base_url: str
    model: str
    process: ManagedProcess | None = None
    log_path: Path | None = None
    metrics_url: str | None = None
    startup_s: float | None = None
    workdir: Path | None = None
    capabilities: Capabilities | None = None  # what its API accepts (probed at start-up; None: not OpenAI)
    endpoints: TritonEndpoints | None = None  # the plan's other listening addresses (Triton: gRPC, metrics)

    def workdir_file(self, relative: str) -> Path | None:
        """A file the backend generated for this server (e.g. a Triton model repository entry)."""
        return self.workdir / relative if self.workdir else None

    def alive(self) -> bool:
        """Managed servers: the process runs. External servers are assumed alive."""
        return self.process is None or self.process.alive()

    def log_tail(self, lines: int = 40) -> str:
        return read_tail(self.log_path, lines)

    def log_text(self) -> str:
        """The whole server log (for evidence parsers); bytes are decoded as-is so that progress-bar
        carriage returns do not become extra lines and evidence line numbers stay right."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def ensure_alive(self) -> None:
        """Raise ServerDied with the log tail if the managed process has exited."""
        if self.alive():
            return
        assert self.process is not None
        code = self.process.returncode()
        raise ServerDied(describe_exit(self.target, code, self.log_path, "died during the session"))


def describe_exit(target: Target, code: int | None, log_path: Path | None, what: str) -> str:
    """One message naming the target, how it ended and the last lines of its log."""
    if log_path is None:  # an external (`openai`) server: nothing of ours runs, there is no log to show
        return f"server for target {target.name!r} {what}"
    how = "still running" if code is None else (f"killed by signal {-code}" if code < 0 else f"exit status {code}")
    tail = read_tail(log_path, 30)
    shown = "\n".join(f"  | {line}" for line in tail.splitlines()) or "  | (log is empty)"
    cause = root_cause(read_tail(log_path, 2000))
    because = f"; the log's last error: {cause}" if cause and cause not in tail else ""
    return f"server for target {target.name!r} {what} ({how}){because}; log {log_path}, last lines:\n{shown}"


_EXCEPTION_LINE = re.compile(r"\b((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)): (\S.*)$")
_WRAPPERS = ("Engine core initialization failed", "WorkerProc initialization failed", "See root cause above",
             "check the stack trace above")


def root_cause(log_text: str) -> str | None:
    """The last exception line of a log that is not a wrapper pointing elsewhere ("See root cause above"):
    a long traceback's cause, which a 30-line tail often cuts off."""
    for line in reversed(log_text.splitlines()):
        match = _EXCEPTION_LINE.search(line)
        if match and not any(w in match.group(2) for w in _WRAPPERS):
            return f"{match.group(1)}: {match.group(2).strip()}"
    return None
