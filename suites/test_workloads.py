"""The ready-made suite pytest_llmserve/suites/test_workloads.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_workloads import test_workload_meets_slo  # noqa: F401
