"""The ready-made suite pytest_llmserve/suites/test_fp8_accuracy.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_fp8_accuracy import test_precision_change_keeps_accuracy  # noqa: F401
