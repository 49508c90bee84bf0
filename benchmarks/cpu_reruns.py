"""False alarms of the baseline gate on the real CPU vLLM: the same build re-run against its recorded baseline.

One re-run = one `pytest -m slo suites/` session (both CPU targets, every concurrency level) against
baselines/cpu-2c/, its JSON report kept. Each run starts fresh servers, so the runs see the machine's
session-to-session drift, which is what a margin must absorb.

  flock /tmp/llmserve-heavy.lock .venv/bin/python benchmarks/cpu_reruns.py --run benchmarks/results/cpu_reruns
  .venv/bin/python benchmarks/cpu_reruns.py --table benchmarks/results/cpu_reruns   # after >= 10 target runs

The table recomputes, for other margins, what the verdict would have been from each run's interval (the
interval does not depend on the margin; only where the sequential measurement stops does), so it shows
the tightest margin that stayed free of false regressions here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARGINS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.35, 0.50)


def run_once(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    report = out_dir / f"rerun-{stamp}.json"
    cmd = [sys.executable, "-m", "pytest", "-m", "slo", "suites/", "-q", "-p", "no:cacheprovider",
           "--llmserve-report-json", str(report)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"{report}: pytest exit {proc.returncode}, load average {os.getloadavg()[0]:.1f}")
    return proc.returncode


def verdict_at(g: dict, margin: float) -> str:
    """The four-way verdict of one stored comparison at another margin (same interval)."""
    lo, hi = g["change_ci"]
    if g["metric"] in ("output_tok_s", "requests_s"):  # higher is better: worsening = −change
        lo, hi = -hi, -lo
    if lo != lo:
        return "inconclusive"
    if lo > 0 and hi > margin:
        return "regression"
    if hi <= margin:
        return "improvement" if hi < 0 and lo < -margin else "pass"
    return "inconclusive"


def table(out_dir: Path) -> str:
    runs = []
    for path in sorted(out_dir.glob("rerun-*.json")):
        data = json.loads(path.read_text())
        runs.append((path.name, data))
    rows: dict[tuple[str, str], list[dict]] = {}
    spent: dict[str, list[int]] = {}
    failed = 0
    for _, data in runs:
        for r in data["results"]:
            if r["kind"] != "slo":
                continue
            failed += not r["passed"]
            level = r["nodeid"].rsplit("-c", 1)[-1].rstrip("]")
            spent.setdefault(f"c={level}", []).append((r.get("measurement") or {}).get("requests", 0))
            for g in r.get("baseline_gate", []):
                if g["gated"]:
                    rows.setdefault((g["metric"], f"c={level}"), []).append(g)
    tests = sum(len(v) for v in spent.values())
    lines = [f"{len(runs)} sessions, {tests} SLO tests ({failed} failed for any reason); requests spent per test "
             "(median): " + ", ".join(f"{k} {sorted(v)[len(v) // 2]}" for k, v in sorted(spent.items())), "",
             "| metric | level | runs | change: median [min, max] | configured margin: regressions | "
             + " | ".join(f"at {m:.0%}" for m in MARGINS) + " |",
             "|---|---|---:|---|---:|" + "---:|" * len(MARGINS)]
    for (metric, level), gs in sorted(rows.items()):
        ch = sorted(g["change"] for g in gs)
        conf = gs[0]["margin"]
        regs = sum(g["verdict"] == "regression" for g in gs)
        at = [sum(verdict_at(g, m) == "regression" for g in gs) for m in MARGINS]
        lines.append(f"| {metric} | {level} | {len(gs)} | {ch[len(ch) // 2]:+.1%} [{ch[0]:+.1%}, {ch[-1]:+.1%}] | "
                     f"{conf:.0%}: {regs} | " + " | ".join(str(a) for a in at) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, metavar="DIR", help="one re-run; its JSON report goes to DIR")
    ap.add_argument("--table", type=Path, metavar="DIR", help="the false-alarm table of the reports in DIR")
    args = ap.parse_args()
    if args.run:
        return run_once(args.run)
    if args.table:
        print(table(args.table))
        return 0
    ap.error("give --run DIR or --table DIR")
    return 2


if __name__ == "__main__":
    sys.exit(main())
