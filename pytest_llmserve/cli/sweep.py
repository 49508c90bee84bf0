"""`llmserve sweep`: throughput and latency vs concurrency for one or more live targets (sweep.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from ..load import ClientOptions
from ..report.progress import print_emitter
from ..servers.capabilities import CapabilityError, common
from ..gates.sweep import SweepTarget, run_sweep
from .args import Parser, UsageExit, first_model, metrics_url_for, parse_levels, parse_named, probe_endpoints


def main(argv: Sequence[str]) -> int:
    """`llmserve sweep`: exit 0 when every run was valid, 1 when some were not, 3 when it could not run."""
    p = Parser(prog="llmserve sweep", description="Throughput/latency vs concurrency for one or "
                                "more targets with matched work; writes sweep.json, sweep.md and sweep.png.")
    p.add_argument("--url", action="append", required=True, metavar="NAME=URL", help="a target (repeatable)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]MODEL",
                   help="model to request (default: the first of GET /v1/models)")
    p.add_argument("--concurrency", required=True, help="levels, e.g. 1,2,4,8,16,32")
    p.add_argument("--requests-per-level", type=int, default=64, help="measured requests per target and level")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--warmup", type=int, help="warm-up requests per run (default min(c, 8))")
    p.add_argument("--repeats", type=int, default=1, help="runs per level (>= 2 lets crossovers be tested against noise)")
    p.add_argument("--endpoint", choices=("completions", "chat"),
                   help="default: completions, or chat where a target has no completions endpoint")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="do not force matched work (ignore_eos, min_tokens); for servers that reject them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="load-client processes (use spare cores only)")
    p.add_argument("--no-server-metrics", action="store_true", help="do not scrape <url>/metrics during runs")
    p.add_argument("--capability", action="append", default=[], metavar="KEY=VALUE",
                   help="override a probed capability of every target, e.g. token_id_prompts=false (repeatable)")
    p.add_argument("--hardware", default="", help="label shown in the plot and tables")
    p.add_argument("--title", help="plot title")
    p.add_argument("--out", default="llmserve-sweep", help="output directory (default: llmserve-sweep)")
    p.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--quiet", action="store_true", help="no progress lines, no table on stdout")
    try:
        a = p.parse_args(list(argv))
        urls, models = parse_named(a.url, "--url"), parse_named(a.model, "--model")
        levels = parse_levels(a.concurrency)  # usage errors before any server is asked anything
        targets = [SweepTarget(name or f"target{i + 1}", url, models.get(name) or models.get("") or first_model(url),
                               None if a.no_server_metrics else metrics_url_for(url))
                   for i, (name, url) in enumerate(urls.items())]
        caps = probe_endpoints(targets, a.capability)
        targets = [t if caps[t.name].metrics else SweepTarget(t.name, t.url, t.model, None) for t in targets]
        result = run_sweep(targets, levels, requests_per_level=a.requests_per_level,
                           input_len=a.input_len, output_len=a.output_len, warmup=a.warmup, repeats=a.repeats,
                           endpoint=a.endpoint, ignore_eos=not a.no_ignore_eos, seed=a.seed, options=ClientOptions(workers=a.workers),
                           emit=None if a.quiet else print_emitter(), interval_s=a.progress_interval,
                           hardware=a.hardware, capabilities=common(list(caps.values())))
    except (UsageExit, ValueError, ConnectionError, OSError, CapabilityError) as exc:
        print(f"llmserve sweep: {exc}", file=sys.stderr)
        return 3
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    md = result.markdown()
    (out / "sweep.md").write_text(md)
    from ..report.plots import save_sweep_png

    save_sweep_png(result, out / "sweep.png", title=a.title)
    if not a.quiet:
        print(md)
        print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    return 0 if all(pt.valid for pt in result.points) else 1
