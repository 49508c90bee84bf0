"""Triton Inference Server with the TensorRT-LLM backend, serving an engine through an ensemble.

The plan loads or builds the engine (target.engine, as for trtllm-serve's TensorRT backend),
generates a model repository from tensorrtllm_backend's templates (`triton_repo`), and starts
`tritonserver --model-repository=... --http-port= --grpc-port= --metrics-port=` in the `--flag=value`
form TensorRT-LLM's `scripts/launch_triton_server.py` uses (TP/PP > 1: one `mpirun` rank per GPU,
ranks above 0 loading only `tensorrt_llm`). The LaunchPlan carries one port (HTTP); gRPC and
metrics ports are taken here with `free_port()` and carried as the plan's (and handle's) `endpoints`.

Options (target.options): `templates` (path to all_models/inflight_batcher_llm, else
$LLMSERVE_TRITON_TEMPLATES), `fill` (table of extra fill_template values, e.g.
kv_cache_free_gpu_mem_fraction), `decoupled` (default true: streaming needs it), `server_args`,
`protocol` (what load clients use: "grpc", the default, or "http"; see `load_protocol`).
The served model name is the target's model_name (the ensemble is renamed to it).
Readiness: `/v2/health/ready`, then `/v2/models/<name>/ready` (one probe, so the lifecycle's
OpenAI `/v1/models` check, which Triton does not serve, is never reached).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import httpx

from ..checks.graphs import GraphVerdict
from ..checks.optimisations import OptimisationsReport, unknown_report
from ..checks.triton_evidence import triton_optimisations
from ..settings.config import Target
from ..engines import EngineError, EngineHandle, EngineSpec, detect_toolchain, prepare_engine
from ..engines.config import is_engine_dir
from ..load import ClientOptions, LoadProgress, LoadSpec, RunResult
from ..load.triton_client import run_triton_load
from .triton_repo import TEMPLATES_ENV, TritonRepoError, generate_repository
from ..settings.option_tables import backend_options
from .base import LaunchPlan, Probe, ServerHandle, ServerStartError
from .defaults import BackendDefaults
from .evidence_sources import engine_config, log_source
from .probes import NOT_READY_ERRORS, PROBE_TIMEOUT_S
from .process import free_port

DEFAULT_LAUNCHER = ("tritonserver",)
_COLLISION = re.compile(r"already in use|failed to start (HTTP|GRPC|Metrics) service|Address already in use", re.I)
_OPTION_KEYS = {"templates", "fill", "decoupled", "server_args", "protocol"}
PROTOCOLS = ("grpc", "http")  # options.protocol: how load clients stream (checked at config load and at start)
MODEL_CONFIG = "model_repository/tensorrt_llm/config.pbtxt"  # in the server's workdir


@dataclass(frozen=True)
class TritonEndpoints:
    """Where one Triton instance listens."""

    http_url: str
    grpc_url: str  # host:port, as tritonclient.grpc expects
    metrics_url: str
    model: str
    repository: Path


@dataclass(frozen=True)
class TritonBackend(BackendDefaults):
    kind: str = "triton"
    engine_fn: Callable[[EngineSpec], EngineHandle] | None = None  # tests inject; default: prepare_engine

    def option_problem(self, options: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        """Unknown keys and a protocol other than grpc/http (checked when the config loads, and again at start)."""
        for key, value in options.items():
            if key not in _OPTION_KEYS:
                return key, value, f"unknown triton option; known: {', '.join(sorted(_OPTION_KEYS))}"
        protocol = options.get("protocol", "grpc")
        if str(protocol).lower() not in PROTOCOLS:
            return "protocol", protocol, "use 'grpc' or 'http'"
        return None

    def plan(self, target: Target, port: int, workdir: Path) -> LaunchPlan:
        options = backend_options(target)  # the suites' keys (accuracy_reference, equivalence, ...) are not Triton's
        unknown = set(options) - _OPTION_KEYS
        if unknown:
            raise ServerStartError(f"target {target.name!r}: unknown triton options {sorted(unknown)}; "
                                   f"known: {sorted(_OPTION_KEYS)}")
        try:
            spec = EngineSpec.from_table({**target.engine, "backend": "tensorrt"}, model=target.model,
                                         where=f"target {target.name!r} engine")
            engine, tokenizer = self._engine_and_tokenizer(target, spec)
        except EngineError as exc:
            raise ServerStartError(f"target {target.name!r}: {exc}") from None
        templates = options.get("templates") or os.environ.get(TEMPLATES_ENV)
        if not templates:
            raise ServerStartError(
                f"target {target.name!r}: set options.templates (or ${TEMPLATES_ENV}) to tensorrtllm_backend's "
                "all_models/inflight_batcher_llm, from the release matching your tritonserver container"
            )
        try:
            repo = generate_repository(
                Path(templates), workdir / "model_repository", engine_dir=engine.path.resolve(),
                tokenizer_dir=Path(tokenizer).resolve(), engine=engine.config, ensemble_name=target.model_name,
                decoupled=bool(options.get("decoupled", True)), overrides=_mapping(options.get("fill", {})),
            )
        except TritonRepoError as exc:
            raise ServerStartError(f"target {target.name!r}: {exc}") from None
        load_protocol(target)  # validate now, not when the first load runs
        server_args = options.get("server_args", [])
        if not isinstance(server_args, list) or not all(isinstance(a, str) for a in server_args):
            raise ServerStartError(f"target {target.name!r}: options.server_args must be a list of strings, "
                                   f"e.g. ['--log-verbose=1'], got {server_args!r}")
        grpc_port, metrics_port = _two_more_ports(port)
        argv = tritonserver_argv(
            list(target.launcher or DEFAULT_LAUNCHER), repo.path, port, grpc_port, metrics_port,
            world_size=engine.config.world_size, shm_prefix=f"llmserve{port}_",
            extra=[*server_args, *target.args],
        )
        base_url = f"http://127.0.0.1:{port}"
        endpoints = TritonEndpoints(http_url=base_url, grpc_url=f"127.0.0.1:{grpc_port}",
                                    metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                                    model=target.model_name, repository=repo.path)
        return LaunchPlan(
            argv=argv,
            env={**os.environ, **target.env},
            base_url=base_url,
            probes=(triton_ready(target.model_name),),
            metrics_url=endpoints.metrics_url,
            cwd=workdir,
            files={workdir / "fill_template_commands.sh": "\n".join(repo.fill_commands) + "\n"},
            lists_models=False,  # KServe v2, not OpenAI: the ready probe names the model instead
            openai_api=False,
            readiness_route="/v2/health/ready",
            endpoints=endpoints,
        )

    def is_port_collision(self, log_text: str) -> bool:
        return bool(_COLLISION.search(log_text))

    def optimisations(self, handle: ServerHandle) -> OptimisationsReport:
        """From the generated tensorrt_llm config.pbtxt, the server log and the engine's config.json."""
        path = handle.workdir_file(MODEL_CONFIG)
        if path is None or not path.exists():
            why = "no tensorrt_llm config.pbtxt was given"
            return unknown_report("triton", why, GraphVerdict("triton", "unknown", notes=(why,)))
        return triton_optimisations(path.read_text(), handle.log_text(), engine_config=engine_config(handle.target),
                                    log_source=log_source(handle))

    def run_load(self, handle: ServerHandle, spec: LoadSpec, options: ClientOptions,
                 progress: LoadProgress | None = None) -> RunResult:
        """Triton's own client (gRPC stream or HTTP generate_stream, `options.protocol`) on the plan's endpoints,
        judged by the target's client limits; metrics are sampled by the caller (drive.py), not here."""
        if handle.endpoints is None:
            raise KeyError(f"no Triton server planned at {handle.base_url}: its handle has no endpoints")
        result = run_triton_load(handle.endpoints, spec, protocol=load_protocol(handle.target), metrics_interval_s=None)
        return result.to_run_result(options.limits)

    def not_probed_because(self) -> str | None:
        return "Triton's own protocol, not the OpenAI API"

    def _engine_and_tokenizer(self, target: Target, spec: EngineSpec) -> tuple[EngineHandle, str]:
        fn = self.engine_fn or (lambda s: prepare_engine(s, detect_toolchain))
        if target.model and is_engine_dir(target.model):
            if spec.tokenizer is None:
                raise EngineError("model is an engine directory; set engine.tokenizer to the Hugging Face directory")
            return fn(replace(spec, dir=Path(target.model))), str(spec.tokenizer)
        return fn(spec), str(spec.tokenizer or target.model)


def load_protocol(target: Target) -> str:
    """The streaming protocol load clients should use for this Triton target ("grpc" or "http")."""
    protocol = str(target.options.get("protocol", "grpc")).lower()
    if protocol not in PROTOCOLS:
        raise ServerStartError(f"target {target.name!r}: options.protocol = {protocol!r}: use 'grpc' or 'http'")
    return protocol


def tritonserver_argv(launcher: list[str], repository: Path, http_port: int, grpc_port: int, metrics_port: int,
                      *, world_size: int = 1, shm_prefix: str = "prefix0_", extra: list[str] | None = None) -> list[str]:
    """The tritonserver command line (mpirun across ranks when the engine spans several GPUs)."""
    common = [f"--model-repository={repository}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
              f"--metrics-port={metrics_port}", "--disable-auto-complete-config"]
    extra = list(extra or [])
    if world_size == 1:
        # python-backend shared-memory regions are named by prefix: unique per server so that several
        # servers on one host (xdist workers) do not collide
        return launcher + common + [f"--backend-config=python,shm-region-prefix-name={shm_prefix}"] + extra
    argv = ["mpirun", "--allow-run-as-root"]
    for rank in range(world_size):
        argv += ["-n", "1", *launcher, *common, f"--backend-config=python,shm-region-prefix-name={shm_prefix}{rank}_"]
        if rank != 0:
            argv += ["--model-control-mode=explicit", "--load-model=tensorrt_llm"]
        argv += [*extra, ":"]
    return argv[:-1]


def triton_ready(model: str) -> Probe:
    """Ready when the server and the named model both say so (a loading model keeps /ready at 503)."""

    def check(base_url: str) -> str | None:
        for path in ("/v2/health/ready", f"/v2/models/{model}/ready"):
            try:
                response = httpx.get(base_url + path, timeout=PROBE_TIMEOUT_S)
            except NOT_READY_ERRORS as exc:
                return f"GET {path}: {type(exc).__name__}"
            if response.status_code != 200:
                return f"GET {path}: HTTP {response.status_code}"
        return None

    return Probe(f"GET /v2/health/ready + /v2/models/{model}/ready", check)


def _two_more_ports(http_port: int) -> tuple[int, int]:
    ports: list[int] = []
    while len(ports) < 2:
        p = free_port()
        if p != http_port and p not in ports:
            ports.append(p)
    return ports[0], ports[1]


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ServerStartError(f"options.fill must be a table of fill_template values, got {value!r}")
    return value
