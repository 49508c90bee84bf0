"""Ready-made workload gates: each named profile (chat, rag, long-context, batch, multi-turn) for every
selected target, against the target's `slo` limits and a stored baseline per profile.

Which profiles run, and their request count / concurrency, come from the target's `workloads` table
(default: all five at each profile's own shape); lengths are scaled to the server's max_model_len. The
profile's request count is a round: against a statistical baseline the suite measures rounds until every
gated metric is decided or the target's `baseline_gate` budget is spent, as the slo suite does.
"""

from __future__ import annotations

import pytest

from pytest_llmserve.load.workloads import PROFILES


@pytest.mark.workload
@pytest.mark.parametrize("profile", list(PROFILES))
def test_workload_meets_slo(llm_load, llm_target, profile):
    wanted = llm_target.workloads.get("profiles", list(PROFILES))
    if profile not in wanted:
        pytest.skip(f"target {llm_target.name}: workloads.profiles = {wanted} leaves out {profile!r}")
    llm_load.until_decided(workload=profile).assert_slo()
