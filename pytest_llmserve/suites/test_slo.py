"""Ready-made SLO gates for every selected target, at each concurrency the target lists.

Limits come from the target's `slo` table; each run is also compared with its stored baseline. The
request count is a round: with a statistical baseline the suite measures rounds until every gated metric's
interval is narrow enough for its margin, or the target's `baseline_gate` budget is spent (README, Baselines).
"""

from __future__ import annotations

import pytest

INPUT_LEN = 64
OUTPUT_LEN = 64


@pytest.mark.slo
def test_streaming_completions_meet_slo(llm_load, llm_concurrency):
    outcome = llm_load.until_decided(
        concurrency=llm_concurrency,
        requests=max(16, 4 * llm_concurrency),
        warmup=min(llm_concurrency, 8),
        input_len=INPUT_LEN,
        output_len=OUTPUT_LEN,
    )
    outcome.assert_slo()
