"""A reaper per server: stops the server's process group when pytest dies without stopping it.

Why: a server runs in its own session (so a terminal's Ctrl-C reaches pytest, which then stops it
in order), which also means nothing stops it when pytest is SIGKILLed, OOM-killed, exits from a
crashed xdist worker (`os._exit`) or dies of a SIGTERM it does not handle; on a shared GPU runner
that server then holds GPU memory for every later job. So each server gets a tiny watchdog process
(its own session too, plain stdlib, `python -S`) blocked on the read end of a pipe whose
write end only pytest holds. EOF means pytest is gone: the watchdog TERMs the server's process
group, waits, then KILLs it, and notes that in the server log. A clean stop writes one byte first,
and the watchdog exits without touching anything. Pids wrap quickly on busy runners (pid_max is
often 32768), so the watchdog polls once a second and leaves as soon as the group is gone, and
before acting checks that the group's leader is still the process it was started for (same start
time in /proc): it never signals a newer process group that reused the id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_CODE = r"""
import os, select, signal, sys, time
pgid, grace, owner = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)
def started(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
leader = started(pgid)
def ours():
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    now = started(pgid)
    return now is None or now == leader  # a newer leader with our id: the id was reused, not ours
while not select.select([0], [], [], 1.0)[0]:
    if not ours():
        sys.exit(0)  # the server is gone: nothing left to guard (and its id may be reused later)
try:
    data = os.read(0, 1)
except OSError:
    data = b""
if data or not ours():
    sys.exit(0)
print(f"llmserve watchdog: pytest (pid {owner}) ended without stopping this server; "
      f"SIGTERM to process group {pgid}", flush=True)
os.killpg(pgid, signal.SIGTERM)
deadline = time.monotonic() + grace
while ours() and time.monotonic() < deadline:
    time.sleep(0.1)
if ours():
    print(f"llmserve watchdog: SIGKILL to process group {pgid} after {grace:g} s", flush=True)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


@dataclass
class Watchdog:
    """The reaper of one server's process group; `release()` on a clean stop."""

    popen: subprocess.Popen[bytes]
    fd: int | None  # pytest's end of the pipe

    @classmethod
    def start(cls, pgid: int, log_path: Path, grace_s: float) -> Watchdog:
        """Start the reaper for process group `pgid`, writing what it does to `log_path`."""
        read_end, write_end = os.pipe()  # both non-inheritable: no other child keeps the pipe open
        try:
            with log_path.open("ab") as log:
                popen = subprocess.Popen(
                    [sys.executable, "-S", "-c", _CODE, str(pgid), str(grace_s), str(os.getpid())],
                    stdin=read_end, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(popen=popen, fd=write_end)

    def release(self) -> None:
        """The server was stopped in order: tell the reaper to exit without acting, and reap it."""
        if self.fd is None:
            return
        try:
            os.write(self.fd, b"s")
        except OSError:
            pass  # the reaper is gone already
        os.close(self.fd)
        self.fd = None
        try:
            self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
