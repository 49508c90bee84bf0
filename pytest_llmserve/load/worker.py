"""A client worker process for `run_load(..., options=ClientOptions(workers=N))`; see runner.py for the protocol."""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any

from .client import ShardRunner
from .runner import LEN, _connections_needed, _raise_fd_limit, new_event_loop


def _worker_main() -> None:
    """A worker process: run one shard, meet the others at the start, report the Shard."""
    report = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, not into the report stream
    stdin = sys.stdin.buffer
    base_url, model, spec, options, shard, shards = pickle.load(stdin)

    def start_barrier() -> int:
        report.write(b"R")
        report.flush()
        return LEN.unpack(stdin.read(LEN.size))[0]

    try:
        _raise_fd_limit(_connections_needed(spec) // shards + 1)
        loop = new_event_loop(options.uvloop)
        try:
            out: Any = ("ok", loop.run_until_complete(
                ShardRunner(base_url, model, spec, options, shard, shards).run(start_barrier)))
        finally:
            loop.close()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        out = ("error", traceback.format_exc())
    data = pickle.dumps(out)
    report.write(b"D" + LEN.pack(len(data)) + data)
    report.flush()


if __name__ == "__main__":
    _worker_main()
