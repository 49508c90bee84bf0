"""Does the equivalence gate separate a correct engine from subtly broken builds? Tuning vs held-out models.

Cases: the fixture model (tuning set) and the held-out model (benchmarks/heldout/, 6 layers, licence
prose; built on first use) served clean by the CPU vLLM, re-run with different request concurrency
(different batch compositions), and broken copies of the held-out weights (pytest_llmserve/testing/
broken_weights.py) served by the CPU vLLM while the reference is the clean checkpoint. Default settings.

  flock /tmp/llmserve-heavy.lock .venv/bin/python benchmarks/equivalence_heldout.py --case heldout
  .venv/bin/python benchmarks/equivalence_heldout.py --table        # the table of every recorded run

Each --case starts one vLLM (~60 s) and appends its rows to benchmarks/heldout/results.jsonl; run the
cases one per locked command (each well under 8 minutes).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llmserve.checks.near_tie import EquivalenceSettings  # noqa: E402
from pytest_llmserve.settings.config import load_config  # noqa: E402
from pytest_llmserve.gates.equivalence import run_equivalence  # noqa: E402
from pytest_llmserve.servers.lifecycle import ServerPool  # noqa: E402
from pytest_llmserve.testing import broken_weights  # noqa: E402

FIXTURE = ROOT / "fixtures" / "tiny-llama"
FIXTURE_PROMPTS = ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
HELDOUT = ROOT / "benchmarks" / "heldout" / "model"
HELDOUT_PROMPTS = HELDOUT / "prompts.jsonl"
RESULTS = ROOT / "benchmarks" / "heldout" / "results.jsonl"
CACHE = ROOT / "benchmarks" / "heldout" / ".reference-cache"
BROKEN = {f"heldout: {name}": fn for name, fn in broken_weights.CASES.items()}
CASES = ("fixture", "heldout", "fixture: noise 1.0 std, layer 1", *BROKEN)


def ensure_heldout() -> None:
    if not (HELDOUT / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "heldout" / "make_heldout_model.py")], check=True)


def served_and_reference(case: str, tmp: Path) -> tuple[Path, Path, Path]:
    """(served model dir, reference model dir, prompts) for a case."""
    if case == "fixture":
        return FIXTURE, FIXTURE, FIXTURE_PROMPTS
    if case.startswith("fixture:"):
        return broken_weights.noise_layer(FIXTURE, tmp / "broken", layer=1, scale=1.0), FIXTURE, FIXTURE_PROMPTS
    ensure_heldout()
    if case == "heldout":
        return HELDOUT, HELDOUT, HELDOUT_PROMPTS
    return BROKEN[case](HELDOUT, tmp / "broken"), HELDOUT, HELDOUT_PROMPTS


def row(case: str, run_no: int, concurrency: int, run, wall: float) -> dict:
    rep, cal = run.report, run.report.calibration
    stats = {t.statistic: (t.engine, t.calibration, t.failed) for t in cal.tests} if cal else {}
    return {"case": case, "run": run_no, "concurrency": concurrency, "prompts": len(rep.results),
            "exact": rep.exact, "near_ties": rep.near_ties, "hard": rep.hard_mismatches,
            "stats": stats, "passed": rep.passed, "failures": rep.failures(), "wall_s": round(wall, 1),
            "tolerance": rep.tolerance.describe()}


def run_case(case: str, reruns: int, prompts: int | None) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="eq-heldout-"))
    served, reference, prompt_file = served_and_reference(case, tmp)
    base = load_config(ROOT / "pyproject.toml").target("tiny-vllm")
    target = dataclasses.replace(base, name="eq-" + "".join(c if c.isalnum() else "-" for c in case)[:40],
                                 model=str(served), options={})
    pool = ServerPool(log_dir=tmp / "logs")
    rows = []
    try:
        t0 = time.perf_counter()
        handle = pool.get(target)
        print(f"{case}: vLLM up in {time.perf_counter() - t0:.0f} s", flush=True)
        settings = EquivalenceSettings()
        for k, concurrency in enumerate((8, 1, 4, 16, 32, 2, 64)[:reruns]):
            t = time.perf_counter()
            run = run_equivalence(handle, cache_dir=CACHE, default_prompts=prompt_file, settings=settings,
                                  target=dataclasses.replace(handle.target, model=str(reference)), limit=prompts,
                                  device="cpu", concurrency=concurrency)
            rows.append(row(case, k + 1, concurrency, run, time.perf_counter() - t))
            if k == 0:
                print(run.render(), flush=True)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        left = pool.stop_all()
        if left:
            print("server processes left:", left)
    with RESULTS.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return rows


NOISE_GRID = ((0, 0.25, "mlp"), (2, 0.25, "mlp"), (2, 0.5, "mlp"), (2, 1.0, "mlp"), (4, 0.25, "mlp"),
              (1, 0.25, ""), (2, 0.25, "self_attn"))


def hf_grid() -> None:
    """Noise grid on the held-out model with HF bf16 standing in for the engine (no server; cf. the CPU vLLM's 1.0x)."""
    from pytest_llmserve.checks.calibration import calibrate
    from pytest_llmserve.reference.hf import cached_reference, hf_greedy, load_prompts

    ensure_heldout()
    prompts = load_prompts(HELDOUT_PROMPTS, HELDOUT)
    ref = cached_reference(HELDOUT, prompts, max_tokens=64, top_k=5, cache_dir=CACHE, device="cpu").continuations
    cal = cached_reference(HELDOUT, prompts, max_tokens=64, top_k=5, cache_dir=CACHE, device="cpu",
                           dtype="bfloat16").continuations
    print("| noise (x std) | layer | tensors | div/token ratio | drift ratio | top-k drift ratio | verdict |")
    print("|---|---|---|---|---|---|---|")
    for layer, scale, part in NOISE_GRID:
        tmp = Path(tempfile.mkdtemp(prefix="eq-grid-"))
        broken_weights.noise_layer(HELDOUT, tmp / "m", layer=layer, scale=scale, part=part)
        eng = hf_greedy(tmp / "m", [p.token_ids for p in prompts], max_tokens=64, top_k=5, dtype="bfloat16")
        c = calibrate(ref, eng, cal, label="HF bf16")
        ratios = [f"{t.ratio:.2f}" + (" *" if t.failed else "") for t in c.tests]
        print(f"| {scale:g} | {layer} | {part or 'all'} | {' | '.join(ratios)} | {'pass' if c.passed else 'FAIL'} |",
              flush=True)


def table(rows: list[dict]) -> None:
    head = ["case", "run", "conc", "exact", "ties", "hard", "div/token engine / HF bf16", "drift engine / HF bf16",
            "top-k drift engine / HF bf16", "verdict", "wall s"]
    out = [head]
    for r in rows:
        s = r["stats"]

        def pair(name: str) -> str:
            if name not in s:
                return "-"
            e, c, failed = s[name]
            return f"{e:.4f} / {c:.4f}" + (" *" if failed else "")

        verdict = "pass" if r["passed"] else "FAIL"
        out.append([r["case"], str(r["run"]), str(r["concurrency"]), f"{r['exact']}/{r['prompts']}", str(r["near_ties"]),
                    str(r["hard"]), pair("divergence per token"), pair("chosen-token drift"), pair("top-k drift"),
                    verdict, f"{r['wall_s']:.1f}"])
    widths = [max(len(x[j]) for x in out) for j in range(len(head))]
    for k, x in enumerate(out):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("(* = that statistic failed its test)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=CASES, help="case to run (repeatable)")
    ap.add_argument("--reruns", type=int, default=1, help="comparisons per server (different concurrency)")
    ap.add_argument("--prompts", type=int, default=None, help="first N prompts (default all 64)")
    ap.add_argument("--table", action="store_true", help="print the table of benchmarks/heldout/results.jsonl")
    ap.add_argument("--hf-grid", action="store_true", help="noise grid with HF bf16 as the engine (no server)")
    args = ap.parse_args()
    if args.hf_grid:
        hf_grid()
        return
    for case in args.case or []:
        run_case(case, args.reruns, args.prompts)
    if args.table or not args.case:
        rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.is_file() else []
        table(rows)


if __name__ == "__main__":
    main()
