"""The ready-made suite pytest_llmserve/suites/test_promotion.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_promotion import test_candidate_is_not_slower_than_incumbent  # noqa: F401
