"""Progress lines during long runs, written so that pytest (captured output, -q, xdist) still shows them.

    emit = pytest_emitter(config)                  # or print_emitter() outside pytest
    counted = LoadProgress()
    with Heartbeat(emit, "tiny-vllm c=16", total=256, interval_s=10,
                   status=lambda: Snapshot(done=counted.done)):
        run_load(..., progress=counted)
    # -> "llmserve: tiny-vllm c=16 120/256 requests, 12.3 s, ~14 s left"

Why a thread: the load client takes no callbacks on its hot path; it only counts finished requests
(`LoadProgress`, in-process clients), and a heartbeat thread reads that count (a `status` callable,
drive.client_count) every interval. Nothing polls the server's /metrics from the client's process: that
stalls the client (server_metrics.MetricsSampler). With a total and a count, the line estimates the
time left at the pace so far.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

Emit = Callable[[str], None]
_EMIT_LOCK = threading.Lock()  # the heartbeat thread and the main thread may both write


@dataclass(frozen=True, slots=True)
class Snapshot:
    """How far a run is: requests done (None: unknown), errors among them (None: unknown)."""

    done: int | None = None
    errors: int | None = None


def format_progress(label: str, elapsed_s: float, total: int | None = None, snap: Snapshot = Snapshot(),
                    source: str = "") -> str:
    """One line: 'llmserve: LABEL 120/256 requests, 3 errors, 12.3 s, ~14 s left'.

    The estimate assumes the rest goes at the pace so far; it is shown once a request is done."""
    parts = [f"llmserve: {label}"]
    if snap.done is not None:
        parts.append(f"{snap.done}/{total} requests" if total else f"{snap.done} requests")
        if source:
            parts[-1] += f" ({source})"
    elif total:
        parts.append(f"running {total} requests")
    line = " ".join(parts)
    if snap.errors is not None:
        line += f", {snap.errors} error{'s' if snap.errors != 1 else ''}"
    line += f", {elapsed_s:.1f} s"
    if total and snap.done and snap.done < total and elapsed_s > 0:
        line += f", ~{_duration((total - snap.done) * elapsed_s / snap.done)} left"
    return line


def _duration(seconds: float) -> str:
    """'8 s', '2 min 5 s', '1 h 3 min': rounded for a human."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def print_emitter(stream: Any = None) -> Emit:
    """Write lines to a stream (default stderr, so stdout stays clean for tables and JSON)."""

    def emit(msg: str) -> None:
        out = stream or sys.stderr
        with _EMIT_LOCK:
            out.write(msg + "\n")
            out.flush()

    return emit


def pytest_emitter(config: Any) -> Emit:
    """Lines through pytest's terminal reporter, with output capture suspended while writing.

    Without the suspension a line written during a test is captured and never shown. Under xdist a
    worker has no terminal reporter; its stderr is the controller's terminal, so the line goes there
    with the worker id in front. The reporter is looked up at each call: it does not exist yet when
    plugins' pytest_configure run (a reporter captured then is None).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")

    def emit(msg: str) -> None:
        pm = config.pluginmanager
        capman, reporter = pm.get_plugin("capturemanager"), pm.get_plugin("terminalreporter")
        suspended = capman.global_and_fixture_disabled() if capman is not None else nullcontext()
        with _EMIT_LOCK, suspended:
            if reporter is not None and worker is None:
                reporter.ensure_newline()
                reporter.write_line(msg)
            else:
                sys.stderr.write(f"[{worker}] {msg}\n" if worker else msg + "\n")
                sys.stderr.flush()

    return emit


def default_interval() -> float:
    """Seconds between progress lines: $LLMSERVE_PROGRESS_INTERVAL, else 10 (0 turns them off)."""
    raw = os.environ.get("LLMSERVE_PROGRESS_INTERVAL", "")
    try:
        return float(raw) if raw.strip() else 10.0
    except ValueError:
        raise ValueError(f"LLMSERVE_PROGRESS_INTERVAL={raw!r}: give seconds between progress lines, e.g. 10 "
                         "(0 turns them off)") from None


class Heartbeat:
    """Context manager: one progress line every `interval_s` while the body runs, and a final one."""

    def __init__(self, emit: Emit | None, label: str, *, total: int | None = None, interval_s: float | None = None,
                 status: Callable[[], Snapshot | None] | None = None, source: str = "") -> None:
        interval_s = default_interval() if interval_s is None else interval_s
        if interval_s < 0:
            raise ValueError(f"interval_s={interval_s!r} must be >= 0 seconds (0: no progress lines)")
        emit = emit if interval_s > 0 else None
        self.emit, self.label, self.total, self.interval_s = emit, label, total, interval_s
        self.status, self.source = status, source
        self._snap = Snapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.lines = 0

    def update(self, done: int, errors: int | None = None) -> None:
        """Callback form: the load client (or a caller) says how far it is."""
        self._snap = Snapshot(done, errors)
        self.status = None

    def line(self) -> str:
        snap = self._snap
        if self.status is not None:
            try:
                snap = self.status() or snap
            except Exception:  # noqa: BLE001 - progress must never break a measurement
                snap = Snapshot()
        return format_progress(self.label, time.monotonic() - self._t0, self.total, snap,
                               self.source if self.status is not None else "")

    def __enter__(self) -> Heartbeat:
        self._t0 = time.monotonic()
        if self.emit is not None:
            self._thread = threading.Thread(target=self._run, name="llmserve-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            assert self.emit is not None
            self.emit(self.line())
            self.lines += 1
