"""Load generators under test: ours (the `llmserve load` CLI), `vllm bench serve`, AIPerf.

Each adapter runs the tool as a separate process pinned to the client CPU and returns what the tool
itself reported, normalized to the same names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from truth import ROOT, TrueMetrics, pin

TOKENIZER = ROOT / "fixtures" / "tiny-llama"
MODEL = "truth-model"


@dataclass
class Reported:
    """A tool's own report of one run."""

    tool: str
    ttft_ms: tuple[float, float, float] = (np.nan, np.nan, np.nan)  # p50, p95, p99
    itl_ms: tuple[float, float, float] = (np.nan, np.nan, np.nan)  # per-gap (chunk) latency
    tok_s: float = np.nan
    valid: bool | None = None  # only our client judges itself
    reasons: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    failed: str | None = None
    per_request: list[tuple[str, float]] = field(default_factory=list)  # (response id, TTFT ms), ours only

    def per_request_err_p99(self, truth: TrueMetrics) -> float:
        errs = [abs(t - truth.ttft_by_id[i]) for i, t in self.per_request if i in truth.ttft_by_id]
        return float(np.percentile(errs, 99)) if errs else np.nan


@dataclass(frozen=True)
class Run:
    """One load shape, the same for every tool."""

    url: str
    streams: int
    requests: int
    input_len: int
    output_len: int
    cpu: str | None
    nice: int = 0
    timeout_s: float = 900.0


def _exec(cmd: list[str], run: Run, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(pin(cmd, run.cpu, run.nice), cwd=ROOT, capture_output=True, text=True,
                          timeout=run.timeout_s, env={**os.environ, **(env or {})})
    return proc, time.monotonic() - t0


def ours(run: Run, flags: tuple[str, ...] = (), name: str = "llmserve") -> Reported:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        cmd = [sys.executable, "-m", "pytest_llmserve.cli", "load", "--url", run.url, "--model", MODEL,
               "--concurrency", str(run.streams), "--requests", str(run.requests), "--warmup", "0",
               "--prompt-len", str(run.input_len), "--output-len", str(run.output_len),
               "--json", str(out), "--records", "--quiet", *flags]
        proc, wall = _exec(cmd, run)
        if not out.exists():
            return Reported(name, failed=(proc.stderr or proc.stdout)[-500:], wall_s=wall)
        d_ = json.loads(out.read_text())
    per = [(r["response_id"], (r["t_first_token_ns"] - r["t_send_ns"]) / 1e6)
           for r in d_["records"] if r["error_kind"] is None and not r["warmup"]]
    return Reported(
        name, ttft_ms=_p(d_["ttft_ms"]), itl_ms=_p(d_["itl_ms"]), tok_s=d_["output_tok_s"] or np.nan,
        valid=d_["valid"], reasons=d_["invalid_reasons"], wall_s=wall, per_request=per,
        failed=None if d_["errors"] == {} else f"errors {d_['errors']}",
    )


def _p(d: dict) -> tuple[float, float, float]:
    return tuple(np.nan if d[k] is None else d[k] for k in ("p50", "p95", "p99"))


def vllm_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("vllm.benchmarks.serve") is not None and TOKENIZER.is_dir()
    except (ImportError, ValueError):
        return False


def vllm_bench(run: Run) -> Reported:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "fidelity" / "vllm_bench.py"), "--backend", "openai",
               "--base-url", run.url, "--endpoint", "/v1/completions", "--model", MODEL,
               "--tokenizer", str(TOKENIZER), "--dataset-name", "random",
               "--random-input-len", str(run.input_len), "--random-output-len", str(run.output_len),
               "--num-prompts", str(run.requests), "--max-concurrency", str(run.streams), "--request-rate", "inf",
               "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99",
               "--num-warmups", "0", "--disable-tqdm", "--save-result", "--result-dir", d,
               "--result-filename", "vllm.json"]
        proc, wall = _exec(cmd, run, env={"HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"})
        path = Path(d) / "vllm.json"
        if not path.exists():
            return Reported("vllm bench serve", failed=(proc.stderr or proc.stdout)[-800:], wall_s=wall)
        r = json.loads(path.read_text())
    return Reported(
        "vllm bench serve",
        ttft_ms=tuple(r[f"p{q}_ttft_ms"] for q in (50, 95, 99)),
        itl_ms=tuple(r[f"p{q}_itl_ms"] for q in (50, 95, 99)),
        tok_s=r["output_throughput"], wall_s=wall,
        failed=None if r.get("completed") == run.requests else f"completed {r.get('completed')} of {run.requests}",
    )


def aiperf_exe() -> str | None:
    return os.environ.get("AIPERF") or shutil.which("aiperf") or (
        "/work/aiperf-venv/bin/aiperf" if Path("/work/aiperf-venv/bin/aiperf").exists() else None)


def aiperf(run: Run) -> Reported:
    exe = aiperf_exe()
    assert exe is not None
    with tempfile.TemporaryDirectory() as d:
        cmd = [exe, "profile", "--model", MODEL, "--url", run.url, "--endpoint-type", "completions", "--streaming",
               "--concurrency", str(run.streams), "--request-count", str(run.requests),
               "--synthetic-input-tokens-mean", str(run.input_len), "--synthetic-input-tokens-stddev", "0",
               "--output-tokens-mean", str(run.output_len), "--output-tokens-stddev", "0",
               "--extra-inputs", "ignore_eos:true", "--extra-inputs", f"min_tokens:{run.output_len}",
               "--tokenizer", str(TOKENIZER), "--artifact-dir", d,
               "--use-server-token-count", "--no-server-metrics", "--no-gpu-telemetry", "--ui-type", "none"]
        # no HF_HUB_OFFLINE here: AIPerf 0.13 then looks a local tokenizer directory up in the hub cache and fails
        proc, wall = _exec(cmd, run)
        found = sorted(Path(d).rglob("profile_export_aiperf.json"))
        if not found:
            return Reported("AIPerf", failed=(proc.stderr or proc.stdout)[-800:], wall_s=wall)
        r = json.loads(found[0].read_text())
        records = sorted(Path(d).rglob("profile_export.jsonl"))
        icl = _aiperf_chunk_gaps(records[0]) if records else None

    def pick(name: str) -> tuple[float, float, float]:
        m = r.get(name) or {}
        return tuple(float(m.get(k, np.nan)) for k in ("p50", "p95", "p99"))

    itl = pick("inter_chunk_latency")
    if np.isnan(itl[0]) and icl is not None and len(icl):
        itl = tuple(np.percentile(icl, (50, 95, 99)))  # AIPerf's per-gap latency, from its records
    tok = (r.get("output_token_throughput") or {}).get("avg", np.nan)
    return Reported("AIPerf", ttft_ms=pick("time_to_first_token"), itl_ms=itl, tok_s=float(tok), wall_s=wall)


def _aiperf_chunk_gaps(path: Path) -> np.ndarray:
    gaps: list[float] = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        icl = (rec.get("metrics") or {}).get("inter_chunk_latency")
        if isinstance(icl, dict) and isinstance(icl.get("value"), list):
            gaps += [float(x) for x in icl["value"]]
    return np.array(gaps)
