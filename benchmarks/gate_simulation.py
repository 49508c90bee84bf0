"""Monte Carlo check of the gates' error rates: false alarms under no change, power for a stated change.

  python benchmarks/gate_simulation.py            # full tables (~1-3 min on 2 shared cores)
  python benchmarks/gate_simulation.py --sims 200 # quicker, noisier

(a) accuracy gate: paired 0/1 items with base accuracy 0.2-0.6 and correlated outcomes: a symmetric
    churn `disc` of items flip either way (as measured: 47 of 5,120 = 0.9 %), plus `drop` extra losses;
(b) promotion gate: lognormal latencies (plus a floor) with a p95 regression made by scaling
    the whole distribution, and a Welch comparison of few-run throughput means;
(c) comparison with a stored summary value, showing why the stored value's noise (its SE) matters;
(d) accuracy gate with *clustered* flips (positions of a passage share a flip rate, as FP8 flips do):
    items treated as independent vs the passage bootstrap (groups=), false alarms, power, effective n,
    and how often a task is inconclusive (cannot detect 3 pp).
Each rate carries its Monte Carlo standard error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_llmserve.checks.accuracy_gate import accuracy_gate  # noqa: E402
from pytest_llmserve.checks.promotion import compare_samples, compare_to_stored  # noqa: E402
from pytest_llmserve.checks.stats import bootstrap_percentile_ci  # noqa: E402

ALPHA, BETA = 0.05, 0.2


def paired_binary(rng: np.random.Generator, n: int, acc: float, disc: float, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """Baseline/candidate 0/1 outcomes with base accuracy acc: symmetric churn disc, plus `drop` extra losses."""
    p10, p01 = disc / 2 + drop, disc / 2
    p11 = acc - p10
    counts = rng.multinomial(n, [p11, p10, p01, 1 - p11 - p10 - p01])
    base = np.repeat([1.0, 1.0, 0.0, 0.0], counts)
    cand = np.repeat([1.0, 0.0, 1.0, 0.0], counts)
    return base, cand


def latencies(rng: np.random.Generator, n: int, sigma: float, scale: float = 1.0) -> np.ndarray:
    """TTFT-like milliseconds: a 20 ms floor plus lognormal queueing/prefill time (median 40 ms)."""
    return scale * (20.0 + rng.lognormal(math.log(40.0), sigma, n))


def rate(k: int, sims: int) -> str:
    return f"{k / sims:.3f} ±{math.sqrt(max(k, 0.5) * (sims - k) / sims) / sims:.3f}"


def table(title: str, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[j])) for r in [head] + rows) for j in range(len(head))]
    print(f"\n{title}")
    for r in [head] + rows:
        print("  " + "  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def accuracy_tables(sims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for n in (1319, 4096):
        for acc in (0.2, 0.4, 0.6):
            for disc in (0.02, 0.10):
                fails: dict[str, int] = {}
                mdd, mdd_u = [], []
                cases = {"null δ=1pp": (0.0, 0.01), "null δ=0": (0.0, 0.0), "drop=δ=1pp": (0.01, 0.01),
                         "drop 2pp": (0.02, 0.01), "drop 3pp": (0.03, 0.01)}
                for name, (drop, tol) in cases.items():
                    k = 0
                    for _ in range(sims):
                        b, c = paired_binary(rng, n, acc, disc, drop)
                        r = accuracy_gate(b, c, tolerance=tol, alpha=ALPHA, beta=BETA, seed=rng, n_resamples=2000)
                        k += r.verdict == "fail"
                        if name == "null δ=1pp":
                            mdd.append(r.min_detectable_drop)
                            mdd_u.append(r.min_detectable_drop_unpaired)
                    fails[name] = k
                rows.append([n, acc, disc] + [rate(fails[c], sims) for c in cases]
                            + [f"{100 * np.mean(mdd):.2f}", f"{100 * np.mean(mdd_u):.2f}"])
    table(f"(a) accuracy gate, fail rate over {sims} simulations per cell (α={ALPHA}, β={BETA}; "
          "columns 4-6 must be ≤ α; MDD in pp, δ=1pp included)",
          ["n", "acc", "disc", "null δ=1pp", "null δ=0", "drop=δ=1pp", "drop 2pp", "drop 3pp",
           "MDD paired", "MDD unpaired"], rows)


def promotion_tables(sims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for sigma in (0.3, 0.5):
        for n in (200, 500, 1000, 2000):
            out = {}
            det = []
            for name, scale in (("null", 1.0), ("+10%", 1.10)):
                verdicts: dict[str, int] = {}
                for _ in range(sims):
                    r = compare_samples("ttft_ms", latencies(rng, n, sigma, scale), latencies(rng, n, sigma),
                                        alpha=ALPHA, beta=BETA, seed=rng, n_resamples=2000)
                    verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
                    if name == "null":
                        det.append(r.min_detectable)
                out[name] = verdicts
            rows.append([sigma, n, rate(out["null"].get("regression", 0), sims),
                         rate(out["null"].get("inconclusive", 0), sims),
                         rate(out["+10%"].get("regression", 0), sims),
                         rate(out["+10%"].get("inconclusive", 0), sims), f"{100 * np.mean(det):.1f}%"])
    table(f"(b) promotion gate, p95 TTFT, {sims} simulations per cell (margin 10 %, α={ALPHA}; "
          "false alarm must be ≤ α, power ≥ 0.8 wanted)",
          ["σ(log)", "n/side", "false alarm", "inconcl@null", "power +10%", "inconcl@+10%", "detectable"], rows)

    rows = []
    for cv in (0.02, 0.05):
        for runs in (3, 5, 10):
            k_null = k_drop = 0
            for _ in range(sims):
                inc = rng.normal(6000, 6000 * cv, runs)  # output tok/s, one value per run
                k_null += compare_samples("tok_s", rng.normal(6000, 6000 * cv, runs), inc, higher_is_better=True,
                                          statistic="mean").verdict == "regression"
                k_drop += compare_samples("tok_s", rng.normal(5400, 5400 * cv, runs), inc, higher_is_better=True,
                                          statistic="mean").verdict == "regression"
            rows.append([f"{cv:.0%}", runs, rate(k_null, sims), rate(k_drop, sims)])
    table("    throughput, mean of per-run tok/s (Welch t)", ["run CV", "runs/side", "false alarm", "power −10%"], rows)


def stored_table(sims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, sigma = 1000, 0.5
    true_p95 = float(np.percentile(latencies(np.random.default_rng(1), 2_000_000, sigma), 95))
    rows = []
    for label in ("true p95 stored", "p95 of one run stored", "p95 of one run + its SE stored"):
        k = 0
        for _ in range(sims):
            stored, stored_se = true_p95, None
            if not label.startswith("true"):
                ci = bootstrap_percentile_ci(latencies(rng, n, sigma), 95, seed=rng, n_resamples=2000)
                stored, stored_se = ci.estimate, (ci.se if label.endswith("SE stored") else None)
            r = compare_to_stored("ttft_ms", latencies(rng, n, sigma), stored, stored_se=stored_se, seed=rng,
                                  n_resamples=2000)
            k += r.verdict == "regression"
        rows.append([label, n, rate(k, sims)])
    table("(c) candidate vs a stored p95 value, no change (σ=0.5)", ["stored value", "n", "false alarm"], rows)


def clustered_binary(rng: np.random.Generator, passages: int, length: int, acc: float, disc: float, drop: float,
                     concentration: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired 0/1 outcomes in passages: each passage draws its churn and extra-loss rates from Beta
    distributions with means disc and drop (smaller `concentration` = more clustered), and its base accuracy."""
    base, cand, groups = [], [], []
    for g in range(passages):
        a = rng.beta(acc * 20, (1 - acc) * 20)
        churn = rng.beta(disc * concentration, (1 - disc) * concentration) if disc > 0 else 0.0
        extra = rng.beta(drop * concentration, (1 - drop) * concentration) if drop > 0 else 0.0
        churn, extra = min(churn, 0.5), min(extra, 0.25)
        a = min(max(a, churn / 2 + extra), 1 - churn / 2)  # keep the four cell probabilities in [0, 1]
        b, c = paired_binary(rng, length, a, churn, extra)
        perm = rng.permutation(length)
        base.append(b[perm]), cand.append(c[perm]), groups.append(np.full(length, g))
    return np.concatenate(base), np.concatenate(cand), np.concatenate(groups)


def clustered_tables(sims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    passages, length = 40, 128  # the shape of the bundled next_token task: 40 passages x 128 positions
    for concentration in (1000.0, 20.0, 5.0):
        for disc in (0.01, 0.04):
            cases = {"null δ=0": (0.0, 0.0), "drop=δ=1pp": (0.01, 0.01), "drop 3pp": (0.03, 0.01), "drop 5pp": (0.05, 0.01)}
            fails = {(c, mode): 0 for c in cases for mode in ("iid", "cluster")}
            inconclusive = 0
            deff, neff = [], []
            for _ in range(sims):
                for name, (drop, tol) in cases.items():
                    b, c, g = clustered_binary(rng, passages, length, 0.4, disc, drop, concentration)
                    iid = accuracy_gate(b, c, tolerance=tol, alpha=ALPHA, beta=BETA, seed=rng, n_resamples=1000)
                    cl = accuracy_gate(b, c, tolerance=tol, alpha=ALPHA, beta=BETA, seed=rng, n_resamples=1000,
                                       groups=g, require_detectable=0.03 if tol > 0 else None)
                    fails[(name, "iid")] += iid.verdict == "fail"
                    fails[(name, "cluster")] += cl.verdict == "fail"
                    if name == "drop=δ=1pp":
                        inconclusive += cl.verdict == "inconclusive"
                        deff.append(cl.design_effect)
                        neff.append(cl.effective_n)
            rows.append([f"{concentration:g}", disc] + [f"{rate(fails[(c, 'iid')], sims)} | {rate(fails[(c, 'cluster')], sims)}"
                                                       for c in cases]
                        + [f"{np.mean(deff):.2f}", f"{np.mean(neff):.0f}", rate(inconclusive, sims)])
    table(f"(d) accuracy gate, clustered flips: {passages} passages x {length} positions, {sims} simulations per cell; "
          "each cell 'items independent | passage bootstrap'; columns 3-4 must be ≤ α "
          "(concentration: Beta concentration of the per-passage rates, lower = more clustered)",
          ["conc", "disc", "null δ=0", "drop=δ=1pp", "drop 3pp", "drop 5pp", "deff", "eff. n", "inconcl@δ"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=1000, help="simulations per cell")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--only", choices=["accuracy", "promotion", "stored", "clustered"], default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.only in (None, "accuracy"):
        accuracy_tables(args.sims, args.seed)
    if args.only in (None, "promotion"):
        promotion_tables(args.sims, args.seed + 1)
    if args.only in (None, "stored"):
        stored_table(args.sims, args.seed + 2)
    if args.only in (None, "clustered"):
        clustered_tables(args.sims, args.seed + 3)
    print(f"\n{time.perf_counter() - t0:.1f} s, seed {args.seed}")


if __name__ == "__main__":
    main()
