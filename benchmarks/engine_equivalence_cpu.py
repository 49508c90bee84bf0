"""Engine against engine on the CPU vLLM (tiny model): throughput, same-build divergence, bf16 vs fp8 KV.

    flock /tmp/llmserve-heavy.lock timeout 480 .venv/bin/python benchmarks/engine_equivalence_cpu.py [budget_s]

1. tiny-vllm (pyproject.toml) at concurrency 16 for `budget_s` on a 4,000-prompt plan (the incumbent side,
   cached as it would be by the suite): prompts/min.
2. The same server re-run at concurrency 4 on the prompts step 1 answered (another batch composition),
   keyed apart so it is really sent: the same-build divergence.
3. tiny-vllm-fp8kv as the candidate: the incumbent side comes from the cache (0 sent), the candidate is
   sent the same prompts.
Writes benchmarks/results/engine_equivalence_cpu.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llmserve.checks.divergence import compare_engines  # noqa: E402
from pytest_llmserve.settings.config import load_config  # noqa: E402
from pytest_llmserve.gates.engine_equivalence import EngineEquivalenceSettings, engine_prompts  # noqa: E402
from pytest_llmserve.reference.engine_outputs import cached_side, engine_version, side_identity  # noqa: E402
from pytest_llmserve.servers.lifecycle import ServerPool  # noqa: E402

PROMPTS = ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
budget = float(sys.argv[1]) if len(sys.argv) > 1 else 75.0
settings = EngineEquivalenceSettings(prompts=4000, max_tokens=32, budget_s=budget, concurrency=16)
config = load_config(ROOT / "pyproject.toml")
tmp = Path(tempfile.mkdtemp(prefix="engine-eq-"))
cache = tmp / "engine_outputs"
pool = ServerPool(log_dir=tmp / "logs", progress=print)
out: dict = {"budget_s": budget, "max_tokens": settings.max_tokens, "planned": settings.prompts}
try:
    t = time.perf_counter()
    bf16 = pool.get(config.target("tiny-vllm"))
    out["bf16_start_s"] = round(time.perf_counter() - t, 1)
    prompts, notes = engine_prompts(bf16, bf16, settings, PROMPTS)
    identity = side_identity(bf16.target, engine_version(bf16.base_url))
    out["version"] = identity["version"]

    def side(handle, name: str, ident: dict, want: int, concurrency: int):
        return cached_side(name, handle.base_url, handle.model, ident, prompts, want=want,
                           max_tokens=settings.max_tokens, top_k=settings.top_k, cache_dir=cache, budget_s=budget,
                           concurrency=concurrency)

    first = side(bf16, "tiny-vllm", identity, len(prompts), 16)
    print(first.line())
    again = side(bf16, "tiny-vllm-rerun", {**identity, "rerun": 2}, len(first.continuations), 4)
    print(again.line())
    same = compare_engines("tiny-vllm (c=4)", "tiny-vllm (c=16)", [(p.id, p.token_ids) for p in prompts],
                           first.continuations, again.continuations, max_tokens=settings.max_tokens,
                           threshold=settings.divergence_threshold, prompts_planned=len(prompts),
                           notes=notes + [first.line(), again.line()])
    print(same.render())
    out["bf16_c16"] = {"sent": first.sent, "send_s": round(first.send_s, 1),
                       "prompts_per_min": round(60 * first.sent / first.send_s, 1)}
    out["bf16_c4"] = {"sent": again.sent, "send_s": round(again.send_s, 1),
                      "prompts_per_min": round(60 * again.sent / again.send_s, 1) if again.send_s else None}
    out["same_build"] = same.to_dict()
    t = time.perf_counter()
    fp8 = pool.get(config.target("tiny-vllm-fp8kv"))
    out["fp8_start_s"] = round(time.perf_counter() - t, 1)
    n = len(first.continuations)  # the incumbent from the cache (0 sent); the suite would also extend it
    incumbent = side(bf16, "tiny-vllm", identity, n, 16)
    candidate = side(fp8, "tiny-vllm-fp8kv", side_identity(fp8.target, engine_version(fp8.base_url)), n, 16)
    fp8_report = compare_engines("tiny-vllm-fp8kv", "tiny-vllm", [(p.id, p.token_ids) for p in prompts],
                                 incumbent.continuations, candidate.continuations, max_tokens=settings.max_tokens,
                                 threshold=settings.divergence_threshold, prompts_planned=len(prompts),
                                 notes=notes + [incumbent.line(), candidate.line()])
    print(fp8_report.render())
    out["fp8kv_vs_bf16"] = {**fp8_report.to_dict(), "incumbent_sent": incumbent.sent, "candidate_sent": candidate.sent,
                            "candidate_send_s": round(candidate.send_s, 1)}
finally:
    print("leftovers:", pool.stop_all())
    dest = ROOT / "benchmarks" / "results" / "engine_equivalence_cpu.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", dest)
