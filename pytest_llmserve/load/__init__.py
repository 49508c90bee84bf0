"""Streaming load client for OpenAI-compatible servers: load shapes, exact timestamps, RunResult.

    from pytest_llmserve.load import LoadSpec, run_load
    result = run_load("http://127.0.0.1:8000", "my-model", LoadSpec(concurrency=8, requests=64))
    result.metrics()["ttft_p95_ms"], result.valid, result.invalid_reasons
"""

from __future__ import annotations

from .check import ClientCheck
from .client import LoadProgress
from .prompts import load_prompts
from .records import RequestRecord
from .result import RunResult
from .runner import run_load, run_load_async
from .schedule import arrival_offsets
from .spec import CheckLimits, ClientOptions, LoadSpec
from .summary import LoadSummary, Percentiles

__all__ = [
    "CheckLimits",
    "ClientCheck",
    "ClientOptions",
    "LoadProgress",
    "LoadSpec",
    "LoadSummary",
    "Percentiles",
    "RequestRecord",
    "RunResult",
    "arrival_offsets",
    "load_prompts",
    "run_load",
    "run_load_async",
]
