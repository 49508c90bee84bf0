"""Fitting load to a server's capabilities: exact-length text prompts from the model's tokenizer, matched work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.load import LoadSpec
from pytest_llmserve.load.fit import fit_load
from pytest_llmserve.load.text_prompts import exact_text_prompt, word_tokens
from pytest_llmserve.servers.capabilities import Capabilities

TINY_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-llama"
pytest.importorskip("transformers")


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 300), seed=st.integers(0, 2**16), index=st.integers(0, 10_000))
def test_text_prompts_encode_to_exactly_the_length_asked_for(length, seed, index):
    words = word_tokens(str(TINY_MODEL))
    assert words.count(exact_text_prompt(words, length, seed, index)) == length


def test_without_token_id_prompts_load_sends_tokenizer_text_and_expects_its_special_tokens():
    caps = Capabilities(token_id_prompts=False, ignore_eos=False, min_tokens=False, tokenizer=str(TINY_MODEL))
    fitted = fit_load(LoadSpec(concurrency=2, requests=6, warmup=2, input_len=16, output_len=8, seed=3), caps)
    assert fitted.spec.endpoint == "completions" and len(fitted.spec.prompts) == 8
    assert all(isinstance(p, str) for p in fitted.spec.prompts)
    assert fitted.expected_prompt_tokens == (17,) * 8  # 16 + the BOS the tokenizer (and the server) adds
    assert fitted.matched_work == "verified" and not fitted.spec.ignore_eos
    assert fitted.describe() == (f"work: completions, text prompts of exactly 16 tokens (tokenizer {TINY_MODEL}), "
                                 "matched work: verified, not forced")
    chat = fit_load(LoadSpec(endpoint="chat", input_len=16), caps, explicit={"endpoint"})
    assert chat.expected_prompt_tokens[0] == 16 + 11  # the chat template's "<s>user: ...\nassistant: " tokens


def test_without_a_tokenizer_prompts_are_words_and_the_notes_say_lengths_are_approximate():
    fitted = fit_load(LoadSpec(input_len=8), Capabilities(token_id_prompts=False))
    assert fitted.prompt_form == "word prompts (approximate length, no tokenizer)" and fitted.expected_prompt_tokens is None
    assert any("capabilities.tokenizer" in n for n in fitted.notes)


def test_token_id_prompts_given_to_a_server_that_refuses_them_fail_with_what_to_do():
    with pytest.raises(ValueError, match="prompts are token ids, but the server does not take token-id prompts"):
        fit_load(LoadSpec(prompts=((1, 2, 3),)), Capabilities(token_id_prompts=False))


def test_explicit_token_id_prompts_are_refused_even_with_a_tokenizer():
    caps = Capabilities(token_id_prompts=False, tokenizer=str(TINY_MODEL))
    with pytest.raises(ValueError, match="give text prompts"):
        fit_load(LoadSpec(prompts=((1, 2, 3),)), caps, explicit={"prompts"})


@pytest.mark.parametrize("name", ["rag", "multi-turn"])
def test_a_workloads_token_id_prompts_go_as_text_keeping_shared_prefixes_and_sessions(name):
    # transformers serve takes string prompts only (H200 run, 2026-12-02): the workload suite sent nothing before
    from pytest_llmserve.load.workloads import workload

    caps = Capabilities(token_id_prompts=False, ignore_eos=False, min_tokens=False, tokenizer=str(TINY_MODEL))
    spec = workload(name, max_model_len=1024, requests=8, warmup=0).spec
    fitted = fit_load(spec, caps, explicit={"workload"})
    texts = fitted.spec.prompts
    assert all(isinstance(t, str) for t in texts) and "as text" in fitted.prompt_form
    words = word_tokens(str(TINY_MODEL))
    assert [words.count(t) for t in texts] == [len(p) for p in spec.prompts]  # one token per id
    for i, j in ((0, 1), (0, 2), (1, 3)):  # a prefix shared in ids is shared in text, and only then
        shared = next((k for k, (a, b) in enumerate(zip(spec.prompts[i], spec.prompts[j])) if a != b),
                      min(len(spec.prompts[i]), len(spec.prompts[j])))
        assert texts[i][: len(ids_text := "".join(words.words[t % len(words.words)] for t in spec.prompts[i][:shared]))] \
            == texts[j][: len(ids_text)]
    if spec.sessions is not None:
        fitted.spec.sessions.validate(texts)  # every later turn still starts with the turn it continues
        assert not fitted.spec.sessions.token_ids
        assert all(e is None for e, p in zip(fitted.expected_prompt_tokens, spec.sessions.previous) if p >= 0)


def test_verified_work_is_checked_against_each_requests_own_length():
    # a workload asks each request for its own max_tokens; a server that honours it is matched work (H200 run:
    # every workload round was wrongly invalid against the nominal output_len before)
    from pytest_llmserve.load import run_load
    from pytest_llmserve.testing import Script, TruthServer

    caps = Capabilities(ignore_eos=False, min_tokens=False)
    spec = LoadSpec(concurrency=2, requests=6, warmup=0, input_len=4, output_len=4, output_lens=(2, 5, 3))
    fitted = fit_load(spec, caps)
    assert fitted.matched_work == "verified"
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as server:  # decodes exactly the max_tokens it is sent
        ok = fitted.check(run_load(server.url, "truth-model", fitted.spec))
        assert ok.valid, ok.invalid_reasons
        short = fitted.check(run_load(server.url, "truth-model",
                                      dataclasses.replace(fitted.spec, extra_body={"x_truth": {"tokens": 2}})))
    assert not short.valid and "did not decode exactly the output_lens each asked for" in short.invalid_reasons[0]
    assert "of 5 tokens" in short.invalid_reasons[0]


def test_merged_rounds_keep_the_work_statement_of_their_fitted_load():
    # the SLO suite measures several rounds; the report's `work` (matched work, prompt form) must survive the merge
    from pytest_llmserve.load import run_load
    from pytest_llmserve.gates.measure import merge_results
    from pytest_llmserve.testing import Script, TruthServer

    fitted = fit_load(LoadSpec(concurrency=1, requests=2, warmup=0, input_len=4, output_len=2),
                      Capabilities(ignore_eos=False, min_tokens=False))
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as server:
        rounds = [fitted.check(run_load(server.url, "truth-model", fitted.spec)) for _ in range(2)]
    merged = merge_results(rounds)
    assert merged.work["matched_work"] == "verified" and merged.work == rounds[0].work
    assert merged.summary.requests == 4
