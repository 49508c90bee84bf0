"""FP8 accuracy delta on real servers: scoring speed, and what a paired vs an unpaired gate can see per n.

  python benchmarks/fp8_accuracy.py                       # starts the tiny CPU vLLM twice (bf16 KV, fp8 KV)
  python benchmarks/fp8_accuracy.py --baseline http://h:8000 --baseline-model m \\
      --candidate http://h:8001 --candidate-model m --tasks my_tasks/next_token.jsonl

For each task: items/s of scoring on each server, then for growing prefixes of the items the
observed delta, the paired minimum detectable drop (this plugin's gate) and the unpaired,
TensorRT-LLM-style one from the same data (both include the tolerated drop δ).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llmserve.reference.accuracy_tasks import load_task, paired_arrays, score_task  # noqa: E402
from pytest_llmserve.checks.accuracy_gate import accuracy_gate  # noqa: E402
from pytest_llmserve.settings.config import Target  # noqa: E402

TINY = ROOT / "fixtures" / "tiny-llama"
VLLM_ARGS = ("--max-model-len", "1024", "--max-num-seqs", "32")


def _start_pair():
    from pytest_llmserve.servers.lifecycle import ServerPool

    pool = ServerPool(log_dir=Path(tempfile.mkdtemp(prefix="fp8-bench-")), progress=print)
    base = Target(name="bench-bf16", kind="vllm", model=str(TINY), dtype="bfloat16", args=VLLM_ARGS,
                  env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}, startup_timeout_s=600)
    fp8 = dataclasses.replace(base, name="bench-fp8kv", args=VLLM_ARGS + ("--kv-cache-dtype", "fp8"))
    return pool, pool.get(base), pool.get(fp8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline"), ap.add_argument("--baseline-model")
    ap.add_argument("--candidate"), ap.add_argument("--candidate-model")
    ap.add_argument("--tasks", nargs="*", type=Path, default=sorted((ROOT / "fixtures" / "tasks").glob("*.jsonl")))
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)

    pool = None
    if args.baseline and args.candidate:
        servers = [(args.baseline, args.baseline_model), (args.candidate, args.candidate_model)]
    else:
        pool, base, cand = _start_pair()
        servers = [(base.base_url, base.model), (cand.base_url, cand.model)]
    try:
        for path in args.tasks:
            task = load_task(path)
            scored = []
            print(f"\n== {task.name} ({task.kind}, {len(task.items)} items, n={task.n_scored})")
            print(f"{'server':<40} {'accuracy':>9} {'mean ll':>9} {'seconds':>8} {'items/s':>8}")
            for url, model in servers:
                t0 = time.perf_counter()
                s = score_task(url, model, task, concurrency=args.concurrency)
                dt = time.perf_counter() - t0
                summ = s.summary()
                print(f"{url + ' ' + str(model):<40} {summ['accuracy']:>9.4f} {summ['mean_loglik']:>9.4f} {dt:>8.2f} {s.n / dt:>8.0f}")
                scored.append(s)
            base_ok, cand_ok = paired_arrays(scored[0], scored[1])
            print(f"\n{'n':>6} {'delta pp':>9} {'lost':>5} {'won':>5} {'paired MDD pp':>14} {'unpaired MDD pp':>16} {'verdict':>8}")
            n_total = len(base_ok)
            for frac in (0.1, 0.25, 0.5, 1.0):
                n = max(2, int(n_total * frac))
                g = accuracy_gate(base_ok[:n], cand_ok[:n])
                lost, won = (g.mcnemar.losses, g.mcnemar.wins) if g.mcnemar else (0, 0)
                print(f"{n:>6} {100 * g.delta.estimate:>+9.2f} {lost:>5} {won:>5} {100 * g.min_detectable_drop:>14.2f} "
                      f"{100 * g.min_detectable_drop_unpaired:>16.2f} {g.verdict:>8}")
    finally:
        if pool is not None:
            pool.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
