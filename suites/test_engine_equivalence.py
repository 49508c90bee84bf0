"""The ready-made suite pytest_llmserve/suites/test_engine_equivalence.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_engine_equivalence import test_candidate_engine_matches_reference_engine  # noqa: F401
