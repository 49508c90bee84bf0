"""suites/test_engine_equivalence.py end to end against truth servers running the greedy hash model."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_llmserve.testing import Script, TruthServer

ROOT = Path(__file__).resolve().parents[1]
SUITE = (ROOT / "suites" / "test_engine_equivalence.py").read_text()
PROMPTS = ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
MAX_TOKENS = 6
TABLE = f'engine_equivalence = {{ prompts = 300, max_tokens = {MAX_TOKENS}, prompt_file = "{PROMPTS}", concurrency = 8 }}'


def _engine(**kw) -> TruthServer:
    return TruthServer(Script(ttft_ms=0, itl_ms=0, greedy_vocab=300, **kw))


def _sent(server: TruthServer) -> int:
    """Comparison requests the server answered (the start-up probe asks for one token only)."""
    return sum(1 for r in server.truth() if r["max_tokens"] == MAX_TOKENS)


def _config(pytester, servers: dict[str, TruthServer], table: str = TABLE) -> None:
    """Targets for the servers; every one but "old" names "old" as its reference engine."""
    targets = "".join(f"""
[[targets]]
name = "{name}"
kind = "openai"
url = "{server.url}"
model = "truth-model"
{f'options = {{ equivalence_reference = "old", {table} }}' if name != "old" else ""}
""" for name, server in servers.items())
    pytester.makefile(".toml", llmserve=targets)


def _run(pytester):
    return pytester.runpytest("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider", "-rs",
                              "--llmserve-report-json", "r.json")


def test_identical_engines_pass_a_diverging_one_fails_and_the_incumbent_is_sent_nothing_once_cached(pytester):
    pytester.makepyfile(test_engine_equivalence_copy=SUITE)
    with _engine() as old, _engine() as new, _engine(diverge_rate=0.6) as bad:
        _config(pytester, {"old": old, "new": new, "bad": bad})
        first = _run(pytester)
        first.assert_outcomes(passed=1, failed=1, skipped=1)
        assert (_sent(old), _sent(new), _sent(bad)) == (300, 300, 300)  # the incumbent once for both candidates
        out = first.stdout.str()
        assert "target 'old' names no reference engine" in out
        assert "FAIL: divergence per token" in out and "> threshold 0.03" in out
        data = {e["target"]: e for e in json.loads((pytester.path / "r.json").read_text())["results"]}
        assert data["new"]["verdict"] == "pass" and data["new"]["prompts_diverged"] == 0
        assert data["new"]["prompts_compared"] == 300
        bad_rate = data["bad"]["divergence_per_token"]
        assert data["bad"]["verdict"] == "fail" and bad_rate > 0.03 and data["bad"]["interval"][0] > 0.03
        assert 0.45 < data["bad"]["prompt_divergence_rate"] < 0.75  # the stand-in diverges on 60 % of prompts
        assert f"{bad_rate:.4f}" in out

        with _engine() as rebuilt:  # a new candidate build (another server, so another identity)
            _config(pytester, {"old": old, "new": rebuilt, "bad": bad})
            second = _run(pytester)
            second.assert_outcomes(passed=1, failed=1, skipped=1)
            assert (_sent(old), _sent(rebuilt), _sent(bad)) == (300, 300, 300)  # only the new build was sent
    data = {e["target"]: e for e in json.loads((pytester.path / "r.json").read_text())["results"]}
    assert data["new"]["sides"]["old"] == {**data["new"]["sides"]["old"], "reused": 300, "sent": 0}
    assert data["new"]["sides"]["new"]["sent"] == 300


def test_a_small_budget_compares_what_fit_and_calls_it_inconclusive_with_the_prompts_needed(pytester):
    pytester.makepyfile(test_engine_equivalence_copy=SUITE)
    with TruthServer(Script(ttft_ms=30, itl_ms=0, greedy_vocab=300)) as old, _engine() as new:
        _config(pytester, {"old": old, "new": new},
                f'engine_equivalence = {{ prompts = 2000, max_tokens = {MAX_TOKENS}, prompt_file = "{PROMPTS}", '
                'concurrency = 2, budget_s = 0.5, divergence_threshold = 0.002 }')
        result = _run(pytester)
        result.assert_outcomes(failed=1, skipped=1)
        sent, new_sent = _sent(old), _sent(new)
    out = result.stdout.str()
    assert 0 < sent < 2000 and new_sent == sent  # the candidate is sent only what the incumbent answered
    assert "INCONCLUSIVE" in out and f"compared {sent} of 2000 planned prompts" in out
    assert "prompts would decide at the observed rate" in out and "budget spent" in out
