"""Ready-made engine-vs-engine gate: a candidate target's greedy tokens against the reference target it names.

Configure the candidate (e.g. a TensorRT-LLM engine) with the name of the incumbent (e.g. vLLM)::

    [[tool.llmserve.targets]]
    name = "llama8b-trt"
    ...
    options = { equivalence_reference = "llama8b-vllm",
                engine_equivalence = { prompts = 2000, max_tokens = 32, divergence_threshold = 0.03,
                                       budget_s = 300, concurrency = 16 } }

Both servers get the same seeded prompts (windows of `prompt_file`, default the shipped stdlib-64
set) as token ids, greedy. The gate is the divergence per token (diverged prompts / positions at
risk) with a Wilson interval against `divergence_threshold`: pass below, fail above, and an interval
straddling it fails as inconclusive, saying how many prompts would decide. Each side's outputs are
cached under `<baselines_dir>/<hardware>/engine_outputs/` by its identity (model, engine files, args,
version, prompts, decoding), so the incumbent is sent nothing once cached; --update-baselines
re-sends both. Other keys: prompt_file, seed, min_prompt_len, max_prompt_len, top_k, confidence.
Targets without `equivalence_reference` are skipped.
"""

from __future__ import annotations

import pytest

from pytest_llmserve.gates.engine_equivalence import REFERENCE_OPTION, run_engine_equivalence
from pytest_llmserve.reference.hf import ReferenceError
from pytest_llmserve.evidence.server_logprobs import ServerLogprobsError
from pytest_llmserve.session import ResultEntry, get_session
from pytest_llmserve.settings.suite_options import partner_target_name, require_capabilities
from pytest_llmserve.suites import checkout_fixture

DEFAULT_PROMPTS = checkout_fixture("prompts", "stdlib-64.jsonl")  # None in an installed package


@pytest.mark.equivalence
def test_candidate_engine_matches_reference_engine(request, llm_target, llm_servers):
    reference_name = partner_target_name(llm_target, REFERENCE_OPTION, what="reference engine to compare with",
                                         placeholder="incumbent target name")
    session = get_session(request.config)
    candidate, incumbent = llm_servers(llm_target.name), llm_servers(reference_name)
    for server in (candidate, incumbent):
        require_capabilities(server, "token_id_prompts", "logprobs", suite="engine equivalence")
    try:
        run = run_engine_equivalence(candidate, incumbent, default_prompt_file=DEFAULT_PROMPTS,
                                     cache_dir=session.store.root / session.hardware.label / "engine_outputs",
                                     refresh=session.store.update)
    except (ReferenceError, ServerLogprobsError, ValueError) as exc:
        pytest.fail(f"engine equivalence {llm_target.name} vs {reference_name} could not run: {exc}", pytrace=False)
    table = run.render()
    session.record(ResultEntry(request.node.nodeid, llm_target.name, "equivalence", run.report.passed,
                               table, run.data()))
    request.node.user_properties += [("llmserve.divergence_per_token", round(run.report.rate, 6)),
                                     ("llmserve.verdict", run.report.verdict)]
    if not run.report.passed:
        pytest.fail(f"{run.report.verdict.upper()}: {run.report.summary_line()}\n{table}", pytrace=False)
