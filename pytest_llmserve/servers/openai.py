"""An already-running OpenAI-compatible server given by URL: nothing to start, only to check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checks.graphs import GraphVerdict
from ..checks.optimisations import OptimisationsReport, unknown_report
from ..settings.config import Target
from .base import LaunchPlan, Probe, ServerHandle
from .defaults import BackendDefaults
from .capability_probe import ready_check


@dataclass(frozen=True)
class OpenAIBackend(BackendDefaults):
    kind: str = "openai"
    managed = False  # already running at target.url: nothing to start, a short readiness wait

    def plan(self, target: Target, port: int, workdir: Path) -> LaunchPlan:
        base_url = str(target.url)
        route = target.capabilities.get("readiness")
        answered: dict[str, str] = {}
        check = ready_check(target.model_name, route, target=target.name)

        def ready(url: str) -> str | None:
            found, why = check(url)
            if found:
                answered["route"] = found
            return why

        # a server of unknown make: whichever of /health, /v1/models, a one-token request answers first;
        # the served model is checked by the capability probe (some servers answer /v1/models with 500)
        return LaunchPlan(
            argv=[],
            env={},
            base_url=base_url,
            probes=(Probe(f"GET {route}" if route else "any readiness route", ready),),
            metrics_url=base_url + "/metrics",
            lists_models=False,
            readiness_route=route or "/health",
            answered=answered,
        )

    def is_port_collision(self, log_text: str) -> bool:
        return False

    def optimisations(self, handle: ServerHandle) -> OptimisationsReport:
        """Nothing to read: the server is not ours, its log and configuration are elsewhere."""
        graphs = GraphVerdict("openai", "unknown", notes=("external server: no log or config to read",))
        return unknown_report("openai", "external server: nothing to read", graphs)
