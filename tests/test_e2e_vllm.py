"""The spine end to end on the real CPU vLLM: start, load, SLO table, baseline record then compare,
teardown with no process left. Runs the ready-made SLO suite in a child pytest, as a user would."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[tool.llmserve]
baselines_dir = "baselines"

[[tool.llmserve.targets]]
name = "e2e-vllm"
kind = "vllm"
model = "{model}"
dtype = "bfloat16"
args = ["--max-model-len", "512", "--max-num-seqs", "16"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1", HF_HUB_OFFLINE = "1", VLLM_CPU_OMP_THREADS_BIND = "0" }}
cpus = "0"
client_cpus = "1"
startup_timeout_s = 900
concurrency = [2]
slo = {{ ttft_p95_ms = 60000, e2e_p95_ms = 120000 }}
baseline_gate = {{ margin = {{ ttft_p95_ms = 0, ttft_p50_ms = 5.0, itl_p50_ms = 0.9, output_tok_s = 0.9 }}, budget_s = 10, repeats = 2 }}
tolerance = {{ ttft_p95_ms = {{ rel = 1000.0 }}, ttft_p50_ms = {{ rel = 1000.0 }}, ttft_p99_ms = {{ rel = 1000.0 }}, itl_p50_ms = {{ rel = 1000.0 }}, itl_p95_ms = {{ rel = 1000.0 }}, tpot_p95_ms = {{ rel = 1000.0 }}, e2e_p95_ms = {{ rel = 1000.0 }}, output_tok_s = {{ rel = 0.999 }}, requests_s = {{ rel = 0.999 }} }}
"""


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "slo", "suites/test_slo.py",
         "--llmserve-log-dir", "logs", "-v", *args],
        cwd=root, capture_output=True, text=True, timeout=1800,
    )


def _server_processes(model: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if model in " ".join(proc.info["cmdline"] or []) and "--served-model-name" in (proc.info["cmdline"] or []):
                if "e2e-vllm" in proc.info["cmdline"]:
                    found.append(proc)
        except psutil.Error:
            continue
    return found


def test_slo_suite_records_then_compares_baselines_on_the_real_cpu_vllm(tmp_path):
    root = tmp_path / "project"
    (root / "suites").mkdir(parents=True)
    shutil.copy(ROOT / "suites" / "test_slo.py", root / "suites" / "test_slo.py")
    model = str(ROOT / "fixtures" / "tiny-llama")
    (root / "pyproject.toml").write_text(CONFIG.format(model=model))

    first = _run(root, "--update-baselines")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    baseline = root / "baselines"
    files = list(baseline.glob("*/e2e-vllm.json"))
    assert len(files) == 1
    entries = json.loads(files[0].read_text())["entries"]
    (test_id, entry), = entries.items()
    metrics = {m: v["value"] for m, v in entry["metrics"].items()}
    assert test_id.endswith("[e2e-vllm-c2]") and metrics["output_tok_s"] > 0 and metrics["ttft_p95_ms"] > 0
    assert entry["repeats"] >= 2 and list(baseline.glob("*/e2e-vllm.samples.json.gz"))
    assert "baselines updated (old -> new)" in first.stdout

    recorded = files[0].read_text()
    second = _run(root, "--llmserve-report-json", "report.json")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    out = second.stdout
    assert "SLO suites/test_slo.py::test_streaming_completions_meet_slo[e2e-vllm-c2]" in out
    for column in ("metric", "measured", "limit", "baseline", "verdict"):
        assert column in out
    report = json.loads((root / "report.json").read_text())
    (result,) = [r for r in report["results"] if r["kind"] == "slo"]
    assert result["passed"]
    stored = {r["metric"]: r for r in result["rows"] if r.get("baseline") is not None}
    assert stored["output_tok_s"]["baseline"] == pytest.approx(metrics["output_tok_s"], rel=1e-3)
    # gated metrics pass or improve; the others' statistical verdicts are information, in parentheses
    gated = {"ttft_p50_ms", "itl_p50_ms", "output_tok_s"}
    assert {r["verdict"] for m, r in stored.items() if m in gated} <= {"ok", "improvement", "inconclusive"}
    assert all(r["verdict"].startswith("(") for m, r in stored.items() if m not in gated)
    assert result["optimisations"]["graphs"]["state"] == "off"  # evidence attached to the SLO result
    assert "client self-check: ok" in result["table"]
    assert files[0].read_text() == recorded  # not rewritten without --update-baselines
    assert not _server_processes(model), "vLLM processes survived the session"

    # a second server start added to the baseline: its rounds join the stored ones under start 1
    third = _run(root, "--llmserve-add-start")
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-2000:]
    added = json.loads(files[0].read_text())["entries"][test_id]
    assert added["server_starts"] == 2 and added["repeats"] > entry["repeats"] and added["host"]["cpu"]
    side = json.loads(gzip.decompress(next(baseline.glob("*/e2e-vllm.samples.json.gz")).read_bytes()))
    assert sorted({r.get("start", 0) for r in side["entries"][test_id]}) == [0, 1]
    assert not _server_processes(model), "vLLM processes survived the session"
