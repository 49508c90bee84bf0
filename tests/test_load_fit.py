"""Fitting load to a server's capabilities: exact-length text prompts from the model's tokenizer, matched work."""

from __future__ import annotations

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
