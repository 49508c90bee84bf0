"""Gather what a running server says about its configuration: CUDA graphs and other optimisations."""

from __future__ import annotations

from typing import Any

from ..checks.graph_requirement import CudaGraphRequirement, assert_cuda_graphs as _assert_verdict
from ..checks.graphs import GraphVerdict
from ..checks.optimisations import OptimisationsReport
from ..servers.base import ServerHandle
from ..servers.registry import backend_for


def optimisations_for(handle: ServerHandle) -> OptimisationsReport:
    """The optimisations report for a server, read by its backend from its log and the files its target points at."""
    return backend_for(handle.target.kind).optimisations(handle)


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
