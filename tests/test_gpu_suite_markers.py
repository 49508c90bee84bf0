"""tests/gpu/ asks for what TensorRT-LLM supports (Ampere or newer), not for two SKUs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pytest_llmserve.hardware import GpuRequirement
from pytest_llmserve.hardware.inventory import GpuInfo, Inventory
from pytest_llmserve.hardware.labels import parse_fake_inventory

GPU_TESTS = Path(__file__).parent / "gpu" / "test_trtllm_integration.py"


def gpu_mark(monkeypatch, sku: str | None) -> dict:
    if sku is None:
        monkeypatch.delenv("LLMSERVE_GPU_TEST_SKU", raising=False)
    else:
        monkeypatch.setenv("LLMSERVE_GPU_TEST_SKU", sku)
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", GPU_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPU_MARK


@pytest.mark.parametrize("label", ["a100-80gb-x1", "a10g-24gb-x1", "l4-24gb-x1", "l40s-48gb-x1", "h100-80gb-x1",
                                   "h200-141gb-x1", "b200-180gb-x1"])
def test_any_gpu_tensorrt_llm_supports_runs_the_gpu_tests(monkeypatch, label):
    req = GpuRequirement.from_marker_kwargs(**gpu_mark(monkeypatch, None))
    assert req.unmet_reason(parse_fake_inventory(label)) is None


def test_an_older_gpu_is_skipped_with_the_reason(monkeypatch):
    t4 = Inventory((GpuInfo(0, "Tesla T4", 15360, (7, 5)),), 8, None, "fake:t4")
    reason = GpuRequirement.from_marker_kwargs(**gpu_mark(monkeypatch, None)).unmet_reason(t4)
    assert reason is not None and "compute capability >= 8.0" in reason


def test_the_sku_list_can_be_narrowed_by_environment(monkeypatch):
    req = GpuRequirement.from_marker_kwargs(**gpu_mark(monkeypatch, "H100, H200"))
    assert req.unmet_reason(parse_fake_inventory("h200-141gb-x1")) is None
    assert req.unmet_reason(parse_fake_inventory("a100-80gb-x1")) is not None
