"""The ready-made suite pytest_llmserve/suites/test_equivalence.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_equivalence import test_greedy_tokens_match_hf_reference  # noqa: F401
