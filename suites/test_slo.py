"""The ready-made suite pytest_llmserve/suites/test_slo.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_slo import test_streaming_completions_meet_slo  # noqa: F401
