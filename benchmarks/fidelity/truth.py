"""The truth side of the fidelity benchmark: start the truth server, fetch its log, compute true metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
Q = (50, 95, 99)


@dataclass(frozen=True)
class TrueMetrics:
    """What really happened to the last `n` streamed completion requests the server saw."""

    n: int
    ttft_ms: tuple[float, float, float]  # p50, p95, p99 of first-token send - request arrival
    itl_ms: tuple[float, float, float]  # p50, p95, p99 of every gap between token sends
    tok_s: float  # tokens / (last token send - first request arrival)
    ttft_by_id: dict[str, float]
    gaps: int


class TruthProcess:
    """The truth server as a subprocess pinned to `cpu` (taskset), with a given script."""

    def __init__(self, cpu: str | None, ttft_ms: float, itl_ms: float, nice: int = 0, processes: int = 1) -> None:
        cmd = [sys.executable, "-m", "pytest_llmserve.testing.truth_server", "--port", "0",
               "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)]
        self.processes = processes
        if processes > 1:  # several processes: the log comes from their files when they stop
            self._dir = tempfile.mkdtemp(prefix="truth-")
            cmd += ["--processes", str(processes), "--truth-log", str(Path(self._dir) / "log")]
        cmd = pin(cmd, cpu, nice)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"truth server did not start: {line!r}")
        self.url = line.split()[4]
        self.http = httpx.Client(base_url=self.url, timeout=60.0)

    def reset(self) -> None:
        if self.processes == 1:  # a multi-process server serves one run only (its log comes at stop)
            self.http.post("/truth/reset").raise_for_status()

    def log(self) -> list[dict]:
        if self.processes > 1:
            self.stop()
            return [json.loads(line) for f in sorted(Path(self._dir).glob("log.*"))
                    for line in f.read_text().splitlines() if line]
        resp = self.http.get("/truth")
        resp.raise_for_status()
        return resp.json()["requests"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pin(cmd: list[str], cpu: str | None, nice: int = 0) -> list[str]:
    """Prefix a command with taskset (and nice) when asked for."""
    out = list(cmd)
    if nice:
        out = ["nice", "-n", str(nice), *out]
    if cpu is not None:
        out = ["taskset", "-c", str(cpu), *out]
    return out


def true_metrics(log: list[dict], n: int) -> TrueMetrics:
    """Truth over the last `n` streamed completions by arrival (tools may send probes before their run)."""
    reqs = sorted((r for r in log if r.get("stream") and r["token_ns"] and not r.get("aborted")),
                  key=lambda r: r["t_recv_ns"])[-n:]
    if not reqs:
        raise RuntimeError("the truth server logged no completed streaming request")
    ttft = np.array([(r["token_ns"][0] - r["t_recv_ns"]) / 1e6 for r in reqs])
    gaps = np.concatenate([np.diff(r["token_ns"]) / 1e6 for r in reqs])
    span = (max(r["token_ns"][-1] for r in reqs) - min(r["t_recv_ns"] for r in reqs)) / 1e9
    return TrueMetrics(
        n=len(reqs), ttft_ms=tuple(np.percentile(ttft, Q)), itl_ms=tuple(np.percentile(gaps, Q)),
        tok_s=sum(len(r["token_ns"]) for r in reqs) / span,
        ttft_by_id={r["id"]: float(t) for r, t in zip(reqs, ttft)}, gaps=len(gaps),
    )


def wait_quiet(seconds: float) -> None:
    """Let the server drain between runs."""
    time.sleep(seconds)
