"""`llmserve load --url URL --concurrency C --requests N --output-len L --json PATH`.

Exit status of `load`: 0 when the run is valid, 1 when it ran but is invalid (client could not keep
up, token counts mismatched, every request failed), 2 for usage errors or an unreachable server.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from ..gates.drive import drive
from ..load import ClientOptions, LoadSpec, RunResult, load_prompts
from ..load.fit import fit_load
from ..servers.capabilities import CapabilityError


def _models(url: str, headers: dict[str, str]) -> list[str]:
    import httpx

    base = url.rstrip("/")
    base = base[:-3] if base.endswith("/v1") else base
    resp = httpx.get(f"{base}/v1/models", headers=headers, timeout=10.0)
    resp.raise_for_status()
    return [m["id"] for m in resp.json().get("data", []) if isinstance(m, dict) and "id" in m]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `load` subcommand's parser, added to the top-level subparsers `sub`."""
    ld = sub.add_parser("load", help="drive streaming load against an OpenAI-compatible server",
                        description="Streaming load with exact (kernel) timestamps; prints a table, writes JSON.")
    ld.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    ld.add_argument("--model", help="model name (default: the first of GET /v1/models)")
    ld.add_argument("--endpoint", choices=("completions", "chat"),
                    help="default: completions, or chat where the server has no completions endpoint")
    ld.add_argument("--concurrency", type=int, help="requests in flight (closed loop); with --rate, a cap")
    ld.add_argument("--rate", type=float, help="requests/s (open loop)")
    ld.add_argument("--arrival", choices=("poisson", "constant"), default="poisson")
    ld.add_argument("--requests", type=int, help="measured requests (default 32 unless --duration)")
    ld.add_argument("--duration", type=float, help="seconds of load instead of a request count")
    ld.add_argument("--warmup", type=int, default=2, help="requests sent first, excluded from statistics")
    ld.add_argument("--prompt-len", type=int, default=64, help="synthetic prompt length in tokens")
    ld.add_argument("--output-len", type=int, help="tokens to decode per request (required without --workload/--trace)")
    ld.add_argument("--workload", help="a named profile instead of fixed lengths: chat, rag, long-context, batch, "
                    "multi-turn (scaled to the server's max_model_len)")
    ld.add_argument("--trace", metavar="JSONL", help="replay a Mooncake-format trace at its timestamps (open loop); "
                    "'shipped' = the small sample trace")
    ld.add_argument("--trace-speed", type=float, default=1.0, help="replay speed-up (2: twice as fast)")
    ld.add_argument("--trace-block-size", type=int, default=512, help="tokens per trace hash id")
    ld.add_argument("--trace-repeat", type=int, default=1, help="play the trace this many times back to back")
    ld.add_argument("--max-model-len", type=int, help="fit workload/trace lengths to this (default: GET /v1/models)")
    ld.add_argument("--prompts-file", help='JSONL, one {"prompt": "text" | [token ids]} per line')
    ld.add_argument("--vocab-size", type=int, help="model vocabulary size (bounds synthetic token ids)")
    ld.add_argument("--no-ignore-eos", action="store_true", help="do not force matched work (ignore_eos, min_tokens)")
    ld.add_argument("--timeout", type=float, default=120.0, help="per-request timeout and longest stall, seconds")
    ld.add_argument("--seed", type=int, default=0)
    ld.add_argument("--extra-body", help="JSON object merged into every request body")
    ld.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra request header")
    ld.add_argument("--workers", type=int, default=1, help="client processes (use spare cores only)")
    ld.add_argument("--capability", action="append", default=[], metavar="KEY=VALUE",
                    help="override a probed server capability, e.g. token_id_prompts=false (repeatable)")
    ld.add_argument("--json", dest="json_path", help="write the result here as JSON")
    ld.add_argument("--records", action="store_true", help="include per-request records in the JSON")
    ld.add_argument("--quiet", action="store_true", help="no table on stdout")
    tech = ld.add_argument_group("client techniques (for ablation; defaults are the measured best)")
    tech.add_argument("--http-parser", choices=("auto", "httptools", "h11"), default="auto")
    tech.add_argument("--no-kernel-timestamps", action="store_true", help="stamp arrivals after each read instead")
    tech.add_argument("--no-uvloop", action="store_true")
    tech.add_argument("--no-gc-freeze", action="store_true")
    return ld

def _shaped_spec(a: argparse.Namespace, model: str) -> tuple[LoadSpec, list[str]]:
    """The spec of --workload / --trace (lengths fitted to the server), else of the plain flags."""
    if a.workload and a.trace:
        raise ValueError("give --workload or --trace, not both")
    if not (a.workload or a.trace):
        if a.output_len is None:
            raise ValueError("--output-len is required (or use --workload NAME / --trace FILE)")
        return _spec_from_args(a), []
    from ..load.trace import SHIPPED_TRACE, load_trace, trace_spec
    from ..load.workloads import workload
    from ..servers.info import max_model_len

    limit = a.max_model_len or max_model_len(a.url, model)
    if a.trace:
        replay = trace_spec(load_trace(SHIPPED_TRACE if a.trace == "shipped" else a.trace), speed=a.trace_speed,
                            block_size=a.trace_block_size, max_model_len=limit, seed=a.seed, repeat=a.trace_repeat,
                            vocab_size=a.vocab_size, request_timeout_s=a.timeout)
        return replay.spec, [replay.describe()]
    args = {k: v for k, v in (("concurrency", a.concurrency), ("requests", a.requests)) if v is not None}
    wl = workload(a.workload, max_model_len=limit, seed=a.seed, vocab_size=a.vocab_size,
                  request_timeout_s=a.timeout, **args)
    return wl.spec, [wl.describe()]


def _spec_from_args(a: argparse.Namespace) -> LoadSpec:
    if a.requests is not None and a.duration is not None:
        raise ValueError("give --requests or --duration, not both")
    extra = None
    if a.extra_body:
        extra = json.loads(a.extra_body)
        if not isinstance(extra, dict):
            raise ValueError("--extra-body must be a JSON object, e.g. '{\"temperature\": 0}'")
    spec = LoadSpec(
        endpoint=a.endpoint or "completions",
        concurrency=a.concurrency if a.concurrency is not None else (None if a.rate is not None else 1),
        rate=a.rate, arrival=a.arrival,
        requests=a.requests if a.requests is not None or a.duration is not None else 32,
        duration_s=a.duration, warmup=a.warmup, input_len=a.prompt_len, output_len=a.output_len,
        prompts=load_prompts(a.prompts_file) if a.prompts_file else None,
        ignore_eos=not a.no_ignore_eos, request_timeout_s=a.timeout, seed=a.seed, extra_body=extra,
        vocab_size=a.vocab_size,
    )
    spec.validate()
    return spec


def _headers(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: use NAME:VALUE, e.g. 'authorization: Bearer sk-...'")
        out.append((name.strip().lower(), value.strip()))
    return tuple(out)


def format_table(result: RunResult) -> str:
    """Human summary of a run: percentiles per metric, throughput, errors, self-check verdict."""
    s, c = result.summary, result.client_check
    rows = [("TTFT", s.ttft_ms), ("ITL", s.itl_ms), ("TPOT", s.tpot_ms), ("E2E", s.e2e_ms)]
    if s.ttft_from_schedule_ms is not None:
        rows += [(name, p) for name, p in (("TTFT from schedule", s.ttft_from_schedule_ms),
                                             ("E2E from schedule", s.e2e_from_schedule_ms)) if p is not None]

    def f(x: float) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"

    lines = [f"{'metric (ms)':<20}{'p50':>10}{'p90':>10}{'p95':>10}{'p99':>10}{'mean':>10}{'n':>8}"]
    for name, p in rows:
        lines.append(f"{name:<20}{f(p.p50):>10}{f(p.p90):>10}{f(p.p95):>10}{f(p.p99):>10}{f(p.mean):>10}{p.n:>8}")
    lines.append(f"output {s.output_tok_s:.1f} tok/s, {s.requests_s:.2f} req/s, {s.completed}/{s.requests} ok "
                 f"in {s.duration_s:.2f} s, error rate {s.error_rate:.2%}"
                 + (f" ({', '.join(f'{k} x{n}' for k, n in s.errors.items())})" if s.errors else ""))
    lag = (f"send lag p99 {c.send_lag_p99_ms:.2f} ms" if c.send_lag_p99_ms is not None
           else f"turnaround p99 {c.turnaround_p99_ms:.2f} ms")
    lines.append(f"client: loop lag p99 {c.loop_lag_p99_ms:.2f} ms, read lag p99 {c.read_lag_p99_ms:.2f} ms, {lag}, "
                 f"merged chunks {c.merged_token_frac:.2%}, kernel timestamps {'on' if c.kernel_timestamps else 'off'}")
    if result.work:
        lines.append(str(result.work.get("statement")))
    lines.append("VALID" if result.valid else "INVALID: " + "; ".join(result.invalid_reasons))
    return "\n".join(lines)


def run(a: argparse.Namespace) -> int:
    """`llmserve load` with parsed arguments: 0 valid, 1 invalid, 2 usage error or unreachable server."""
    try:
        if not (a.workload or a.trace):
            _shaped_spec(a, "")  # usage errors before any request
        headers = _headers(a.header)
        model = a.model
        if model is None:
            models = _models(a.url, dict(headers))
            if not models:
                raise ValueError(f"{a.url}/v1/models lists no model; pass --model NAME")
            model = models[0]
        spec, notes = _shaped_spec(a, model)
        from ..servers.capabilities import parse_override_args
        from ..servers.capability_probe import probe_url

        caps = probe_url(a.url.rstrip("/").removesuffix("/v1"), model, overrides=parse_override_args(a.capability),
                         headers=dict(headers))
        explicit = {"endpoint"} if a.endpoint else set()
        fitted = fit_load(spec, caps, explicit | ({"ignore_eos"} if a.no_ignore_eos else set()))
        options = ClientOptions(kernel_timestamps=not a.no_kernel_timestamps, uvloop=not a.no_uvloop,
                                gc_freeze=not a.no_gc_freeze, http_parser=a.http_parser, workers=a.workers,
                                headers=headers, warm_path=caps.warm_path)
        result = fitted.check(drive(a.url, model, fitted.spec, options))
    except CapabilityError as exc:
        print(f"llmserve load: {exc}", file=sys.stderr)
        return 2
    except (ValueError, ConnectionError, OSError) as exc:
        print(f"llmserve load: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # httpx errors while discovering the model
        if type(exc).__module__.startswith("httpx"):
            print(f"llmserve load: cannot list models at {a.url}/v1/models ({exc}); pass --model NAME",
                  file=sys.stderr)
            return 2
        raise
    if a.json_path:
        out = result.to_dict(include_records=a.records)
        out["model"], out["url"], out["capabilities"] = model, a.url, caps.to_dict()
        out["notes"] = notes
        if a.trace:
            from dataclasses import asdict

            from ..load.trace import lateness

            out["lateness"] = asdict(lateness(result, ClientOptions().limits.max_send_lag_p99_ms))
        Path(a.json_path).write_text(json.dumps(out, indent=2) + "\n")
    if not a.quiet:
        for note in notes:
            print(note)
        print(format_table(result))
        if a.trace:
            from ..load.trace import lateness

            print(lateness(result, ClientOptions().limits.max_send_lag_p99_ms).render())
    return 0 if result.valid else 1
