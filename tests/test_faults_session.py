"""Session faults: Ctrl-C during a load run or a start-up, pytest SIGKILLed, an xdist worker crash,
a server dying between tests. Each runs a real pytest subprocess against stand-in servers (a
vLLM-shaped command line serving the truth server, with an "engine" child: see
test_faults_server.py) and then scans the process table for anything of their trees.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from test_faults_server import ROOT, STANDIN, left_behind

WATCHDOG_LINE = "llmserve watchdog: pytest (pid "


def _toml(root: Path, *targets: tuple[str, str], mode: str = "serve") -> str:
    """Stand-in targets as llmserve.toml: (name, tag) pairs; each writes root/started-<name> when launched."""
    out = []
    for name, tag in targets:
        out.append(f"""
[[targets]]
name = "{name}"
kind = "vllm"
model = {json.dumps(str(ROOT))}
launcher = {json.dumps([sys.executable, "-c", STANDIN])}
args = ["--tag", "{tag}", "--mode", "{mode}", "--started-file", {json.dumps(str(root / f"started-{name}"))}]
startup_timeout_s = 600
""")
    return "".join(out)


def _tag() -> str:
    return f"llmserve-fault-{uuid.uuid4().hex[:12]}"


def _spawn_pytest(root: Path, *args: str) -> subprocess.Popen[str]:
    out = (root / "pytest-output.txt").open("w")
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--llmserve-hardware", "cpu-2c", "--llmserve-log-dir", "logs", *args],
                            cwd=root, stdout=out, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            output = (path.parent / "pytest-output.txt").read_text()
            proc.kill()
            pytest.fail(f"{path.name} never appeared (pytest exit {proc.poll()}):\n{output}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[str], root: Path, timeout_s: float = 240) -> str:
    """Wait for pytest to end (a hang fails the test, after killing it); return its output.

    Called right after the signal, so the limit runs from it. It only separates "ended" from "hung": the
    interrupted runs would take far longer (LONG_LOAD: about 25 minutes), and a loaded 2-core CI machine
    can take tens of seconds to stop a server tree, so the limit is generous, not a speed assertion."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"pytest did not end within {timeout_s} s:\n{(root / 'pytest-output.txt').read_text()}")
    return (root / "pytest-output.txt").read_text()


def _server_logs(root: Path, name: str) -> str:
    return "".join(p.read_text() for p in sorted((root / "logs").glob(f"{name}-*.log")))


# ------------------------------------------------------------------ Ctrl-C
LONG_LOAD = """
from pathlib import Path

def test_long_load(llm_load):
    Path("loading").touch()
    llm_load(concurrency=2, requests=100000, warmup=0, input_len=8, output_len=16).assert_slo()
"""


def test_sigint_during_a_load_run_ends_promptly_stops_the_server_and_writes_no_baseline(tmp_path):
    tag = _tag()
    (tmp_path / "llmserve.toml").write_text(_toml(tmp_path, ("alpha", tag)))
    (tmp_path / "test_long.py").write_text(LONG_LOAD)
    baseline = tmp_path / "baselines" / "cpu-2c" / "alpha.json"
    baseline.parent.mkdir(parents=True)
    baseline.write_text('{"entries": {"test_long.py::test_long_load[alpha]": {"ttft_p95_ms": 1.0}}}\n')
    before = baseline.read_bytes()
    proc = _spawn_pytest(tmp_path, "--update-baselines")
    _wait_for(tmp_path / "loading", proc)
    time.sleep(1.5)  # well inside the ~25-minute run
    proc.send_signal(signal.SIGINT)
    out = _finish(proc, tmp_path)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert left_behind(tag, wait_s=5) == []
    assert WATCHDOG_LINE not in _server_logs(tmp_path, "alpha")  # pytest stopped it in order
    assert baseline.read_bytes() == before
    assert sorted(p.name for p in baseline.parent.iterdir()) == ["alpha.json"]  # no temp or new file


def test_sigint_while_a_server_is_starting_stops_that_server(tmp_path):
    tag = _tag()
    (tmp_path / "llmserve.toml").write_text(_toml(tmp_path, ("slow", tag), mode="hang"))
    (tmp_path / "test_start.py").write_text("def test_needs_server(llm_server):\n    pass\n")
    proc = _spawn_pytest(tmp_path)
    _wait_for(tmp_path / "started-slow", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = _finish(proc, tmp_path)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert left_behind(tag, wait_s=5) == []
    assert WATCHDOG_LINE not in _server_logs(tmp_path, "slow")  # stopped by pytest, not by the reaper


# ------------------------------------------------------------------ pytest itself dies
HOLD = """
import time
from pathlib import Path

def test_hold(llm_server):
    Path("ready").touch()
    time.sleep(600)
"""


def test_pytest_killed_with_sigkill_leaves_no_server_behind(tmp_path):
    tag = _tag()
    (tmp_path / "llmserve.toml").write_text(_toml(tmp_path, ("alpha", tag)))
    (tmp_path / "test_hold.py").write_text(HOLD)
    proc = _spawn_pytest(tmp_path)
    _wait_for(tmp_path / "ready", proc)
    assert len(left_behind(tag, wait_s=0)) == 2  # the server and its engine child run
    proc.kill()  # SIGKILL: no teardown, no sessionfinish, no atexit
    proc.wait()
    assert left_behind(tag) == []
    log = _server_logs(tmp_path, "alpha")
    assert f"{WATCHDOG_LINE}{proc.pid}) ended without stopping this server; SIGTERM to process group" in log


CRASH = """
import os, time
from pathlib import Path

def test_a_crashes(llm_servers):
    llm_servers("alpha")
    os._exit(1)

def test_b_serves(llm_servers):
    llm_servers("beta")
    time.sleep(2)
"""


def test_xdist_worker_crash_leaves_no_server_and_the_controller_still_reports(tmp_path):
    pytest.importorskip("xdist")
    alpha, beta = _tag(), _tag()
    (tmp_path / "llmserve.toml").write_text(_toml(tmp_path, ("alpha", alpha), ("beta", beta)))
    (tmp_path / "test_crash.py").write_text(CRASH)
    proc = _spawn_pytest(tmp_path, "-n", "2", "--llmserve-report-json", "report.json")
    out = _finish(proc, tmp_path, timeout_s=300)
    assert "worker 'gw" in out and "crashed while running 'test_crash.py::test_a_crashes'" in out, out
    assert "1 failed, 1 passed" in out
    assert left_behind(alpha) == [] and left_behind(beta) == []
    assert WATCHDOG_LINE in _server_logs(tmp_path, "alpha")  # the crashed worker's server: reaped
    assert WATCHDOG_LINE not in _server_logs(tmp_path, "beta")  # the other worker's: stopped in order
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["leftover_processes"] == {}


# ------------------------------------------------------------------ a server dies between tests
DIES = """
import os, signal, time

def test_1_kills_its_server(llm_server):
    os.kill(llm_server.process.pid, signal.SIGKILL)
    while llm_server.alive():
        time.sleep(0.05)

def test_2_needs_the_server(llm_server):
    pass
"""


def test_a_server_that_died_fails_the_next_test_with_its_exit_and_log_tail(tmp_path):
    tag = _tag()
    (tmp_path / "llmserve.toml").write_text(_toml(tmp_path, ("alpha", tag)))
    (tmp_path / "test_dies.py").write_text(DIES)
    out = _finish(_spawn_pytest(tmp_path), tmp_path)
    assert "1 passed, 1 error" in out, out  # test 2 errors in llm_server's setup
    assert "server for target 'alpha' died during the session (killed by signal 9); log " in out
    assert "  | stand-in serving 'alpha' on port" in out
    assert left_behind(tag) == []  # its orphaned engine child went with the session's teardown
