"""Entry points: `run_load` (sync, from pytest or a CLI) and `run_load_async` (on the caller's loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import struct
import subprocess
import sys
import time
from typing import IO, Any, NoReturn

from .client import LoadProgress, Shard, ShardRunner
from .result import RunResult, build_result
from .spec import ClientOptions, LoadSpec


async def run_load_async(base_url: str, model: str, spec: LoadSpec, *,
                         options: ClientOptions | None = None, progress: LoadProgress | None = None) -> RunResult:
    """Run `spec` against `base_url` on the running event loop (one process; `options.workers` ignored)."""
    options = options or ClientOptions()
    spec.validate()
    _raise_fd_limit(_connections_needed(spec))
    shard = await ShardRunner(base_url, model, spec, options, progress=progress).run()
    return build_result(spec, [shard], options)


def run_load(base_url: str, model: str, spec: LoadSpec, *, options: ClientOptions | None = None,
             progress: LoadProgress | None = None) -> RunResult:
    """Run `spec` to completion and return its RunResult; safe to call where no event loop runs or one does.

    `progress` counts finished requests while it runs (in-process clients only; with several client
    processes it stays not `live`)."""
    options = options or ClientOptions()
    spec.validate()
    workers = _effective_workers(spec, options.workers)
    if workers > 1:
        return _run_processes(base_url, model, spec, options, workers)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(base_url, model, spec, options, progress)
    # called from inside a running loop (e.g. an async test): run on a fresh loop in a worker thread
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llmserve-load") as ex:
        return ex.submit(_run_here, base_url, model, spec, options, progress).result()


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """uvloop when asked for and installed (fewer microseconds per read callback), else asyncio's."""
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _run_here(base_url: str, model: str, spec: LoadSpec, options: ClientOptions,
              progress: LoadProgress | None = None) -> RunResult:
    loop = new_event_loop(options.uvloop)
    try:
        return loop.run_until_complete(run_load_async(base_url, model, spec, options=options, progress=progress))
    finally:
        loop.close()


def _effective_workers(spec: LoadSpec, workers: int) -> int:
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    if spec.rate is None and spec.concurrency is not None:
        workers = min(workers, spec.concurrency)
    if spec.requests is not None:
        workers = min(workers, spec.requests)
    return workers


def _connections_needed(spec: LoadSpec) -> int:
    if spec.concurrency is not None:
        return spec.concurrency
    return 1024 if spec.rate is not None else 1


def _raise_fd_limit(needed: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


# ---------------------------------------------------------------------------- several processes
# Workers are fresh interpreters (`python -m pytest_llmserve.load.worker`) talking over pipes, not
# multiprocessing: that would re-import the caller's __main__ (spawn) or fork a process that may hold
# threads. Protocol on the worker's stdout: b"R" when warmed up (then it reads the common start time,
# 8 bytes, from stdin), then b"D" + 8-byte length + pickle(("ok", Shard) | ("error", traceback)).
LEN = struct.Struct("<q")


def _run_processes(base_url: str, model: str, spec: LoadSpec, options: ClientOptions, workers: int) -> RunResult:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = [subprocess.Popen([sys.executable, "-m", "pytest_llmserve.load.worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env) for _ in range(workers)]
    try:
        for i, proc in enumerate(procs):
            stdin = _pipe(proc.stdin)
            stdin.write(pickle.dumps((base_url, model, spec, options, i, workers)))
            stdin.flush()
        for i, proc in enumerate(procs):  # everyone warmed up (or one failed: its report says why)
            tag = _pipe(proc.stdout).read(1)
            if tag != b"R":
                _raise_worker_failure(i, workers, proc, tag)
        start = LEN.pack(time.time_ns() + 50_000_000)  # a common start slightly in the future
        for proc in procs:
            stdin = _pipe(proc.stdin)
            stdin.write(start)
            stdin.flush()
        shards: list[Shard] = []
        for i, proc in enumerate(procs):
            tag = _pipe(proc.stdout).read(1)
            payload: Any
            status, payload = _read_report(proc) if tag == b"D" else ("error", None)
            if status != "ok":
                _raise_worker_failure(i, workers, proc, tag, payload)
            shards.append(payload)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return build_result(spec, shards, options)


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    assert stream is not None  # the workers' stdin and stdout are pipes (subprocess.PIPE)
    return stream


def _read_report(proc: subprocess.Popen[bytes]) -> tuple[str, Any]:
    stdout = _pipe(proc.stdout)
    (n,) = LEN.unpack(stdout.read(LEN.size))
    return pickle.loads(stdout.read(n))


def _raise_worker_failure(i: int, workers: int, proc: subprocess.Popen[bytes], tag: bytes,
                          detail: Any = None) -> NoReturn:
    if tag == b"D" and detail is None:
        _, detail = _read_report(proc)
    if detail is None:
        detail = f"exited with status {proc.wait()} without a report (see its stderr above)"
    raise RuntimeError(f"load worker {i} of {workers} failed:\n{detail}")
