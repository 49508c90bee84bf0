"""The one load path: the fixture, sweeps, promotion runs and the CLI all run the load client through here.

    options = client_options(target, spec)                  # limits and processes from the target
    sampler = start_metrics(metrics_url)                     # out of process; None without an endpoint
    result = drive(url, model, spec, options, cpus=target.client_cpus, progress=counted)
    summary = sampler.stop() if sampler else None

What it decides, once for every caller:
- CPU: the client is pinned to the target's `client_cpus` while it runs (the affinity is restored after);
- client processes: the target's `client.workers`, else one per STREAMS_PER_WORKER streams, at most one
  per client core (`client_cpus`, else the cores left free by the server and pytest);
- self-check limits: the rest of the target's `client` table;
- server metrics: scraped by a child process (server_metrics.MetricsSampler). Nothing fetches /metrics
  from the client's process while it runs: doing so was measured to stall the client's event loop;
  progress lines count the client's own finished requests instead (`client_count`);
- which client: the one the target's backend speaks (servers/: OpenAI streaming, or Triton's);
- validity: both clients judge a run by load/result.py's `invalid_reasons`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from ..settings.config import parse_cpu_list
from ..load import CheckLimits, ClientOptions, LoadProgress, LoadSpec, RunResult, run_load
from ..report.progress import Snapshot

if TYPE_CHECKING:
    from ..settings.config import Target
    from ..evidence.server_metrics import MetricsSampler
    from ..servers.base import ServerHandle

SERVER_CORES = 2  # kept for an unpinned server: vLLM's API server and engine core each keep one busy

# One client core kept 512 streams at 10 ms ITL (51k chunks/s) valid and exact (benchmarks/fidelity);
# half that per process leaves room for faster servers.
STREAMS_PER_WORKER = 256

METRICS_INTERVAL_S = 0.5  # between /metrics scrapes (in the scraper process)


def client_options(target: Target, spec: LoadSpec | None = None, *, available: set[int] | None = None) -> ClientOptions:
    """The target's `client` table: self-check limits and client processes for this server.

    Without `client.workers`, the client uses one process per STREAMS_PER_WORKER streams, at most one
    per core of `client_cpus`, or, when none are given, per free core: the cores this process may
    run on (`available`, default its affinity) less the server's `cpus` (or SERVER_CORES when it is
    not pinned) and one for pytest itself. A 2-core box thus gets one process; a 16-core GPU runner
    several, as its 512-stream runs needed.
    """
    limits = {k: float(v) for k, v in target.client.items() if k != "workers"}
    if "workers" in target.client:
        workers = int(target.client["workers"])
    else:
        cores = len(parse_cpu_list(target.client_cpus)) if target.client_cpus else free_cores(target, available)
        streams = (spec.concurrency or 1) if spec is not None else 1
        workers = max(1, min(cores, math.ceil(streams / STREAMS_PER_WORKER)))
    return ClientOptions(limits=CheckLimits(**limits), workers=workers)


def free_cores(target: Target, available: set[int] | None = None) -> int:
    """Cores the load client may take when `client_cpus` is unset (at least 1)."""
    cores = set(os.sched_getaffinity(0) if available is None else available)
    if target.cpus:
        cores -= set(parse_cpu_list(target.cpus))
        reserved = 0
    else:
        reserved = SERVER_CORES
    return max(1, len(cores) - reserved - 1)


@contextmanager
def pinned(cpus: str | None) -> Iterator[None]:
    """This process (and the client processes it starts) on `cpus` ('0,2-3') inside; None or '': unchanged."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, parse_cpu_list(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_metrics(url: str | None, interval_s: float = METRICS_INTERVAL_S) -> MetricsSampler | None:
    """A started out-of-process sampler of the server's /metrics (None: no endpoint); `stop()` summarises."""
    if not url:
        return None
    from ..evidence.server_metrics import MetricsSampler

    return MetricsSampler(url, interval_s=interval_s).start()


def client_count(progress: LoadProgress) -> Callable[[], Snapshot | None]:
    """A Heartbeat status: the client's own count of finished requests (None with several client processes)."""
    return lambda: Snapshot(done=progress.done) if progress.live else None


def drive(url: str, model: str, spec: LoadSpec, options: ClientOptions | None = None, *, cpus: str | None = None,
          progress: LoadProgress | None = None) -> RunResult:
    """Run `spec` once against a live OpenAI-compatible server, pinned to `cpus` while it runs.

    No metrics are sampled here: callers decide the window (`start_metrics`)."""
    with pinned(cpus):
        return run_load(url, model, spec, options=options, progress=progress)


def drive_server(server: ServerHandle, spec: LoadSpec, progress: LoadProgress | None = None) -> RunResult:
    """`drive` for a server this session started or was given: its target's policy, and the client its
    backend speaks (servers.registry: the OpenAI client, or Triton's)."""
    from ..servers.registry import backend_for

    target = server.target
    options = client_options(target, spec)
    if server.capabilities is not None:
        options = dataclasses.replace(options, warm_path=server.capabilities.warm_path)
    with pinned(target.client_cpus):
        return backend_for(target.kind).run_load(server, spec, options, progress)
