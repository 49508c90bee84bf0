"""Gather what a running server says about its configuration: CUDA graphs and other optimisations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checks.graph_requirement import CudaGraphRequirement, assert_cuda_graphs as _assert_verdict
from .checks.graphs import GraphVerdict
from .checks.optimisations import OptimisationsReport, collect_optimisations
from .checks.vllm_args import apply_vllm_args, parse_vllm_args
from .servers.base import ServerHandle
from .option_tables import backend_options


def optimisations_for(handle: ServerHandle) -> OptimisationsReport:
    """The optimisations report for a server, from its log and the files its target points at."""
    target = handle.target
    engine_dir = target.engine.get("dir") if target.engine else None
    engine_config = _read_json(Path(engine_dir) / "config.json") if engine_dir else None
    pbtxt_path = handle.workdir_file("model_repository/tensorrt_llm/config.pbtxt") if target.kind == "triton" else None
    # vLLM's log never prints max_num_seqs: its batch ceiling (and capture settings) come from the args
    vllm_args = parse_vllm_args(target.args) if target.kind == "vllm" else None
    max_batch = (vllm_args.max_num_seqs if vllm_args else None) or _max_batch_size(target.engine, target.options)
    report = collect_optimisations(
        target.kind,
        log_text=handle.log_text(),
        log_source=handle.log_path.name if handle.log_path else "server.log",
        options=backend_options(target) if target.kind == "trtllm-serve" else None,
        config_pbtxt=pbtxt_path.read_text() if pbtxt_path and pbtxt_path.exists() else None,
        engine_config=engine_config,
        max_batch_size=None if vllm_args else max_batch,  # vLLM: checked below, once the sizes are known
        trtllm_backend=str(target.engine.get("backend", "pytorch")) if target.engine else "pytorch",
    )
    if vllm_args is not None:
        report = replace(report, graphs=apply_vllm_args(report.graphs, vllm_args, max_batch))
    return report


def cuda_graphs_for(handle: ServerHandle) -> GraphVerdict:
    """Just the CUDA-graph verdict of a server, with its evidence lines."""
    return optimisations_for(handle).graphs


def assert_cuda_graphs(handle: ServerHandle, *, require: str = "on", batch_sizes: Any = None) -> GraphVerdict:
    """Fail (quoting the evidence lines) unless the server's CUDA graphs meet the requirement."""
    verdict = cuda_graphs_for(handle)
    _assert_verdict(verdict, require=require, batch_sizes=batch_sizes)
    return verdict


def requirement_of(handle: ServerHandle) -> CudaGraphRequirement | None:
    """The target's configured `cuda_graphs` requirement, if any."""
    if not handle.target.cuda_graphs:
        return None
    return CudaGraphRequirement.from_config(handle.target.cuda_graphs, where=f"{handle.target.name}.cuda_graphs")


def _max_batch_size(engine: Any, options: Any) -> int | None:
    for table in (engine or {}, options or {}):
        value = table.get("max_batch_size")
        if isinstance(value, int):
            return value
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
