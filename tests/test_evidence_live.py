"""Evidence read from the real CPU vLLM's own start-up log (the shared tiny_vllm server)."""

from __future__ import annotations

import pytest

from pytest_llmserve.evidence.optimisations import assert_cuda_graphs, optimisations_for


def test_cpu_vllm_reports_graphs_off_quoting_its_config_dump(tiny_vllm):
    verdict = assert_cuda_graphs(tiny_vllm, require="off")
    assert verdict.state == "off"
    quoted = " ".join(str(e) for e in verdict.evidence)
    assert "CUDAGraphMode.NONE" in quoted and tiny_vllm.log_path.name in quoted


def test_requiring_graphs_on_the_cpu_vllm_fails_with_the_evidence_line(tiny_vllm):
    with pytest.raises(AssertionError) as info:
        assert_cuda_graphs(tiny_vllm, require="on", batch_sizes="1..8")
    message = str(info.value)
    assert "required 'on', found 'off'" in message
    assert "CUDAGraphMode.NONE" in message and f"{tiny_vllm.log_path.name}:" in message


def test_optimisations_report_reads_the_live_kv_cache_and_scheduler_settings(tiny_vllm):
    report = optimisations_for(tiny_vllm)
    assert report.get("kv_cache_dtype").state == "off"
    assert report.get("paged_kv_cache").state == "on"
    assert all(f.evidence for f in report.items if f.state != "unknown")
