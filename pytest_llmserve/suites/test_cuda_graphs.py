"""Ready-made evidence gate: CUDA graphs (and the other optimisations) are what the target promises.

A target states `cuda_graphs = { require = "on", batch_sizes = "1..64" }` (or "off", "any"); without
one, a machine with GPUs requires "on" and a CPU-only machine records the evidence and skips.
"""

from __future__ import annotations

import pytest

from pytest_llmserve.checks.graph_requirement import CudaGraphRequirement
from pytest_llmserve.evidence.optimisations import requirement_of
from pytest_llmserve.session import ResultEntry, get_session


@pytest.mark.cuda_graphs
def test_cuda_graphs_match_the_target_promise(request, llm_server):
    session = get_session(request.config)
    report = session.optimisations_of(llm_server)
    requirement = requirement_of(llm_server)
    if requirement is None and session.hardware.inventory.gpus:
        requirement = CudaGraphRequirement("on")
    title = f"CUDA graphs {request.node.nodeid} | target {llm_server.target.name} ({llm_server.target.kind})"
    table = f"{title}\n{report.render()}"
    if requirement is None:
        session.record(ResultEntry(request.node.nodeid, llm_server.target.name, "graphs", True, table,
                                   {"optimisations": report.to_dict(), "required": None}))
        pytest.skip(f"no cuda_graphs requirement for {llm_server.target.name!r} on a CPU-only machine; "
                    f"evidence says {report.graphs.state}")
    problems = requirement.failures(report.graphs)
    required = f"required: {requirement.require}" + (
        f", batch sizes {requirement.batch_sizes[0]}..{requirement.batch_sizes[-1]}" if requirement.batch_sizes else "")
    table = f"{table}\n  {required}"
    session.record(ResultEntry(request.node.nodeid, llm_server.target.name, "graphs", not problems, table,
                               {"optimisations": report.to_dict(), "required": requirement.require}))
    if problems:
        pytest.fail(f"CUDA graphs check failed: {'; '.join(problems)}\n{report.graphs.render()}", pytrace=False)
