"""Spawn a server in its own process group with a log file, and tear the whole tree down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .watchdog import Watchdog

TERM_GRACE_S = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now; callers must still detect a collision and retry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def read_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        data = fh.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A child started with start_new_session=True, so its pid is also its process-group id."""

    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    known_tree: set[int] = field(default_factory=set)
    watchdog: Watchdog | None = None  # stops the group if pytest dies first

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> ManagedProcess:
        """Start `argv` with stdout and stderr appended to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        try:
            watchdog = Watchdog.start(popen.pid, log_path, TERM_GRACE_S)
        except BaseException:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
        return cls(argv=argv, log_path=log_path, popen=popen, known_tree={popen.pid}, watchdog=watchdog)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def returncode(self) -> int | None:
        """None while running, else the exit status (negative: killed by that signal)."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_tree(self) -> None:
        """Record current descendants so teardown finds them even if they leave the group."""
        try:
            self.known_tree |= {c.pid for c in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def terminate_tree(self, grace_s: float = TERM_GRACE_S) -> list[int]:
        """TERM the group, wait, KILL what is left; return pids still alive afterwards (should be [])."""
        self.remember_tree()
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._survivors():
            time.sleep(0.1)
        if self._survivors():
            self._signal_group(signal.SIGKILL)
            for pid in self._survivors():
                _kill(pid)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self._survivors():
                time.sleep(0.05)
        try:
            self.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        survivors = self._survivors()
        if not survivors and self.watchdog is not None:
            self.watchdog.release()  # stopped in order: the reaper exits without acting
        return survivors

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _survivors(self) -> list[int]:
        """Pids of the tree (recorded or still in the group) that are alive and not zombies."""
        pids = set(self.known_tree)
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == self.pid:
                    pids.add(proc.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        alive = []
        for pid in sorted(pids):
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and _started_after_us(proc):
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        self.popen.poll()  # reap our direct child so it does not linger as a zombie
        return alive


def _started_after_us(proc: psutil.Process) -> bool:
    """Guard against pid reuse: a recorded pid counts only if it started after our child."""
    try:
        return proc.create_time() >= psutil.Process(os.getpid()).create_time()
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
