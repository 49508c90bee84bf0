"""Ready-made token-equivalence gate: each selected target's greedy output against the HF fp32 reference.

Settings come from the target's `options.equivalence` table (top_k, max_tokens, tolerance_nats,
tolerance_scale, precision, min_exact_match_rate, prompts, calibration, calibration_margin, swing_margin,
alpha, compute_precision, weight_precision, kv_cache_precision); the reference (fp32) and the calibration
(HF in the engine's compute precision) are cached under
`<baselines_dir>/reference/` and recomputed with --update-baselines.
"""

from __future__ import annotations

import pytest

from pytest_llmserve.gates.equivalence import run_equivalence
from pytest_llmserve.reference.hf import ReferenceError
from pytest_llmserve.evidence.server_logprobs import ServerLogprobsError
from pytest_llmserve.session import ResultEntry, get_session
from pytest_llmserve.settings.suite_options import require_capabilities
from pytest_llmserve.suites import checkout_fixture

DEFAULT_PROMPTS = checkout_fixture("prompts", "stdlib-64.jsonl")  # None in an installed package


@pytest.mark.equivalence
def test_greedy_tokens_match_hf_reference(request, llm_target, llm_server):
    require_capabilities(llm_server, "token_id_prompts", "logprobs", suite="equivalence")
    session = get_session(request.config)
    try:
        run = run_equivalence(llm_server, cache_dir=session.store.root / "reference",
                              default_prompts=DEFAULT_PROMPTS, refresh=session.store.update)
    except (ReferenceError, ServerLogprobsError, ValueError) as exc:
        pytest.fail(f"equivalence check for target {llm_target.name!r} could not run: {exc}", pytrace=False)
    table = run.render()
    session.record(ResultEntry(request.node.nodeid, llm_target.name, "equivalence",
                               run.report.passed, table, run.data()))
    if not run.report.passed:
        pytest.fail(table, pytrace=False)
