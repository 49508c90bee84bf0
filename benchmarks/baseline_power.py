"""Detection and false-alarm rates of the statistical baseline gate, through the real pytest path.

Ground-truth streaming servers (pytest_llmserve.testing.truth_server, pinned to cpu 0) play a build and
its regressions: one base server, a fresh copy of it (0 %), and servers whose TTFT, ITL or whole request
time is slower by 5, 10 and 20 % (throughput −x % means every request takes 1/(1−x) as long). Per trial:

1. `pytest --update-baselines` against the base server records the baseline (a target r<trial>);
2. the baseline is copied to one target per condition, and one `pytest` session gates every condition
   (targets t<trial>-<condition> pointing at their servers), the sequential measurement deciding how
   many requests each test spends.

The test body is suites/test_slo.py's (`llm_load.until_decided(...).assert_slo()`) with a smaller
workload so that a trial takes seconds. Verdicts come from the session's --llmserve-report-json.

  flock /tmp/llmserve-heavy.lock .venv/bin/python benchmarks/baseline_power.py --trials 4 \\
      --json benchmarks/results/baseline_power.json          # appends trials to the JSON; run in chunks
  .venv/bin/python benchmarks/baseline_power.py --table benchmarks/results/baseline_power.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TTFT_MS, ITL_MS, JITTER_MS, TOKENS, CONCURRENCY = 60.0, 4.0, 8.0, 16, 8
RETRIES = 4  # a shared 2-core machine: rounds the client rejects are measured again, up to 4 times
LEVELS = (0.05, 0.10, 0.20)
METRIC_OF = {"ttft": "ttft_p95_ms", "itl": "itl_p50_ms", "tput": "output_tok_s"}

TEST_BODY = f'''
import pytest

@pytest.mark.slo
def test_streaming_completions_meet_slo(llm_load, llm_concurrency):
    # suites/test_slo.py's body, with a small workload
    llm_load.until_decided(concurrency=llm_concurrency, requests=max(16, 4 * llm_concurrency),
                           warmup=min(llm_concurrency, 8), input_len=16, output_len={TOKENS}).assert_slo()
'''


def scripts() -> dict[str, dict[str, float]]:
    """Condition → truth-server timings; each regression moves its metric's true value by x."""
    q_ttft, q_itl = 0.95 * JITTER_MS, 0.5 * JITTER_MS  # jitter's share of TTFT p95 and of the median gap
    out = {"base": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS}, "zero": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS}}
    for x in LEVELS:
        p = f"{round(x * 100)}"
        out[f"ttft{p}"] = {"ttft_ms": (1 + x) * (TTFT_MS + q_ttft) - q_ttft, "itl_ms": ITL_MS}
        out[f"itl{p}"] = {"ttft_ms": TTFT_MS, "itl_ms": (1 + x) * (ITL_MS + q_itl) - q_itl}
        s = 1 / (1 - x)
        out[f"tput{p}"] = {"ttft_ms": s * (TTFT_MS + q_itl) - q_itl, "itl_ms": s * (ITL_MS + q_itl) - q_itl}
    return out


def start_server(timing: dict[str, float], seed: int) -> tuple[subprocess.Popen, str]:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "pytest_llmserve.testing.truth_server", "--port", "0",
           "--ttft-ms", f"{timing['ttft_ms']:.4f}", "--itl-ms", f"{timing['itl_ms']:.4f}",
           "--jitter-ms", f"{JITTER_MS}", "--seed", str(seed)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"http://\S+", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"truth server did not start: {line!r}")
    return proc, m.group(0)


def write_project(d: Path, targets: dict[str, str], budget_s: float) -> None:
    lines = [f"[baseline_gate]\nbudget_s = {budget_s}\n"]
    for name, url in targets.items():
        lines.append(f'[[targets]]\nname = "{name}"\nkind = "openai"\nurl = "{url}"\nmodel = "truth-model"\n'
                     f'concurrency = [{CONCURRENCY}]\nclient_cpus = "1"\n')
    (d / "llmserve.toml").write_text("\n".join(lines))
    (d / "test_slo.py").write_text(TEST_BODY)


def pytest_run(d: Path, *args: str) -> dict:
    report = d / "report.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_slo.py", "--llmserve-hardware",
           "fake:cpu-2c", "--llmserve-report-json", str(report), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLMSERVE_RETRIES": str(RETRIES)}
    proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True, env=env)
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return json.loads(report.read_text())


def copy_baseline(d: Path, src: str, dst: str) -> None:
    """The baseline recorded for target `src`, as if recorded for target `dst` (ids carry the target name)."""
    hw = d / "baselines" / "cpu-2c"
    swap = (lambda s: s.replace(f"[{src}-", f"[{dst}-"))  # noqa: E731
    data = json.loads((hw / f"{src}.json").read_text())
    data["target"], data["entries"] = dst, {swap(k): v for k, v in data["entries"].items()}
    (hw / f"{dst}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    side = json.loads(gzip.decompress((hw / f"{src}.samples.json.gz").read_bytes()))
    side["target"], side["entries"] = dst, {swap(k): v for k, v in side["entries"].items()}
    (hw / f"{dst}.samples.json.gz").write_bytes(gzip.compress(json.dumps(side).encode()))


def one_trial(trial: int, urls: dict[str, str], budget_s: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="llmserve-power-") as tmp:
        d = Path(tmp)
        rec = f"r{trial}"
        write_project(d, {rec: urls["base"]}, budget_s)
        t0 = time.time()
        recorded = pytest_run(d, "--update-baselines")
        t1 = time.time()
        rec_result = recorded["results"][0]
        conds = [c for c in urls if c != "base"]
        names = {c: f"t{trial}-{c}" for c in conds}
        for c in conds:
            copy_baseline(d, rec, names[c])
        write_project(d, {names[c]: urls[c] for c in conds}, budget_s)
        gated = pytest_run(d)
        print(f"trial {trial}: recorded in {t1 - t0:.1f} s, gated {len(conds)} conditions in {time.time() - t1:.1f} s",
              flush=True)
        out = []
        by_target = {r["target"]: r for r in gated["results"]}
        for c in conds:
            r = by_target[names[c]]
            out.append({"trial": trial, "condition": c, "passed": r["passed"],
                        "record_requests": rec_result["measurement"]["requests"],
                        "record_rounds": rec_result["measurement"]["rounds"],
                        "measurement": {k: v for k, v in (r.get("measurement") or {}).items() if k != "attempt_notes"},
                        "remeasured": sum("measured again" in n for n in (r.get("measurement") or {}).get("attempt_notes", [])),
                        "gate": {g["metric"]: {k: g[k] for k in ("verdict", "change", "change_ci", "margin",
                                                                 "min_detectable", "gated", "requests")}
                                 for g in r.get("baseline_gate", []) if g["gated"]}})
        return out


def dump(data: dict) -> str:
    """The results file: one line per row, so chunks append readable diffs."""
    rows = ",\n  ".join(json.dumps(r, sort_keys=True) for r in data["rows"])
    return f'{{"chunks": {json.dumps(data["chunks"])},\n "rows": [\n  {rows}\n]}}\n'


def table(rows: list[dict]) -> str:
    """Per injected condition and gated metric: how often each verdict came out, and requests spent."""
    conds = ["zero"] + [f"{m}{round(x * 100)}" for m in METRIC_OF for x in LEVELS]
    lines = ["| injected | metric | trials | regression | inconclusive | pass/improvement | test failed | "
             "requests spent (median) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in conds:
        rs = [r for r in rows if r["condition"] == c]
        if not rs:
            continue
        metrics = list(METRIC_OF.values()) if c == "zero" else [METRIC_OF[re.sub(r"\d+", "", c)]]
        spent = sorted(r["measurement"]["requests"] for r in rs if r.get("measurement"))
        med = spent[len(spent) // 2] if spent else "-"
        label = "none (fresh server, same timings)" if c == "zero" else f"{re.sub(r'[0-9]+', '', c)} +{re.sub(r'[a-z]+', '', c)} %"
        for metric in metrics:
            vs = [r["gate"].get(metric, {}).get("verdict") for r in rs]
            n = len(vs)
            reg, inc = vs.count("regression"), vs.count("inconclusive")
            fails = sum(1 for r in rs if not r["passed"])
            lines.append(f"| {label} | {metric} | {n} | {reg} ({reg / n:.0%}) | {inc} ({inc / n:.0%}) | "
                         f"{n - reg - inc} | {fails} | {med} |")
    return "\n".join(lines)


def coverage(sims: int) -> str:
    """Simulated no-change comparisons: how often the interval misses 0, by baseline repeats R (why R=5)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from pytest_llmserve.checks.baseline_gate import Round, compare_rounds

    def draw(rng, k, n, tau):
        shifts = 1 + tau * rng.standard_normal(k)  # each round's own run effect
        return [Round.of({"ttft_ms": (20 + rng.uniform(0, 10, n)) * u}, {"output_tok_s": 1000 / u}) for u in shifts]

    a = 0.05 / 3
    lines = [f"| baseline repeats R | run rounds | run-to-run SD | metric | interval missed 0 (nominal {2 * a:.1%}) | "
             "false regression |", "|---:|---:|---:|---|---:|---:|"]
    for r, k, tau in ((3, 1, 0.03), (3, 2, 0.03), (5, 1, 0.03), (5, 2, 0.03), (8, 2, 0.03)):
        for metric in ("ttft_p95_ms", "output_tok_s"):
            rng = np.random.default_rng(11)
            miss = reg = 0
            for _ in range(sims):
                c = compare_rounds(metric, draw(rng, r, 64, tau), draw(rng, k, 64, tau),
                                   higher_is_better=metric == "output_tok_s", margin=0.1, alpha=a, power=0.9)
                miss += not c.check.change.contains(0.0)
                reg += c.verdict == "regression"
            lines.append(f"| {r} | {k} | {tau:.0%} | {metric} | {miss / sims:.1%} | {reg / sims:.1%} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2, help="trials in this chunk (each records and gates once)")
    ap.add_argument("--budget-s", type=float, default=60.0, help="baseline_gate.budget_s of the gated tests")
    ap.add_argument("--json", type=Path, help="append this chunk's trials to this JSON file")
    ap.add_argument("--table", type=Path, help="only print the table of an existing JSON file")
    ap.add_argument("--coverage", type=int, metavar="SIMS", help="only simulate interval coverage by repeats (no servers)")
    args = ap.parse_args()
    if args.coverage:
        print(coverage(args.coverage))
        return 0
    if args.table:
        data = json.loads(args.table.read_text())
        print(table(data["rows"]))
        return 0
    data = json.loads(args.json.read_text()) if args.json and args.json.exists() else {"rows": [], "chunks": []}
    first = 1 + max((r["trial"] for r in data["rows"]), default=-1)
    procs, urls = [], {}
    t0 = time.time()
    try:
        for i, (cond, timing) in enumerate(scripts().items()):
            proc, url = start_server(timing, seed=first * 100 + i)
            procs.append(proc)
            urls[cond] = url
        for trial in range(first, first + args.trials):
            rows = one_trial(trial, urls, args.budget_s)
            data["rows"] += rows
            print(f"trial {trial}: " + ", ".join(f"{r['condition']}={'pass' if r['passed'] else 'FAIL'}" for r in rows),
                  flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(dump(data))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    data["chunks"].append({"trials": args.trials, "seconds": round(time.time() - t0, 1),
                           "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0)),
                           "loadavg": os.getloadavg()[0],
                           "retries": RETRIES, "timings": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS, "jitter_ms": JITTER_MS,
                                       "tokens": TOKENS, "concurrency": CONCURRENCY}})
    if args.json:
        args.json.write_text(dump(data))
    print(table(data["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
