"""What a backend does unless it says otherwise: runs anywhere, the OpenAI streaming client, no precision in its log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..load import ClientOptions, LoadProgress, LoadSpec, RunResult, run_load
from .base import ServerHandle

if TYPE_CHECKING:
    from ..settings.config import Target
    from ..evidence.precision import PrecisionInfo


class BackendDefaults:
    """Mixed into each backend; a backend overrides what its server does differently."""

    managed = True  # the plugin starts the server (a class attribute, not a dataclass field)

    def unsupported_reason(self, target: Target) -> str | None:
        """Why this host cannot run `target` at all; None: let the server itself decide."""
        return None

    def run_load(self, handle: ServerHandle, spec: LoadSpec, options: ClientOptions,
                 progress: LoadProgress | None = None) -> RunResult:
        """Drive load with the OpenAI streaming client (the server speaks the OpenAI API)."""
        return run_load(handle.base_url, handle.model, spec, options=options, progress=progress)

    def precision_log(self, handle: ServerHandle) -> str:
        """The log text `precision_from_log` reads; "" when this server's log says nothing about precision."""
        return ""

    def precision_from_log(self, target: Target, log_text: str) -> PrecisionInfo | None:
        """What precision the server's log says it runs; None when its log is no evidence of that."""
        return None

    def not_probed_because(self) -> str | None:
        """Why the capability probe does not apply to this server (None: it speaks the OpenAI API, so it is probed)."""
        return None

    def option_problem(self, options: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        """Any options are taken (an OpenAI server has none; trtllm-serve's go to its YAML as they are)."""
        return None
