"""Packaging matches the measurements: the fast HTTP parser is a dependency, and its absence is visible."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pytest_llmserve.load import LoadSpec, run_load
from pytest_llmserve.testing import Script, TruthServer

ROOT = Path(__file__).resolve().parents[1]


def test_httptools_is_a_declared_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split(">")[0].split("=")[0].strip() == "httptools" for d in deps)


def test_a_missing_fast_parser_warns_and_is_noted_in_the_client_check(monkeypatch):
    monkeypatch.setattr("pytest_llmserve.load.client._httptools", None)
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv, pytest.warns(RuntimeWarning, match="httptools is not installed"):
        result = run_load(srv.url, "truth-model", LoadSpec(concurrency=1, requests=2, warmup=0, output_len=3))
    assert any("pip install httptools" in n for n in result.client_check.notes)
