"""Greedy tokens + top-k logprobs from a server, and the equivalence gate against the real CPU vLLM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from pytest_llmserve.evidence.server_logprobs import (ServerLogprobsError, completion_body, fetch_greedy, parse_choice,
                                             parse_token)

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "fixtures" / "tiny-llama"
PROMPTS = ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
# The real-server checks use a slice of the shipped set to keep CPU time down (each prompt costs vLLM + HF).
N_PROMPTS = 32
MAX_TOKENS = 32
PERTURBED_LAYER = 1
PERTURBED_SCALE = 1.0

# One choice as vLLM 0.32 returns it with logprobs=2 and return_tokens_as_token_ids (shape checked against
# the real server by test_real_vllm_response_has_the_parsed_shape).
VLLM_CHOICE = {
    "index": 0, "text": "", "finish_reason": "length",
    "logprobs": {
        "text_offset": [0, 10],
        "token_logprobs": [-0.25, -3.5],
        "tokens": ["token_id:17", "token_id:4"],
        "top_logprobs": [{"token_id:17": -0.25, "token_id:9": -1.6},
                         {"token_id:4": -3.5, "token_id:2": -0.1, "token_id:8": -0.9}],
    },
}


def test_vllm_choice_parses_into_token_ids_with_the_chosen_token_in_each_top_k():
    cont = parse_choice(VLLM_CHOICE)
    assert cont.tokens == (17, 4)
    assert cont.top_logprobs[0] == {17: -0.25, 9: -1.6}
    assert cont.top_logprobs[1][4] == -3.5 and len(cont.top_logprobs[1]) == 3


def test_text_tokens_mean_the_server_ignored_token_id_output():
    with pytest.raises(ServerLogprobsError, match="ignored return_tokens_as_token_ids"):
        parse_token(" the")
    with pytest.raises(ServerLogprobsError, match="no logprobs.tokens"):
        parse_choice({"index": 0, "text": "x"})


def test_request_sends_token_ids_greedy_and_ignore_eos_but_not_min_tokens():
    body = completion_body("m", (0, 5, 9), max_tokens=7, top_k=3)
    assert body["prompt"] == [0, 5, 9] and body["temperature"] == 0.0 and body["logprobs"] == 3
    assert body["ignore_eos"] is True and body["return_tokens_as_token_ids"] is True
    assert "min_tokens" not in body  # vLLM masks EOS for min_tokens, which would change greedy choices


def _client(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_fetch_keeps_prompt_order_with_requests_in_flight():
    def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        token = f"token_id:{prompt[-1]}"
        choice = {"logprobs": {"tokens": [token], "token_logprobs": [-0.1], "top_logprobs": [{token: -0.1}]}}
        return httpx.Response(200, json={"choices": [choice]})

    prompts = [[0, i] for i in range(20)]
    conts = fetch_greedy("http://x", "m", prompts, max_tokens=1, top_k=1, concurrency=6, client=_client(handler))
    assert [c.tokens for c in conts] == [(i,) for i in range(20)]


def test_server_rejection_says_what_to_change():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "Requested sample logprobs of 50, which is greater "
                                                              "than max allowed: 20"}})

    with pytest.raises(ServerLogprobsError, match="HTTP 400.*lower options.equivalence.top_k"):
        fetch_greedy("http://x", "m", [[0, 1]], max_tokens=1, top_k=50, client=_client(handler))


# ----------------------------------------------------------------------------- the real CPU vLLM
needs_tiny = pytest.mark.skipif(not (TINY_MODEL / "model.safetensors").exists() or not PROMPTS.exists(),
                                reason="fixtures/tiny-llama or fixtures/prompts/stdlib-64.jsonl not built yet")


@pytest.fixture(scope="module")
def reference_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reference-cache")


def _run(handle, cache: Path, target=None):
    from pytest_llmserve.checks.near_tie import EquivalenceSettings
    from pytest_llmserve.gates.equivalence import run_equivalence

    settings = EquivalenceSettings(max_tokens=MAX_TOKENS)
    return run_equivalence(handle, cache_dir=cache, default_prompts=PROMPTS, target=target, settings=settings,
                           limit=N_PROMPTS, device="cpu")


@needs_tiny
def test_real_vllm_response_has_the_parsed_shape(tiny_vllm):
    body = completion_body(tiny_vllm.model, [0, 328, 37, 434], max_tokens=4, top_k=3)
    data = httpx.post(tiny_vllm.base_url + "/v1/completions", json=body, timeout=120).json()
    logprobs = data["choices"][0]["logprobs"]
    assert all(t.startswith("token_id:") for t in logprobs["tokens"]) and len(logprobs["tokens"]) == 4
    assert all(3 <= len(top) <= 4 and all(k.startswith("token_id:") for k in top) for top in logprobs["top_logprobs"])
    cont = parse_choice(data["choices"][0])
    assert all(t in top and max(top, key=top.get) == t for t, top in zip(cont.tokens, cont.top_logprobs))


@needs_tiny
def test_cpu_vllm_on_the_tiny_model_is_equivalent_to_the_hf_reference(tiny_vllm, reference_cache):
    run = _run(tiny_vllm, reference_cache)
    report = run.report
    print(run.render())
    assert report.passed, run.render()
    assert len(report.results) == N_PROMPTS and report.hard_mismatches == 0
    # Calibrated against HF in the engine's own compute precision, read from the vLLM log.
    cal = report.calibration
    assert cal is not None and cal.gated and cal.passed and cal.calibration_label.startswith("HF bfloat16")
    assert report.precision_lines[0] == "compute bfloat16 (from vllm-log)"
    assert report.tolerance.calibrated_units is not None and report.min_exact_match_rate is None
    # The cached second pass does no HF forward pass, reads back the same reference, and passes again.
    # (Not "the same verdicts": the CPU vLLM's bf16 numerics depend on how requests were batched, so
    # which near-tie positions flip varies between passes; a clean-clone CI run saw one move.)
    again = _run(tiny_vllm, reference_cache)
    assert again.reference.from_cache and again.reference.forward_passes == 0
    assert again.reference.continuations == run.reference.continuations
    assert again.calibration is not None and again.calibration.from_cache
    assert again.report.passed and again.report.hard_mismatches == 0, again.render()


@needs_tiny
def test_perturbed_weights_fail_with_a_report_pointing_at_the_first_divergence(tiny_vllm, server_pool, reference_cache,
                                                                              tmp_path_factory):
    from pytest_llmserve.reference.hf import make_perturbed_model

    path = make_perturbed_model(TINY_MODEL, tmp_path_factory.mktemp("perturbed") / "tiny-perturbed",
                                layer=PERTURBED_LAYER, scale=PERTURBED_SCALE, seed=0)
    handle = server_pool.get(dataclasses.replace(tiny_vllm.target, name="tiny-perturbed", model=str(path)))
    # The reference is the *unperturbed* checkpoint: the build claims to serve tiny-llama.
    run = _run(handle, reference_cache, target=dataclasses.replace(handle.target, model=str(TINY_MODEL)))
    report, text = run.report, run.render()
    print(text)
    assert not report.passed and report.hard_mismatches > 0
    # The report names what moved, side by side with the calibration.
    assert any(line.startswith(("chosen-token drift moved", "top-k drift moved")) for line in report.failures())
    assert "calibration vs fp32" in text
    index, first = next((i, r) for i, r in enumerate(report.results) if r.verdict == "mismatch")
    ref_tokens, cand_tokens = run.reference.continuations[index].tokens, run.candidates[index].tokens
    expected = next(i for i, (a, b) in enumerate(zip(ref_tokens, cand_tokens)) if a != b)
    assert first.matched == expected and first.divergence is not None
    assert first.divergence.reference_next[0] == ref_tokens[expected]
    assert first.divergence.candidate_next[0] == cand_tokens[expected]
    assert f"First hard mismatch: prompt {first.prompt_id}, generated token {expected}" in text
