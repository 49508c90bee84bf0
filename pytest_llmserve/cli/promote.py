"""`llmserve promote`: the engine-promotion gate, candidate vs a live or stored incumbent (gates/promotion.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from ..checks.promotion import DEFAULT_MARGIN
from ..load import ClientOptions, LoadSpec
from ..report.progress import print_emitter
from ..gates.promotion import DEFAULT_METRICS, Arm, ArmSamples, load_samples, run_ab, run_rounds, save_samples
from ..servers.capabilities import CapabilityError, common
from .args import Parser, UsageExit, first_model, metrics_url_for, probe_endpoints


def main(argv: Sequence[str]) -> int:
    """`llmserve promote`: exit 0 pass/improvement, 1 regression, 2 inconclusive, 3 could not run."""
    p = Parser(prog="llmserve promote", description="Engine-promotion gate: is the candidate slower than the "
               "incumbent by more than the margin? Live A/B runs are interleaved ABBA.")
    p.add_argument("--candidate-url", required=True)
    p.add_argument("--incumbent-url", help="a live incumbent (interleaved with the candidate)")
    p.add_argument("--incumbent-samples", metavar="FILE", help="a stored incumbent sample set (from --save-samples)")
    p.add_argument("--candidate-name", default="candidate")
    p.add_argument("--incumbent-name", default="incumbent")
    p.add_argument("--model", help="model for both (default: the first of each server's GET /v1/models)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=256, help="measured requests per round and side")
    p.add_argument("--rounds", type=int, default=4, help="rounds per side (ABBA order when both are live)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--endpoint", choices=("completions", "chat"),
                   help="default: completions, or chat where a server has no completions endpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--capability", action="append", default=[], metavar="KEY=VALUE",
                   help="override a probed capability of both servers, e.g. token_id_prompts=false (repeatable)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="gated metrics (default %(default)s)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="relative worsening that matters (0.10)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--allow-invalid", action="store_true", help="gate even when the client self-check failed")
    p.add_argument("--save-samples", metavar="FILE", help="write the candidate's samples (the next incumbent set)")
    p.add_argument("--record-only", action="store_true", help="only measure the candidate and --save-samples")
    p.add_argument("--json", dest="json_path", help="write the full comparison as JSON")
    p.add_argument("--md", dest="md_path", help="write a Markdown summary (pull-request comment)")
    p.add_argument("--workers", type=int, default=1, help="load-client processes")
    p.add_argument("--no-server-metrics", action="store_true")
    p.add_argument("--progress-interval", type=float, default=10.0)
    p.add_argument("--quiet", action="store_true")
    try:
        a = p.parse_args(list(argv))
        if a.record_only != (a.incumbent_url is None and a.incumbent_samples is None) or (
                a.incumbent_url and a.incumbent_samples):
            raise UsageExit("give exactly one of --incumbent-url and --incumbent-samples (or --record-only "
                            "--save-samples FILE to record a sample set)")
        if a.record_only and not a.save_samples:
            raise UsageExit("--record-only needs --save-samples FILE")
        spec = LoadSpec(endpoint=a.endpoint or "completions", concurrency=a.concurrency, requests=a.requests, warmup=a.warmup,
                        input_len=a.input_len, output_len=a.output_len, seed=a.seed)
        spec.validate()

        def arm(name: str, url: str) -> Arm:
            return Arm(name, url, a.model or first_model(url), None if a.no_server_metrics else metrics_url_for(url))

        kw = {"options": ClientOptions(workers=a.workers), "emit": None if a.quiet else print_emitter(),
              "interval_s": a.progress_interval, "explicit": ("endpoint",) if a.endpoint else ()}
        candidate = arm(a.candidate_name, a.candidate_url)
        live = [candidate] + ([arm(a.incumbent_name, a.incumbent_url)] if a.incumbent_url else [])
        kw["capabilities"] = common(list(probe_endpoints(live, a.capability).values()))
        if a.record_only:
            saved = save_samples(run_rounds(candidate, spec, a.rounds, **kw), a.save_samples)
            print(f"recorded {a.rounds} round(s) of {candidate.name} to {saved}")
            return 0
        incumbent: Arm | ArmSamples = (load_samples(a.incumbent_samples, spec) if a.incumbent_samples
                                       else arm(a.incumbent_name, a.incumbent_url))
        ab = run_ab(candidate, incumbent, spec, rounds=a.rounds, metrics=[m for m in a.metrics.split(",") if m],
                    margin=a.margin, alpha=a.alpha, beta=a.beta, allow_invalid=a.allow_invalid, **kw)
    except (UsageExit, ValueError, ConnectionError, OSError, CapabilityError) as exc:
        print(f"llmserve promote: {exc}", file=sys.stderr)
        return 3
    if a.save_samples:
        save_samples(ab.candidate, a.save_samples)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(ab.to_dict(), indent=1, default=str) + "\n")
    if a.md_path:
        Path(a.md_path).write_text(ab.markdown())
    if not a.quiet:
        print(ab.render())
    return ab.exit_code
