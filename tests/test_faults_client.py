"""Response faults end to end: through llm_load and assert_slo, errors are counted, shown and gated.

The client's own classification of each fault is unit-tested in tests/test_load_errors.py; here a
pytester session drives an `openai` target on the scripted truth server, each test injecting its
fault per request (`extra_body={"x_truth": {...}}`), and the JSON report and terminal output are
checked: errors counted by kind, percentiles over the successful requests only (their n says so),
the SLO table naming the errors, and `max_error_rate` failing the check.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pytest_llmserve.store.baselines import BaselineStore
from pytest_llmserve.checks.slo import BASELINE_METRICS

from pytest_llmserve.load import ClientOptions, LoadSpec, run_load
from pytest_llmserve.testing import Script, TruthServer

# fault name -> (x_truth script, error kind, failed requests of 6); fault_every=k faults every k-th request
FAULTS = {
    "http_500": ({"status": 500, "fault_every": 2}, "http_500", 3),
    "http_429": ({"status": 429, "fault_every": 2}, "http_429", 3),
    "http_503": ({"status": 503, "fault_every": 2}, "http_503", 3),
    "malformed_sse": ({"malformed_after": 1, "fault_every": 2}, "malformed_sse", 3),
    "error_event": ({"error_after": 1, "fault_every": 3}, "stream_error", 2),
    "reset": ({"reset_after": 1, "fault_every": 3}, "connection_reset", 2),
    "closed": ({"close_after": 1, "fault_every": 3}, "connection_closed", 2),
    "stall": ({"stall_after": 1, "fault_every": 3}, "timeout", 2),
}

INNER = """
import json
import pytest

FAULTS = json.loads({faults!r})


@pytest.mark.slo(max_error_rate=0.0)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault(llm_load, fault):
    llm_load(concurrency=2, requests=6, warmup=0, input_len=8, output_len=4, request_timeout_s=3.0,
             extra_body={{"x_truth": FAULTS[fault]}}).assert_slo()


@pytest.mark.slo(ttft_p95_ms=60000)
def test_errors_without_an_error_limit(llm_load):
    llm_load(concurrency=2, requests=6, warmup=0, input_len=8, output_len=4,
             extra_body={{"x_truth": {{"status": 500, "fault_every": 2}}}}).assert_slo()


def test_every_request_fails(llm_load):
    llm_load(concurrency=2, requests=4, warmup=0, input_len=8, output_len=4,
             extra_body={{"x_truth": {{"status": 503}}}}).assert_slo()
"""


@pytest.fixture(scope="module")
def truth():
    # ITL well above scheduling noise, so the client self-check stays valid on a busy 2-core machine
    with TruthServer(Script(ttft_ms=10, itl_ms=20)) as server:
        yield server


@pytest.fixture(scope="module")
def session_run(truth, tmp_path_factory):
    """One inner pytest session over every fault (pytester is function-scoped; one run keeps this cheap)."""
    root = tmp_path_factory.mktemp("faults-client")
    faults = json.dumps({name: script for name, (script, _, _) in FAULTS.items()})
    (root / "llmserve.toml").write_text(
        f'[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{truth.url}"\nmodel = "truth-model"\n')
    (root / "test_inner.py").write_text(INNER.format(faults=faults))
    # a lenient stored baseline for the test that should pass despite its errors
    store = BaselineStore(root / "baselines", "cpu-2c")
    store.record("truth", "test_inner.py::test_errors_without_an_error_limit[truth]",
                 {m: (1e-3 if m in ("output_tok_s", "requests_s") else 6e4) for m in BASELINE_METRICS})
    proc = _inner(root, "--llmserve-report-json", "report.json")
    report = json.loads((root / "report.json").read_text())
    return proc, {r["nodeid"].split("::", 1)[1]: r for r in report["results"]}, root


def _inner(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf",
                           "--llmserve-hardware", "cpu-2c", *args, "test_inner.py"],
                          cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_counted_by_kind_excluded_from_percentiles_and_fails_max_error_rate(session_run, fault):
    proc, results, _ = session_run
    _, kind, failed = FAULTS[fault]
    entry = results[f"test_fault[truth-{fault}]"]
    run = entry["result"]
    assert run["errors"] == {kind: failed}
    assert run["requests"] == 6 and run["completed"] == 6 - failed
    assert run["error_rate"] == pytest.approx(failed / 6)
    assert run["ttft_ms"]["n"] == 6 - failed  # percentiles over the successful requests, and n says so
    assert not entry["passed"]
    assert {"metric": "error_rate", "verdict": "FAIL"}.items() <= next(
        r for r in entry["rows"] if r["metric"] == "error_rate").items()
    assert f"errors: {kind}={failed} (percentiles cover successful requests only)" in entry["table"]
    assert f"test_fault[truth-{fault}]" in proc.stdout and entry["table"].splitlines()[0] in proc.stdout


def test_errors_fail_a_check_that_sets_no_error_limit(session_run):
    proc, results, _ = session_run
    entry = results["test_errors_without_an_error_limit[truth]"]
    assert not entry["passed"]  # no error limit set: the default max_error_rate is 0 ...
    assert entry["result"]["errors"] == {"http_500": 3}
    row = next(r for r in entry["rows"] if r["metric"] == "error_rate")
    assert row["verdict"] == "FAIL" and row["measured"] == pytest.approx(0.5)
    # ... and the table names the errors
    assert "errors: http_500=3 (percentiles cover successful requests only)" in entry["table"]


def test_a_run_where_every_request_fails_is_invalid_and_fails_whatever_the_limits(session_run):
    proc, results, _ = session_run
    entry = results["test_every_request_fails[truth]"]
    assert not entry["passed"]
    assert "! run invalid for SLO checks: all 4 requests failed (http_503 x4); first: " in entry["table"]
    assert "scripted HTTP 503" in entry["table"]
    assert proc.returncode == 1
    assert f"{len(FAULTS) + 2} failed" in proc.stdout


def test_update_baselines_never_records_a_run_with_failed_requests(session_run):
    _, _, root = session_run
    path = root / "baselines" / "cpu-2c" / "truth.json"
    before = path.read_bytes()
    proc = _inner(root, "--update-baselines", "-k", "http_500 or every_request or without_an_error_limit")
    assert "3 failed" in proc.stdout, proc.stdout
    # the limit-less test fails too now: its errors would have become part of the baseline
    assert "3 of 6 requests failed (http_500=3); a baseline is recorded only from a run within " \
           "max_error_rate (default 0); nothing was written" in proc.stdout
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.tmp"))


# ------------------------------------------------------------------ HTTP the client cannot parse
class _GarbageServer:
    """Answers GET /v1/models properly, then every POST with a 200 whose chunked body is not HTTP."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    if len(rest) < length:
                        break
                    data = rest[length:]
                    if head.startswith(b"GET"):
                        body = b'{"data": [{"id": "m"}]}'
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZZ not a chunk size\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_response_that_is_not_valid_http_is_a_protocol_error_and_the_run_goes_on(parser):
    server = _GarbageServer()
    try:
        result = run_load(server.url, "m", LoadSpec(concurrency=2, requests=4, warmup=0, output_len=4,
                                                    request_timeout_s=5.0),
                          options=ClientOptions(http_parser=parser))
    finally:
        server.close()
    assert result.summary.errors == {"protocol_error": 4}
    assert all("invalid HTTP from the server" in r.error_message for r in result.records)
    assert not result.valid and "all 4 requests failed (protocol_error x4)" in result.invalid_reasons[0]
