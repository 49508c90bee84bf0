"""What the assumed start spread does for a baseline recorded in one pytest run (baseline_gate.start_spread).

Part 1 simulates no-change comparisons where each pytest run (server start) shifts the metric by a
random factor (SD = the true spread), rounds inside a run by 1 %, a one-start baseline of 3 rounds
against a run of 3 rounds, margin 10 %, the default α/k: how often a regression is declared with the
default assumption (5 %) and without it (0), and how often a real shift is caught.
Part 2 (`--server`) measures the spread between pytest runs against one real `transformers serve` on
this machine: it records the slo suite once and gates it N times, and prints ITL p50 / throughput per run.

    .venv/bin/python benchmarks/one_start_spread.py            # part 1, ~5 s
    .venv/bin/python benchmarks/one_start_spread.py --server 4 # part 2, ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_llmserve.checks.baseline_gate import Round, compare_rounds

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.05 / 3


def _run(rng: np.random.Generator, start: int, k: int, start_sd: float, shift: float = 1.0) -> list[Round]:
    s = 1 + start_sd * rng.standard_normal()
    return [Round.of({"ttft_ms": [10.0] * 16}, {"itl_p50_ms": 20.0 * s * (1 + 0.01 * rng.standard_normal()) * shift},
                     start) for _ in range(k)]


def _verdict(base: list[Round], cand: list[Round], assumed: float) -> str:
    return compare_rounds("itl_p50_ms", base, cand, higher_is_better=False, margin=0.10, alpha=ALPHA, power=0.9,
                          assumed_start_spread=assumed).verdict


def simulate(sims: int = 300) -> None:
    print(f"no-change comparisons ({sims} each), one-start baseline of 3 rounds vs a run of 3, margin 10 %")
    print("true spread between runs | assumed 5 %: regression / inconclusive / pass | assumed 0: regression")
    for sd in (0.0, 0.03, 0.05, 0.08):
        rng = np.random.default_rng(21)
        with_a, without = [], []
        for _ in range(sims):
            base, cand = _run(rng, 0, 3, sd), _run(rng, 0, 3, sd)
            with_a.append(_verdict(base, cand, 0.05))
            without.append(_verdict(base, cand, 0.0))
        share = {v: with_a.count(v) / sims for v in ("regression", "inconclusive", "pass")}
        print(f"{sd:>24.0%} | {share['regression']:>11.1%} / {share['inconclusive']:>12.1%} / {share['pass']:>4.1%}"
              f" | {without.count('regression') / sims:.1%}")
    print("\nregressions caught (100 each, true spread 5 %, assumed 5 %)")
    rng = np.random.default_rng(22)
    for shift in (1.1, 1.2, 1.3, 1.5):
        caught = sum(_verdict(_run(rng, 0, 3, 0.05), _run(rng, 0, 3, 0.05, shift), 0.05) == "regression"
                     for _ in range(100))
        print(f"  +{shift - 1:.0%}: {caught}/100")


# start_spread = 0: the gate's verdicts are not the point here, the measured values are
CONFIG = ('baseline_gate = {{ repeats = 2, budget_s = 20, start_spread = 0 }}\n[[targets]]\n'
          'name = "hf-serve"\nkind = "openai"\nurl = "{url}"\nmodel = "{model}"\nclient_cpus = "1"\nconcurrency = [1, 4]\n')


def server_runs(gates: int, out: Path) -> None:
    """Record once, gate `gates` times against one transformers serve; per run the mean over its rounds."""
    work = Path(tempfile.mkdtemp(prefix="one-start-"))
    model = work / "model"
    shutil.copytree(ROOT / "fixtures" / "tiny-llama", model)
    gen = json.loads((model / "generation_config.json").read_text())
    gen.pop("eos_token_id")  # every request decodes max_tokens (tests/test_server_capabilities.py says why)
    (model / "generation_config.json").write_text(json.dumps(gen))
    port = 18777
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(["taskset", "-c", "0", str(Path(sys.executable).parent / "transformers"), "serve",
                               str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype",
                               "bfloat16", "--continuous-batching", "--cb-max-memory-percent", "0.05"],
                              env=env, stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        (work / "llmserve.toml").write_text(CONFIG.format(url=f"http://127.0.0.1:{port}", model=model))
        shutil.copy(ROOT / "suites" / "test_slo.py", work / "test_slo.py")
        rows = []
        for i in range(gates + 1):
            args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llmserve-hardware", "cpu-2c", "-q",
                    "--llmserve-report-json", f"run{i}.json", "test_slo.py"] + (["--update-baselines"] if i == 0 else [])
            subprocess.run(args, cwd=work, capture_output=True, timeout=600)
            report = json.loads((work / f"run{i}.json").read_text())
            for entry in report["results"]:
                m = entry["metrics"]
                rows.append({"run": i, "test": entry["nodeid"].rsplit("[", 1)[-1].rstrip("]"),
                             "itl_p50_ms": m["itl_p50_ms"], "output_tok_s": m["output_tok_s"]})
        out.write_text(json.dumps(rows, indent=1))
        for test in sorted({r["test"] for r in rows}):
            mine = [r for r in rows if r["test"] == test]
            for key in ("itl_p50_ms", "output_tok_s"):
                v = np.array([r[key] for r in mine])
                print(f"{test} {key}: " + ", ".join(f"{x:.4g}" for x in v) +
                      f"  (run 0 recorded; SD between runs {np.std(v, ddof=1) / v.mean():.1%})")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", type=int, metavar="GATES", help="measure against transformers serve, GATES gate runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "one_start_spread" / "hf_serve.json")
    a = ap.parse_args()
    if a.server:
        server_runs(a.server, a.out)
    else:
        simulate()
