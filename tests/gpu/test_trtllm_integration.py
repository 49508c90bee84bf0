"""GPU integration tests: build a small TensorRT-LLM engine, serve it with trtllm-serve (PyTorch and
TensorRT backends) and with Triton, drive streaming load and check SLOs. They need a GPU runner
with TensorRT-LLM (and, for Triton, tritonserver with the TensorRT-LLM backend); everywhere else
they are skipped with the reason. See README "GPU runner" for containers and commands.

Environment: LLMSERVE_GPU_TEST_MODEL (Hugging Face checkpoint; default fixtures/tiny-llama),
LLMSERVE_ENGINE_CACHE (engine cache directory; default a temporary one),
LLMSERVE_TRITON_TEMPLATES (tensorrtllm_backend all_models/inflight_batcher_llm; Triton test only),
LLMSERVE_GPU_TEST_CONVERT_SCRIPT (optional: build with convert_checkpoint.py + trtllm-build instead
of the LLM API), LLMSERVE_GPU_TEST_SKU (optional: only these SKUs, e.g. H100,H200; default any GPU of
compute capability 8.0 or newer).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pytest_llmserve.checks.slo import SloEvaluation, validate_limits
from pytest_llmserve.settings.config import Target
from pytest_llmserve.engines import EngineCache, EngineSpec, detect_toolchain
from pytest_llmserve.load import LoadSpec, run_load
from pytest_llmserve.evidence.server_metrics import MetricsSampler

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("LLMSERVE_GPU_TEST_MODEL", ROOT / "fixtures" / "tiny-llama"))
# generous limits for a 4-layer model on one data-centre GPU: these catch broken serving, not slow kernels
SLO = {"ttft_p95_ms": 2000, "itl_p95_ms": 200, "max_error_rate": 0.0}
LOAD = LoadSpec(concurrency=4, requests=32, warmup=2, input_len=64, output_len=32)
ENGINE = {"dtype": "bfloat16", "max_batch_size": 8, "max_input_len": 256, "max_seq_len": 512}

# TensorRT-LLM runs on Ampere and newer (A100, A10G, L4, L40S, H100, H200, B200): ask for that, not a SKU
# list, so a runner of any of them runs these. LLMSERVE_GPU_TEST_SKU=H100,H200 narrows them to named SKUs.
GPU_MARK: dict = ({"sku": [s.strip() for s in os.environ["LLMSERVE_GPU_TEST_SKU"].split(",") if s.strip()], "count": 1}
                  if os.environ.get("LLMSERVE_GPU_TEST_SKU") else {"count": 1, "min_compute_capability": "8.0"})
pytestmark = [pytest.mark.gpu(**GPU_MARK)]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH: run on a GPU runner inside nvcr.io/nvidia/tensorrt-llm/release "
                    "(trtllm-build, trtllm-serve) or nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 (tritonserver)")


@pytest.fixture(scope="module")
def engine_table(tmp_path_factory) -> dict:
    cache = os.environ.get("LLMSERVE_ENGINE_CACHE") or str(tmp_path_factory.mktemp("engines"))
    table = {**ENGINE, "cache_dir": cache}
    if os.environ.get("LLMSERVE_GPU_TEST_CONVERT_SCRIPT"):
        table |= {"builder": "cli", "convert_script": os.environ["LLMSERVE_GPU_TEST_CONVERT_SCRIPT"]}
    return table


def _assert_slo(result, title: str) -> None:
    report = SloEvaluation(metrics=result.metrics(), limits=validate_limits(SLO, title),
                           invalid_reasons=list(result.invalid_reasons), errors=dict(result.summary.errors)).report(title)
    print(report.render())
    assert report.passed, report.render()


def test_engine_is_built_once_then_reused_and_records_what_was_asked(engine_table):
    _need("trtllm-build")
    spec = EngineSpec.from_table({**engine_table, "backend": "trt"}, model=str(MODEL))
    cache = EngineCache(root=Path(engine_table["cache_dir"]), progress=print)
    toolchain = detect_toolchain()
    first = cache.get_or_build(spec, toolchain)
    second = cache.get_or_build(spec, toolchain)
    assert second.path == first.path and not second.built
    cfg = second.config
    assert (cfg.dtype, cfg.max_batch_size, cfg.max_input_len, cfg.max_seq_len) == ("bfloat16", 8, 256, 512)
    assert list(second.path.glob("rank0.engine"))


@pytest.mark.parametrize("backend", ["pytorch", "trt"])
def test_trtllm_serve_streams_matched_work_within_slo(server_pool, engine_table, backend):
    _need("trtllm-serve", "trtllm-build")
    engine = {k: v for k, v in engine_table.items() if backend == "trt" or k in ("max_batch_size", "max_seq_len")}
    target = Target(name=f"gpu-trtllm-{backend}", kind="trtllm-serve", model=str(MODEL), dtype="bfloat16",
                    engine={**engine, "backend": backend}, startup_timeout_s=1200,
                    options={"return_perf_metrics": True, "enable_iter_perf_stats": True})
    handle = server_pool.get(target)
    with MetricsSampler(handle.metrics_url, interval_s=0.25) as sampler:
        result = run_load(handle.base_url, handle.model, LOAD)
    print(sampler.summary.table())
    assert result.summary.token_mismatches == 0 and result.summary.completed == LOAD.requests
    assert sampler.summary.source == "trtllm" and sampler.summary.errors == 0
    _assert_slo(result, f"trtllm-serve --backend {backend}")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_serves_the_engine_within_slo(server_pool, engine_table, protocol):
    _need("tritonserver", "trtllm-build")
    templates = os.environ.get("LLMSERVE_TRITON_TEMPLATES")
    if not templates:
        pytest.skip("needs LLMSERVE_TRITON_TEMPLATES=<tensorrtllm_backend>/all_models/inflight_batcher_llm "
                    "from the release matching the tritonserver container")
    from pytest_llmserve.load.triton_client import run_triton_load

    target = Target(name="gpu-triton", kind="triton", model=str(MODEL), engine=engine_table, startup_timeout_s=1200,
                    options={"templates": templates, "fill": {"kv_cache_free_gpu_mem_fraction": 0.5}})
    handle = server_pool.get(target)
    triton = run_triton_load(handle.endpoints, LOAD, protocol=protocol, metrics_interval_s=0.25)
    print(triton.server_metrics.table())
    result = triton.to_run_result()
    assert triton.summary.token_mismatches == 0 and triton.summary.completed == LOAD.requests
    assert triton.server_metrics.source == "triton" and triton.server_metrics.kv_usage_max is not None
    _assert_slo(result, f"triton {protocol}")
