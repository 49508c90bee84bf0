"""Hugging Face bf16 on a GPU against the fp32 CPU reference, through the plugin's equivalence rule.

Run from the repository root on a GPU machine:
    PYTHONPATH=. python docs/h100_equivalence.py [--json out.json]

Both sides run here, in one process: the reference is `reference.hf_greedy` in fp32 on the CPU;
the candidate is the same greedy loop (`reference._greedy_batch`) over the checkpoint loaded in
bfloat16 on the GPU, logprobs from log_softmax in fp32 of the bf16 logits. The GPU fp32 run
(TF32 off) is compared too, with the fp32 tolerance, as a control: it should be all exact.
Besides the verdicts, it prints the log-odds swing of every top-k pair at agreed positions in
units of u*max(1,|L|)*sqrt(layers), the quantity the default tolerance scale (5) was set from
on the CPU (near_tie.py: HF bf16 vs fp32 p99 1.3, p99.9 2.1, max 3.7).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from pytest_llmserve.checks.equivalence import Continuation, EquivalenceReport, compare_all
from pytest_llmserve.checks.near_tie import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MIN_EXACT_MATCH_RATE,
    DEFAULT_TOP_K,
    UNIT_ROUNDOFF,
    ToleranceModel,
)
from pytest_llmserve.reference.hf import (
    DEFAULT_BATCH_SIZE,
    _batches,
    _fp32_matmul,
    _greedy_batch,
    _local_dir,
    decoder,
    hf_greedy,
    load_prompts,
    n_layers,
)

ROOT = Path(__file__).resolve().parent.parent


def greedy_in_dtype(model_dir: str | Path, prompts: Sequence[Sequence[int]], *, max_tokens: int, top_k: int,
                    device: str, dtype: str, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Continuation]:
    """`hf_greedy` with the weights and activations in `dtype` (hf_greedy itself is fixed to fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(_local_dir(model_dir)), dtype=torch_dtype).to(device).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    # Same batching as hf_greedy (longest prompts together), so only the dtype differs.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[Continuation | None] = [None] * len(prompts)
    with _fp32_matmul(device), torch.inference_mode():
        for chunk in _batches(order, batch_size):
            # _greedy_batch takes log_softmax of `logits.float()`: fp32 logprobs of the bf16 logits.
            for i, result in zip(chunk, _greedy_batch(model, [list(prompts[i]) for i in chunk], max_tokens,
                                                      top_k, pad, device)):
                out[i] = result
    return [c for c in out if c is not None]


def swing_units(reference: Sequence[Continuation], candidate: Sequence[Continuation], precision: str,
                layers: int) -> list[float]:
    """Each top-k pair's log-odds swing at agreed positions, in units of u*max(1,|L|)*sqrt(layers)."""
    unit = UNIT_ROUNDOFF[precision] * math.sqrt(max(1, layers))
    values: list[float] = []
    for ref, cand in zip(reference, candidate):
        for i, (r, c) in enumerate(zip(ref.tokens, cand.tokens)):
            if r != c:
                break  # after a divergence the two sides condition on different text
            rt, ct = ref.top_logprobs[i], cand.top_logprobs[i]
            magnitude = max(1.0, abs(ref.logit_scale[i])) if ref.logit_scale else 1.0
            for other in set(rt) & set(ct) - {r}:
                values.append(abs((rt[r] - rt[other]) - (ct[r] - ct[other])) / (unit * magnitude))
    return values


def quantiles(values: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p99, p99.9 and max (nearest-rank), rounded for printing."""
    if not values:
        return {"pairs": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 3)

    return {"pairs": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "p99.9": rank(0.999),
            "max": round(ordered[-1], 3)}


def _timed(label: str, fn: Any, timings: dict[str, float]) -> Any:
    started = time.perf_counter()
    result = fn()
    timings[label] = round(time.perf_counter() - started, 2)
    print(f"  {label}: {timings[label]} s", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "fixtures" / "tiny-llama"))
    parser.add_argument("--prompts", default=str(ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"))
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only (smoke runs)")
    parser.add_argument("--device", default="cuda", help="where the bf16 candidate runs (cpu for a smoke run)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # keep the recorded output free of "Loading weights" bars
    prompts = load_prompts(args.prompts, args.model)[: args.limit]
    ids = [p.token_ids for p in prompts]
    layers = n_layers(args.model)
    on_gpu = args.device.startswith("cuda")
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "candidate_device": torch.cuda.get_device_name(torch.device(args.device)) if on_gpu else args.device,
        "cpu_threads": torch.get_num_threads(),
        "model": Path(args.model).name, "n_layers": layers, "prompts": len(prompts),
        "max_tokens": args.max_tokens, "top_k": args.top_k,
    }
    print("environment:", json.dumps(env), flush=True)

    timings: dict[str, float] = {}
    kw = {"max_tokens": args.max_tokens, "top_k": args.top_k}
    reference = _timed("reference HF fp32 cpu", lambda: hf_greedy(args.model, ids, device="cpu", **kw), timings)
    bf16 = _timed(f"candidate HF bf16 {args.device}",
                  lambda: greedy_in_dtype(args.model, ids, device=args.device, dtype="bfloat16", **kw), timings)
    runs: dict[str, tuple[str, list[Continuation]]] = {f"hf-bf16-{args.device}": ("bfloat16", bf16)}
    if on_gpu:
        fp32 = _timed(f"control HF fp32 {args.device} (TF32 off)",
                      lambda: hf_greedy(args.model, ids, device=args.device, **kw), timings)
        runs[f"hf-fp32-{args.device}"] = ("float32", fp32)

    decode = decoder(args.model)
    pairs = [(p.id, p.token_ids) for p in prompts]
    result: dict[str, Any] = {"environment": env, "timings_s": timings, "comparisons": {}}
    for target, (precision, candidate) in runs.items():
        report: EquivalenceReport = compare_all(
            target, pairs, reference, candidate, ToleranceModel(precision, layers), top_k=args.top_k,
            max_tokens=args.max_tokens, min_exact_match_rate=DEFAULT_MIN_EXACT_MATCH_RATE,
            notes=(f"reference: HF fp32 on cpu; candidate: HF {precision} on {env['candidate_device']}",))
        swings = quantiles(swing_units(reference, candidate, precision, layers))
        print()
        print(report.render(decode))
        print(f"  agreed-position top-k pair swings, units of u*max(1,|L|)*sqrt({layers}) ({precision}): "
              + json.dumps(swings))
        result["comparisons"][target] = {**report.to_dict(), "swing_units": swings}
    print()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if all(c["passed"] for c in outcome["comparisons"].values()) else 1)
