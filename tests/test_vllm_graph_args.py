"""vLLM's --max-num-seqs and capture-size args reach the CUDA-graph detector (its log never prints max_num_seqs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_llmserve.checks.vllm_args import parse_vllm_args
from pytest_llmserve.settings.config import Target
from pytest_llmserve.evidence.optimisations import cuda_graphs_for
from pytest_llmserve.servers.base import ServerHandle

LOGS = Path(__file__).parent / "data" / "logs"


def handle(args: tuple[str, ...], log: Path) -> ServerHandle:
    return ServerHandle(Target("v", "vllm", model="m", args=args), "http://127.0.0.1:1", "v", log_path=log)


@pytest.mark.parametrize("args, seqs, sizes, cap", [
    (("--max-num-seqs", "1024"), 1024, (), None),
    (("--max-num-seqs=64", "--port", "8000"), 64, (), None),
    (("--cuda-graph-sizes", "1", "2", "4", "--max-num-seqs", "4"), 4, (1, 2, 4), None),
    (("--cuda-graph-sizes=8,1,2",), None, (1, 2, 8), None),
    (("--max-cudagraph-capture-size", "32"), None, (), 32),
    (("--compilation-config", '{"cudagraph_capture_sizes": [16, 1, 4], "max_cudagraph_capture_size": 16}'),
     None, (1, 4, 16), 16),
    (("-O", '{"max_capture_size": 8}'), None, (), 8),
    (("-O3", "--max-num-seqs", "x"), None, (), None),  # a level, and a value vLLM itself would reject
])
def test_args_are_read_in_every_form_vllm_accepts(args, seqs, sizes, cap):
    got = parse_vllm_args(args)
    assert (got.max_num_seqs, got.capture_sizes, got.max_capture_size) == (seqs, sizes, cap)


def test_a_cap_without_a_list_gives_vllms_default_size_pattern():
    assert parse_vllm_args(("--max-cudagraph-capture-size", "40")).sizes == (1, 2, 4, 8, 16, 24, 32, 40)


def test_max_num_seqs_above_the_capture_cap_makes_an_on_log_partial():
    log = LOGS / "vllm_gpu_on.log"  # captures up to 512, padded
    assert cuda_graphs_for(handle((), log)).state == "on"
    assert cuda_graphs_for(handle(("--max-num-seqs", "512"), log)).state == "on"
    v = cuda_graphs_for(handle(("--max-num-seqs", "1024"), log))
    assert v.state == "partial"
    assert any("max batch size 1024 runs without a graph" in n for n in v.notes)


def test_capture_sizes_from_the_args_stand_in_when_the_log_lists_none(tmp_path):
    text = (LOGS / "vllm_gpu_on.log").read_text()
    log = tmp_path / "vllm.log"  # the same log with its size lists emptied (a version that prints only the cap)
    log.write_text(re.sub(r"('cudagraph_capture_sizes': )\[[\d,\s]*\]", r"\1[]", text))
    assert cuda_graphs_for(handle(("--max-num-seqs", "64"), log)).captured_batch_sizes == ()
    v = cuda_graphs_for(handle(("--cuda-graph-sizes", "1", "2", "4", "8", "--max-num-seqs", "64"), log))
    assert v.captured_batch_sizes == (1, 2, 4, 8) and v.state == "partial"
    assert any(e.source == "target.args" and "--cuda-graph-sizes" in e.text for e in v.evidence)
    assert cuda_graphs_for(handle(("--cuda-graph-sizes", "1", "2", "4", "8", "--max-num-seqs", "8"), log)).state == "on"


def test_the_log_wins_over_the_args_and_says_they_differ():
    v = cuda_graphs_for(handle(("--cuda-graph-sizes", "1", "2"), LOGS / "vllm_gpu_on.log"))
    assert max(v.captured_batch_sizes) == 512
    assert any("the log wins" in n for n in v.notes)


def test_graphs_off_stays_off_and_quotes_only_the_log():
    v = cuda_graphs_for(handle(("--max-num-seqs", "64", "--cuda-graph-sizes", "1", "2"), LOGS / "vllm_cpu_0.32.0.log"))
    assert v.state == "off" and v.captured_batch_sizes == ()
    assert all(e.source != "target.args" for e in v.evidence)
