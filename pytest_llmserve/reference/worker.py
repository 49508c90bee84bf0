"""The Hugging Face reference in its own process, and fp32 references reused across devices that agree.

In its own process (``python -m pytest_llmserve.reference.worker request.json result.json``) the HF
model's GPU memory is returned when the process exits, so it never competes with the server under
test for the rest of the session. cached_reference isolates by default on CUDA devices (on CPU the
import cost of a fresh process, ~5-10 s, buys nothing).

Reuse across devices: an fp32 reference computed on one device (say CPU, committed with the repo)
is reused on another (a GPU runner) when a spot check agrees: the first SPOT_PROMPTS prompts are
recomputed on the new device; identical greedy tokens and every top-k logprob within
SPOT_TOLERANCE_NATS mean the stored file is copied under the new device's key (recorded in
`made_by.reused_from`), otherwise the full reference is computed there. Only float32: a bf16
calibration differs between devices by design (it is each device's own rounding).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ..checks.equivalence import Continuation

SPOT_PROMPTS = 4
SPOT_TOLERANCE_NATS = 1e-3  # fp32 vs fp32 on two devices differ by ~1e-5 here; any tolerance is ≥ 0.01


class WorkerError(Exception):
    """The reference process failed; the message carries its stderr tail."""


def run_isolated(model_dir: str | Path, prompts: Sequence[Sequence[int]], *, max_tokens: int, top_k: int,
                 device: str, batch_size: int, dtype: str) -> tuple[list[Continuation], int]:
    """hf_greedy in a child process: (continuations, forward passes it ran)."""
    with tempfile.TemporaryDirectory(prefix="llmserve-ref-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"model_dir": str(model_dir), "prompts": [list(p) for p in prompts],
                                       "max_tokens": max_tokens, "top_k": top_k, "device": device,
                                       "batch_size": batch_size, "dtype": dtype}))
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.run([sys.executable, "-m", "pytest_llmserve.reference.worker", str(request), str(result)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            raise WorkerError(f"the HF reference process exited {proc.returncode}: {proc.stderr[-1500:]}")
        data = json.loads(result.read_text())
    conts = [Continuation(tuple(c["tokens"]), tuple({int(t): v for t, v in step} for step in c["top"]),
                          tuple(c["logit_scale"])) for c in data["continuations"]]
    return conts, int(data["forward_passes"])


def spot_agrees(stored: Sequence[Continuation], fresh: Sequence[Continuation],
                tolerance: float = SPOT_TOLERANCE_NATS) -> tuple[bool, float]:
    """Same greedy tokens and top-k logprobs within `tolerance`: (agrees, largest difference seen)."""
    worst = 0.0
    for a, b in zip(stored, fresh):
        if a.tokens != b.tokens:
            return False, float("inf")
        for sa, sb in zip(a.top_logprobs, b.top_logprobs):
            if set(sa) != set(sb):
                return False, float("inf")
            worst = max(worst, max(abs(sa[t] - sb[t]) for t in sa))
    return worst <= tolerance, worst


def reuse_other_device(path: Path, key, prompts: Sequence, compute) -> tuple[tuple[Continuation, ...], int] | None:
    """A stored fp32 reference of another device whose spot check agrees here, copied under `path`; else None."""
    from dataclasses import asdict, replace

    from .hf import _read, _write

    for other in sorted(path.parent.glob("*.json")):
        try:
            stored_key = json.loads(other.read_text("utf-8")).get("key") or {}
        except (OSError, ValueError):
            continue
        if other == path or stored_key.get("device") in (None, key.device):
            continue
        if stored_key != asdict(replace(key, device=stored_key["device"])):
            continue
        theirs = _read(other, replace(key, device=stored_key["device"]), len(prompts))
        if theirs is None:
            continue
        fresh, passes = compute(prompts[:SPOT_PROMPTS])
        agrees, worst = spot_agrees(theirs[:SPOT_PROMPTS], fresh)
        if not agrees:
            continue
        _write(path, key, prompts, theirs, passes, 0.0, reused_from={
            "file": other.name, "device": stored_key["device"], "spot_prompts": len(fresh),
            "max_logprob_diff": worst})
        return theirs, passes
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from .hf import forward_passes, hf_greedy

    request_path, result_path = (argv or sys.argv[1:])[:2]
    req = json.loads(Path(request_path).read_text())
    conts = hf_greedy(req["model_dir"], req["prompts"], max_tokens=req["max_tokens"], top_k=req["top_k"],
                      device=req["device"], batch_size=req["batch_size"], dtype=req["dtype"])
    Path(result_path).write_text(json.dumps({
        "forward_passes": forward_passes(),
        "continuations": [{"tokens": list(c.tokens), "top": [[[t, v] for t, v in s.items()] for s in c.top_logprobs],
                           "logit_scale": list(c.logit_scale)} for c in conts]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
