"""Load-client fidelity: what each tool reports minus what the truth server logged, side by side.

    .venv/bin/python benchmarks/fidelity/run.py                     # all tools, 1/64/256/512 streams
    .venv/bin/python benchmarks/fidelity/run.py --tools ours --streams 64,256 --ablations 256
    .venv/bin/python benchmarks/fidelity/run.py --tools ours --streams 256 --saturation

The truth server (pytest_llmserve.testing.truth_server, TTFT 50 ms / ITL 10 ms by default) runs
pinned to --server-cpu, every tool to --client-cpu (taskset). Each run sends `streams` concurrent
streams of --output-len tokens, --rounds requests per stream (at least --min-requests). Truth is
the server's own log of the same requests: TTFT = first token send - request arrival (kernel
timestamp), ITL = every gap between token sends, tok/s = tokens / (last send - first arrival).
Errors are reported - truth in ms (tok/s in %). Our client also judges itself: a run it cannot
keep up with is printed INVALID with its reasons instead of numbers (--saturation shows one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tools import Reported, Run, aiperf, aiperf_exe, ours, vllm_available, vllm_bench  # noqa: E402
from truth import TrueMetrics, TruthProcess, true_metrics, wait_quiet  # noqa: E402

ABLATIONS = {
    "llmserve (all on)": (),
    "  - kernel timestamps": ("--no-kernel-timestamps",),
    "  - httptools (h11)": ("--http-parser", "h11"),
    "  - uvloop": ("--no-uvloop",),
    "  - gc freeze": ("--no-gc-freeze",),
}


def fmt(x: float, signed: bool = True, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def row(rep: Reported, truth: TrueMetrics, streams: int) -> dict:
    err = [r - t for r, t in zip(rep.ttft_ms, truth.ttft_ms)]
    return {
        "tool": rep.tool, "streams": streams, "requests": truth.n,
        "true_ttft_ms": truth.ttft_ms, "true_itl_ms": truth.itl_ms, "true_tok_s": truth.tok_s,
        "reported_ttft_ms": rep.ttft_ms, "reported_itl_ms": rep.itl_ms, "reported_tok_s": rep.tok_s,
        "ttft_err_ms": err, "itl_p99_err_ms": rep.itl_ms[2] - truth.itl_ms[2],
        "itl_p50_err_ms": rep.itl_ms[0] - truth.itl_ms[0],
        "tok_s_err_pct": 100 * (rep.tok_s - truth.tok_s) / truth.tok_s,
        "per_request_ttft_err_p99_ms": rep.per_request_err_p99(truth) if rep.per_request else None,
        "valid": rep.valid, "reasons": rep.reasons, "failed": rep.failed, "wall_s": rep.wall_s,
    }


HEADER = (f"{'tool':<24}{'streams':>8}{'true TTFT p50/p95/p99':>24}{'TTFT err p50':>13}{'p95':>9}{'p99':>9}"
          f"{'true ITL p99':>13}{'ITL p99 err':>12}{'tok/s err':>10}{'req TTFT |err| p99':>19}  verdict")


def print_row(r: dict, show_invalid: bool = False) -> None:
    t = r["true_ttft_ms"]
    verdict = "" if r["valid"] is None else ("valid" if r["valid"] else "INVALID")
    if r["failed"]:
        verdict += f" ({r['failed'][:60]})"
    e = r["ttft_err_ms"]
    if r["valid"] is False and not show_invalid:  # an invalid run is flagged, not reported
        print(f"{r['tool']:<24}{r['streams']:>8}{f'{t[0]:.1f}/{t[1]:.1f}/{t[2]:.1f}':>24}"
              f"{'(not reported: ' + '; '.join(x.split(':')[0] for x in r['reasons'])[:90] + ')':>76}  INVALID")
        return
    print(f"{r['tool']:<24}{r['streams']:>8}{f'{t[0]:.1f}/{t[1]:.1f}/{t[2]:.1f}':>24}{fmt(e[0]):>13}{fmt(e[1]):>9}"
          f"{fmt(e[2]):>9}{fmt(r['true_itl_ms'][2], False):>13}{fmt(r['itl_p99_err_ms']):>12}"
          f"{fmt(r['tok_s_err_pct'], digits=1) + '%':>10}{fmt(r['per_request_ttft_err_p99_ms'], False, 3):>19}  {verdict}")


def run_tool(name: str, fn, run: Run, server: TruthProcess, rows: list, streams: int,  # noqa: ANN001
             show_invalid: bool = False) -> None:
    server.reset()
    wait_quiet(0.5)
    try:
        rep = fn(run)
    except Exception as exc:  # noqa: BLE001 - a broken tool is a row, not a crash
        rep = Reported(name, failed=f"{type(exc).__name__}: {exc}")
    if rep.failed and math.isnan(rep.ttft_ms[0]):
        print(f"{name:<24}{streams:>8}  failed: {rep.failed.strip().splitlines()[-1][:150]}", flush=True)
        return
    truth = true_metrics(server.log(), run.requests)
    r = row(rep, truth, streams)
    if rep.per_request:  # the worst per-request TTFT errors, for the JSON
        errs = sorted(((rep_t - truth.ttft_by_id[i], i, rep_t) for i, rep_t in rep.per_request if i in truth.ttft_by_id),
                      key=lambda x: -abs(x[0]))
        r["worst_request_ttft_err_ms"] = errs[:10]
    rows.append(r)
    print_row(r, show_invalid)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tools", default="ours,vllm,aiperf", help="comma list of ours, vllm, aiperf")
    p.add_argument("--streams", default="1,64,256,512")
    p.add_argument("--rounds", type=int, default=4, help="requests per stream")
    p.add_argument("--min-requests", type=int, default=12)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--server-cpu", default="0", help="taskset cpu list for the truth server")
    p.add_argument("--client-cpu", default="1", help="taskset cpu list for the client under test")
    p.add_argument("--workers", default="1", help="comma list of our client's process counts to run (e.g. 1,2)")
    p.add_argument("--nice", type=int, default=0, help="nice value for server and clients (negative needs root)")
    p.add_argument("--ablations", default="", help="stream counts at which to run our client with each technique off")
    p.add_argument("--saturation", action="store_true", help="also run 2048 streams at 1 ms ITL (must be INVALID)")
    p.add_argument("--saturation-server-cpu", default=None,
                   help="cpu list for the saturation server (default: every cpu, the client's included)")
    p.add_argument("--saturation-server-processes", type=int, default=None,
                   help="truth server processes for the saturation run (default: one per cpu of its list)")
    p.add_argument("--json", help="write all rows here")
    a = p.parse_args(argv)
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    streams = [int(s) for s in a.streams.split(",") if s.strip()]
    ablate = {int(s) for s in a.ablations.split(",") if s.strip()}
    workers = [int(w) for w in a.workers.split(",") if w.strip()]
    client_cpus = a.client_cpu.split(",")
    if max(workers) > len(client_cpus):
        p.error(f"--workers {max(workers)} needs that many cpus in --client-cpu (got {a.client_cpu})")
    print(f"# fidelity: truth server TTFT {a.ttft_ms:g} ms / ITL {a.itl_ms:g} ms, {a.input_len} in / {a.output_len} out "
          f"tokens, server on cpu {a.server_cpu}, client on cpu {a.client_cpu}, nice {a.nice}; "
          f"{platform.node()} {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.1f}")
    print("# errors are reported - truth (ms); tok/s error in %; 'req TTFT |err| p99' matches each request to the "
          "truth log by response id (ours only)")
    available = {"ours": True, "vllm": vllm_available(), "aiperf": aiperf_exe() is not None}
    for t in tools:
        if not available.get(t, False):
            print(f"# {t}: not installed here, skipped")
    rows: list[dict] = []
    server = TruthProcess(a.server_cpu, a.ttft_ms, a.itl_ms, a.nice)
    try:
        print(HEADER)
        for c in streams:
            run = Run(server.url, c, max(a.min_requests, a.rounds * c), a.input_len, a.output_len, client_cpus[0], a.nice)
            if "ours" in tools:
                variants = dict(ABLATIONS) if c in ablate else {"llmserve": ()}
                for w in workers[1:]:
                    variants[f"llmserve x{w} processes"] = ("--workers", str(w))
                for name, flags in variants.items():
                    # one client cpu per client process (the first of --client-cpu for single-process tools)
                    w = int(flags[1]) if flags[:1] == ("--workers",) else 1
                    r_ = dataclasses.replace(run, cpu=",".join(client_cpus[:w]))
                    run_tool(name, lambda r, f=flags, n=name: ours(r, f, n.strip()), r_, server, rows, c,
                             show_invalid=name.startswith("  -"))  # ablations show their (invalid) numbers
            if "vllm" in tools and available["vllm"]:
                run_tool("vllm bench serve", vllm_bench, run, server, rows, c)
            if "aiperf" in tools and available["aiperf"]:
                run_tool("AIPerf", aiperf, run, server, rows, c)
    finally:
        server.stop()
    if a.saturation:
        # One server process on its own core cannot outpace the client (it is the bottleneck: its chunks come
        # in bursts and the client, on time, reports them right). To saturate the client, the server runs on
        # every core, the client's included, one process per core.
        sat_cpus = a.saturation_server_cpu or ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        sat_procs = a.saturation_server_processes or len(sat_cpus.split(","))
        print(f"# saturation: 2048 streams at 1 ms ITL, 64 tokens, {sat_procs} server process(es) on cpus {sat_cpus} "
              f"(sharing the client's cpu {client_cpus[0]}); the client must flag itself INVALID")
        sat = TruthProcess(sat_cpus, a.ttft_ms, 1.0, a.nice, sat_procs)
        try:
            run = Run(sat.url, 2048, 2048, a.input_len, 64, client_cpus[0], a.nice)
            run_tool("llmserve (saturated)", lambda r: ours(r, (), "llmserve (saturated)"), run, sat, rows, 2048)
            if rows and rows[-1]["streams"] == 2048:
                r = rows[-1]
                print(f"#   verdict: {'INVALID' if r['valid'] is False else 'valid'}; reasons: {r['reasons']}")
                e = r["ttft_err_ms"]
                print(f"#   what it would have reported: TTFT err p50/p95/p99 {fmt(e[0])}/{fmt(e[1])}/{fmt(e[2])} ms, "
                      f"ITL p99 err {fmt(r['itl_p99_err_ms'])} ms")
        finally:
            sat.stop()
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "time": time.time(), "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
