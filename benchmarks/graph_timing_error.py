"""Error rate of the timing-based CUDA-graph check (checks/graph_timing.py) on the step times recorded on the H200.

    PYTHONPATH=. python benchmarks/graph_timing_error.py [--trials 200] [--json out.json]

Each trial draws disjoint random subsets of the recorded requests (n per level and side, without
replacement) and decides; four cases with known truth:
  on       target = graphs-on server, control = graphs-off server              truth: on
  null     target, control = two disjoint halves of the graphs-off server      truth: off (never on)
  swapped  target = graphs-off, control = graphs-on (labels swapped)           truth: off (never on)
  partial  target = graphs-on at c <= 8, graphs-off half A above; control = graphs-off half B   truth: partial
  cross    target = graphs-off of the second run, control = graphs-off of the first (another machine)
           truth: off -- the control is NOT from the same sweep: this shows why it must be
Each case runs on each recorded run (tests/data/timing/h200_hf_serve_graphs*.json: two device calls,
two machines); `cross` needs both.
Prints, per case and n, how often each verdict came out; "wrong" counts any verdict other than the
truth except inconclusive, which is counted apart (no answer is not a wrong answer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pytest_llmserve.checks.graph_timing import VERDICTS, decide  # noqa: E402

DATA = sorted((ROOT / "tests" / "data" / "timing").glob("h200_hf_serve_graphs*.json"))
TRUTH = {"on": "on", "null": "off", "swapped": "off", "partial": "partial"}


def trial(case: str, n: int, on: dict[int, np.ndarray], off: dict[int, np.ndarray], rng: np.random.Generator,
          other_off: dict[int, np.ndarray] | None = None) -> str:
    def pick(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.permutation(x.size)
        return x[idx[:k]], x[idx[k:2 * k]]

    target, control = {}, {}
    for c in on:
        a_on, _ = pick(on[c], n)
        a_off, b_off = pick(off[c], n)
        if case == "on":
            target[c], control[c] = a_on, a_off
        elif case == "null":
            target[c], control[c] = a_off, b_off
        elif case == "swapped":
            target[c], control[c] = a_off, a_on
        elif case == "cross":
            target[c], control[c] = a_off, pick(other_off[c], n)[0]
        else:
            target[c], control[c] = (a_on if c <= 8 else a_off), b_off
    return decide(target, control, replicas=0, n_resamples=500, seed=int(rng.integers(1 << 30))).verdict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--sizes", default="8,16", help="requests per level and side (at most 16: halves of 32)")
    ap.add_argument("--json", help="also write the counts here")
    a = ap.parse_args()
    runs = []
    for path in DATA:
        steps = json.loads(path.read_text())["step_ms"]
        runs.append((path.stem, {int(c): np.asarray(v, float) for c, v in steps["graphs-on"].items()},
                     {int(c): np.asarray(v, float) for c, v in steps["graphs-off"].items()}))
    rng = np.random.default_rng(0)
    rows = {}
    print(f"{'run':<30} {'case':<8} {'n':>3} {'truth':<8} " + " ".join(f"{v:>12}" for v in VERDICTS) + f" {'wrong':>8}")
    for n in (int(x) for x in a.sizes.split(",")):
        for ri, (name, on, off) in enumerate(runs):
            cases = dict(TRUTH)
            if ri > 0:
                cases["cross"] = "off"
            for case, truth in cases.items():
                counts = Counter(trial(case, n, on, off, rng, runs[0][2]) for _ in range(a.trials))
                wrong = sum(k for v, k in counts.items() if v not in (truth, "inconclusive"))
                rows[f"{name}-{case}-n{n}"] = {"truth": truth, "counts": dict(counts), "wrong": wrong, "trials": a.trials}
                print(f"{name:<30} {case:<8} {n:>3} {truth:<8} " + " ".join(f"{counts.get(v, 0):>12}" for v in VERDICTS)
                      + f" {wrong / a.trials:>8.1%}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
