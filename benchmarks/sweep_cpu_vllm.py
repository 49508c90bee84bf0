"""Concurrency sweep of the CPU vLLM serving fixtures/tiny-llama: tables, crossovers and a PNG.

  # start one CPU vLLM per --start (NAME or NAME:VAR=VALUE,...: extra server environment), sweep, stop:
  python benchmarks/sweep_cpu_vllm.py --start one-core --concurrency 1,2,4,8,16,32 --out docs/sweep/one
  python benchmarks/sweep_cpu_vllm.py --start one-core --start two-cores:VLLM_CPU_OMP_THREADS_BIND=0-1 \
      --repeats 2 --out docs/sweep/threads
  # or sweep servers that already run:
  python benchmarks/sweep_cpu_vllm.py --url tiny=http://127.0.0.1:8301 --out /tmp/sweep

Everything after the options below is `llmserve sweep`'s (--requests-per-level, --output-len, ...).
Prints the Markdown table; writes sweep.json, sweep.md, sweep.png to --out. Timings on a shared
2-core machine are noisy and the load client shares the cores with the server: read the notes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_llmserve.cli import sweep  # noqa: E402
from pytest_llmserve.settings.config import Target  # noqa: E402
from pytest_llmserve.hardware import inventory_from_env_or_option  # noqa: E402
from pytest_llmserve.servers.lifecycle import ServerPool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "tiny-llama"


def cpu_vllm(spec: str) -> Target:
    """NAME or NAME:VAR=VALUE,VAR=VALUE -> a CPU vLLM target for the tiny model with that extra environment."""
    name, _, env_text = spec.partition(":")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    for item in filter(None, env_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--start {spec!r}: environment items are VAR=VALUE")
        env[key] = value
    return Target(name=name, kind="vllm", model=str(MODEL), served_model_name="tiny", dtype="bfloat16",
                  args=("--max-model-len", "1024"), env=env, startup_timeout_s=600)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", action="append", default=[], metavar="NAME[:VAR=VALUE,...]")
    p.add_argument("--url", action="append", default=[], metavar="NAME=URL")
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--requests-per-level", default="128")
    p.add_argument("--out", default="docs/sweep/cpu-vllm")
    a, rest = p.parse_known_args()
    if not a.start and not a.url:
        p.error("give --start NAME (start a CPU vLLM) or --url NAME=URL")
    label = inventory_from_env_or_option(None).label
    pool = ServerPool(log_dir=Path(tempfile.mkdtemp(prefix="sweep-logs-")), progress=lambda m: print(m, file=sys.stderr))
    try:
        urls = list(a.url)
        for spec in a.start:
            t0 = time.perf_counter()
            handle = pool.get(cpu_vllm(spec))
            print(f"started {handle.target.name} at {handle.base_url} in {time.perf_counter() - t0:.0f} s "
                  f"(log {handle.log_path})", file=sys.stderr)
            urls.append(f"{handle.target.name}={handle.base_url}")
        argv = [x for u in urls for x in ("--url", u)] + ["--concurrency", a.concurrency, "--requests-per-level",
                                                         a.requests_per_level, "--out", a.out, "--hardware", label]
        return sweep.main(argv + rest)
    finally:
        left = pool.stop_all()
        if left:
            print(f"WARNING: server processes left running: {left}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
