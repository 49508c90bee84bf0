"""An already-running OpenAI-compatible server given by URL: nothing to start, only to check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Target
from .base import LaunchPlan
from .probes import completion_ok, http_ok


@dataclass(frozen=True)
class OpenAIBackend:
    kind: str = "openai"

    def plan(self, target: Target, port: int, workdir: Path) -> LaunchPlan:
        base_url = str(target.url)
        return LaunchPlan(
            argv=[],
            env={},
            base_url=base_url,
            probes=(http_ok("/v1/models"), completion_ok(target.model_name)),
            metrics_url=base_url + "/metrics",
        )

    def is_port_collision(self, log_text: str) -> bool:
        return False
