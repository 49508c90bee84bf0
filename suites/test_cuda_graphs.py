"""The ready-made suite pytest_llmserve/suites/test_cuda_graphs.py, collected here so `pytest suites/` runs it."""

from pytest_llmserve.suites.test_cuda_graphs import test_cuda_graphs_match_the_target_promise  # noqa: F401
