"""Equivalence gate wall time, 64 prompts x 64 tokens on the CPU vLLM: cold HF reference vs cached; plus the
perturbed-model verdict and tolerance calibration of the observed near-ties."""
from __future__ import annotations
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
import httpx
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pytest_llmserve.settings.config import load_config
from pytest_llmserve.servers.lifecycle import ServerPool
from pytest_llmserve.gates.equivalence import run_equivalence
from pytest_llmserve.reference.hf import make_perturbed_model, forward_passes
from pytest_llmserve.evidence.server_logprobs import completion_body
from pytest_llmserve.checks.near_tie import UNIT_ROUNDOFF

PROMPTS = ROOT / "fixtures/prompts/stdlib-64.jsonl"
TINY = ROOT / "fixtures/tiny-llama"
layer, scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1, float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
tmp = Path(tempfile.mkdtemp(prefix="eqbench-"))
target = load_config(ROOT / "pyproject.toml").target("tiny-vllm")
pool = ServerPool(log_dir=tmp / "logs", progress=print)
rows = []
try:
    t = time.perf_counter(); h = pool.get(target); print(f"vLLM start {time.perf_counter()-t:.1f}s")
    raw = httpx.post(h.base_url + "/v1/completions", json=completion_body(h.model, [0, 328, 37, 434], 3, 2), timeout=60).json()
    print("raw choice:", json.dumps(raw["choices"][0])[:700])
    cache = tmp / "reference"
    for label in ("cold reference", "cached reference"):
        fp = forward_passes(); t = time.perf_counter()
        run = run_equivalence(h, cache_dir=cache, default_prompts=PROMPTS)
        rows.append((label, time.perf_counter() - t, run.reference.wall_s, run.server_s, forward_passes() - fp, run.report))
    print(rows[-1][-1].render(run.decode))
    n = 4
    u = UNIT_ROUNDOFF["bfloat16"]
    for r, ref in zip(run.report.results, run.reference.continuations):
        if r.divergence is not None:
            d = r.divergence
            sc = ref.logit_scale[d.position]
            print(f"  {r.prompt_id} {r.verdict} ref_gap={d.reference_gap} cand_gap={d.candidate_gap} |L|={sc} "
                  f"ratio={(d.swing or 0)/(u*max(1,sc)*math.sqrt(n)):.2f}")
    # Calibration: log-odds error between vLLM and HF for every pair both top-ks share, at agreed positions.
    errs = []
    for r, ref, cand in zip(run.report.results, run.reference.continuations, run.candidates):
        for i in range(r.matched):
            rt, ct, tok, sc = ref.top_logprobs[i], cand.top_logprobs[i], ref.tokens[i], ref.logit_scale[i]
            for t in set(rt) & set(ct) - {tok}:
                e = (rt[tok] - rt[t]) - (ct[tok] - ct[t])
                errs.append(abs(e) / (u * max(1, sc) * math.sqrt(n)))
    errs.sort()
    print(f"vLLM vs HF pair log-odds error / (2^-8 |L| sqrt(4)): n={len(errs)} p50={errs[len(errs)//2]:.2f} "
          f"p99={errs[int(.99*len(errs))]:.2f} p99.9={errs[int(.999*len(errs))]:.2f} max={errs[-1]:.2f}")
    src = tmp / "tiny-perturbed"
    make_perturbed_model(TINY, src, layer=layer, scale=scale, seed=0)
    t = time.perf_counter(); hp = pool.get(dataclasses.replace(target, name="tiny-perturbed", model=str(src))); print(f"perturbed vLLM start {time.perf_counter()-t:.1f}s")
    t = time.perf_counter()
    runp = run_equivalence(hp, cache_dir=cache, default_prompts=PROMPTS, target=dataclasses.replace(hp.target, model=str(TINY)))
    rows.append(("perturbed (cached ref)", time.perf_counter() - t, runp.reference.wall_s, runp.server_s, 0, runp.report))
    print(runp.render())
finally:
    print("leftovers:", pool.stop_all())
print(f"\n{'run':<24} {'total s':>8} {'ref s':>7} {'server s':>9} {'HF fwd':>7} {'exact':>6} {'ties':>5} {'hard':>5}")
for label, total, refs, srv, fwd, rep in rows:
    print(f"{label:<24} {total:8.2f} {refs:7.2f} {srv:9.2f} {fwd:7d} {rep.exact:6d} {rep.near_ties:5d} {rep.hard_mismatches:5d}")
