"""Ready-made engine-promotion gate: a candidate target against the incumbent target it names.

Configure the candidate (the new build) with the name of the incumbent (what serves today)::

    [[tool.llmserve.targets]]
    name = "llama8b-trt-new"
    ...
    options = { promotion_incumbent = "llama8b-trt",
                promotion_concurrency = 8, promotion_requests = 256,   # per round and side
                promotion_rounds = 4, promotion_margin = 0.10,         # worsening that matters
                promotion_input_len = 64, promotion_output_len = 64,
                promotion_metrics = ["ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms", "output_tok_s"] }

Both servers run; rounds are interleaved ABBA with the same prompts on both sides. Each metric gets
pass / regression / improvement / inconclusive from a noise-aware comparison (checks/promotion.py)
that also says what it could detect at the sample size used. The test fails on a regression and on
an inconclusive result (a gate that cannot decide does not approve; the message says how many
requests or rounds would decide it). Targets without `promotion_incumbent` are skipped.
Outside pytest: `llmserve promote --candidate-url ... --incumbent-url ...` (exit 0/1/2).
"""

from __future__ import annotations

import pytest

from pytest_llmserve.load import LoadSpec
from pytest_llmserve.report.progress import pytest_emitter
from pytest_llmserve.gates.promotion import arm_of, capabilities_of, run_ab
from pytest_llmserve.session import ResultEntry, get_session
from pytest_llmserve.settings.suite_options import partner_target_name


def _table(target):
    """The target's typed promotion_* options (checked when the config loaded; here for targets built in code)."""
    try:
        return target.suites.promotion
    except ValueError as exc:
        pytest.fail(f"target {target.name!r} ({target.source}): {exc}", pytrace=False)


@pytest.mark.promotion
def test_candidate_is_not_slower_than_incumbent(request, llm_target, llm_servers):
    incumbent_name = partner_target_name(llm_target, "promotion_incumbent", what="incumbent",
                                         placeholder="target serving today")
    session = get_session(request.config)
    cand, inc = llm_servers(llm_target.name), llm_servers(incumbent_name)
    table = _table(llm_target)
    requests = session.requests_override or table.requests
    spec = LoadSpec(concurrency=table.concurrency, requests=requests, warmup=min(8, requests),
                    input_len=table.input_len, output_len=table.output_len)
    try:
        ab = run_ab(arm_of(cand), arm_of(inc), spec, capabilities=capabilities_of(cand, inc), rounds=table.rounds,
                    metrics=list(table.metrics), margin=table.margin, emit=pytest_emitter(request.config))
    except ValueError as exc:
        pytest.fail(f"promotion {llm_target.name} vs {incumbent_name}: {exc}", pytrace=False)
    rendered = ab.render()
    session.record(ResultEntry(request.node.nodeid, llm_target.name, "promotion", ab.verdict in
                               ("pass", "improvement"), rendered, {**ab.to_dict(), "rows": ab.rows()}))
    request.node.user_properties += [("llmserve.target", llm_target.name), ("llmserve.incumbent", incumbent_name),
                                     ("llmserve.verdict", ab.verdict)]
    request.node.user_properties += [(f"llmserve.{c.metric}.change", round(c.change.estimate, 4))
                                     for c in ab.result.checks]
    if ab.verdict not in ("pass", "improvement"):
        pytest.fail(rendered, pytrace=False)
