"""`llmserve load`: JSON output, model discovery, exit codes, `python -m` entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmserve.cli import main
from pytest_llmserve.testing.truth_script import Script
from pytest_llmserve.testing.truth_server import TruthServer

REQUIRED = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")


def test_load_writes_json_with_percentiles_throughput_errors_and_verdict(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run.json"
    with TruthServer(Script(ttft_ms=3, itl_ms=1, model="served-name")) as srv:
        code = main(["load", "--url", srv.url, "--concurrency", "2", "--requests", "4", "--output-len", "3",
                     "--prompt-len", "9", "--json", str(out), "--records"])
        truth = srv.truth()
    d = json.loads(out.read_text())
    for key in REQUIRED:
        assert {"p50", "p90", "p95", "p99"} <= set(d[key]) and d[key]["n"] > 0
    assert d["requests"] == 4 and d["completed"] == 4 and d["errors"] == {}
    assert d["output_tok_s"] > 0 and "valid" in d and "client_check" in d
    assert d["model"] == "served-name"  # discovered from GET /v1/models
    load = [t for t in truth if t["max_tokens"] != 1]  # the capability probe's requests ask for one token
    assert all(t["max_tokens"] == 3 for t in load) and len(load) == len(d["records"]) == 6  # 2 warm-up + 4
    assert code == (0 if d["valid"] else 1)
    table = capsys.readouterr().out
    assert "TTFT" in table and ("VALID" in table)


def test_invalid_run_exits_1_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run.json"
    with TruthServer(Script(ttft_ms=1, itl_ms=1, tokens=2)) as srv:
        code = main(["load", "--url", srv.url, "--model", "truth-model", "--requests", "2", "--output-len", "5",
                     "--json", str(out)])
    assert code == 1
    assert json.loads(out.read_text())["token_mismatches"] == 2
    assert "INVALID" in capsys.readouterr().out


def test_open_loop_flags_and_chat_endpoint(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        main(["load", "--url", srv.url, "--model", "truth-model", "--rate", "100", "--arrival", "constant", "--requests", "5",
              "--output-len", "2", "--endpoint", "chat", "--warmup", "0", "--json", str(out), "--quiet",
              "--extra-body", '{"temperature": 0}', "--header", "x-test: 1"])
        truth = srv.truth()
    d = json.loads(out.read_text())
    assert d["spec"]["rate"] == 100 and d["spec"]["endpoint"] == "chat"
    assert d["ttft_from_schedule_ms"]["n"] == 5
    assert all(t["path"] == "/v1/chat/completions" for t in truth if t["max_tokens"] != 1)  # (1: the probe's)


@pytest.mark.parametrize(("args", "message"), [
    (["--requests", "3", "--duration", "2"], "not both"),
    (["--concurrency", "0"], "concurrency=0"),
    (["--extra-body", "[1]"], "JSON object"),
    (["--header", "nocolon"], "NAME:VALUE"),
])
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["load", "--url", "http://127.0.0.1:9", "--model", "truth-model", "--output-len", "2", *args])
    assert code == 2 and message in capsys.readouterr().err


def test_unreachable_server_exits_2(capsys: pytest.CaptureFixture) -> None:
    code = main(["load", "--url", "http://127.0.0.1:9", "--output-len", "2"])
    assert code == 2 and "pass --model" in capsys.readouterr().err


def test_python_dash_m_entry_point_runs(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        proc = subprocess.run([sys.executable, "-m", "pytest_llmserve.cli", "load", "--url", srv.url,
                               "--requests", "2", "--output-len", "2", "--json", str(out), "--quiet"],
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(out.read_text())["completed"] == 2
