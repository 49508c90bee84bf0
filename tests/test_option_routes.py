"""Every llmserve option takes effect from each of its three routes (flag, LLMSERVE_* env, ini key), with
CLI > env > ini; and what such a run shows: the report header, start-up progress, one log tail per failure.

One project serves all cases: a default llmserve.toml with a decoy target, and configs/<route>.toml per
route with an external target (`fast-<route>`, a truth server in this process), a managed one
(`managed-<route>`, a vLLM-shaped stand-in launcher serving a truth server) and one never selected.
Each route's values differ, so every effect names the route that won.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.settings.pytest_options import OPTIONS, OptionSpec, convert
from pytest_llmserve.testing import Script, TruthServer

ROUTES = ("cli", "env", "ini")  # precedence order
REQUESTS = {"cli": 5, "env": 4, "ini": 2}  # the test itself asks for 3


def route_values(route: str) -> dict[str, object]:
    """The value each option gets on `route`, by flag."""
    return {
        "--llmserve-target": [f"fast-{route}", f"managed-{route}"],
        "--llmserve-config": f"configs/{route}.toml",
        "--llmserve-baselines-dir": f"base-{route}",
        "--llmserve-hardware": f"rig-{route}",
        "--llmserve-log-dir": f"logs-{route}",
        "--llmserve-requests": REQUESTS[route],
        "--llmserve-report-json": f"out/{route}.json",
        "--llmserve-report-md": f"out/{route}.md",
        "--update-baselines": True,
    }


COVERED_ELSEWHERE: dict[str, str] = {  # flag -> the test that proves it takes effect from each route
    "--llmserve-repeats": "tests/test_baseline_plugin.py::test_repeats_option_sets_the_rounds_recorded",
    "--llmserve-retries": "tests/test_baseline_plugin.py::test_retries_option_sets_how_often_an_invalid_round_is_measured_again",
    "--llmserve-add-start": "tests/test_baseline_plugin.py::test_add_start_option_adds_a_runs_rounds_as_the_next_server_start",
}

STANDIN = r"""
import argparse, sys
p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--served-model-name", default="standin")
p.add_argument("--mode", default="serve")
a, _ = p.parse_known_args()
print(f"stand-in starting on port {a.port} (mode {a.mode})", flush=True)
if a.mode == "exit":
    print("FATAL: stand-in refuses to start (scripted start-up failure)", flush=True)
    sys.exit(3)
from pytest_llmserve.testing import Script, TruthServer
print(f"stand-in serving {a.served_model_name!r}", flush=True)
TruthServer(Script(ttft_ms=10, itl_ms=20, model=a.served_model_name), port=a.port).serve_forever()
"""

LOAD_TEST = """
def test_load(llm_load):
    llm_load(concurrency=1, requests=3, warmup=0, input_len=4, output_len=2).assert_slo()
"""


def _managed(name: str, launcher: Path, *args: str) -> str:
    argv = json.dumps([sys.executable, str(launcher)])
    return (f'[[targets]]\nname = "{name}"\nkind = "vllm"\nmodel = "."\nlauncher = {argv}\n'
            f'args = {json.dumps(list(args))}\nstartup_timeout_s = 60\n{LENIENT}\n')


# These tests are about options, not client fidelity: a busy machine must not make their runs invalid.
LENIENT = ("client = { max_merged_token_frac = 1.0, merged_lag_tolerance_ms = 1e6, max_loop_lag_p99_ms = 1e6 }\n"
           "baseline_gate = { repeats = 1 }\n")  # one recorded round: the served count is --llmserve-requests


def _external(name: str, url: str) -> str:
    return f'[[targets]]\nname = "{name}"\nkind = "openai"\nurl = "{url}"\nmodel = "truth-model"\n{LENIENT}\n'


@pytest.fixture
def truth():
    # ITL well above scheduling noise, so the client self-check stays valid on a busy machine
    with TruthServer(Script(ttft_ms=10, itl_ms=20, model="truth-model")) as server:
        yield server


@pytest.fixture
def project(pytester: pytest.Pytester, truth: TruthServer, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for spec in OPTIONS:
        monkeypatch.delenv(spec.env, raising=False)
    launcher = pytester.path / "standin.py"
    launcher.write_text(STANDIN)
    pytester.makefile(".toml", llmserve=_external("decoy", truth.url))
    (pytester.path / "configs").mkdir()
    for route in ROUTES:
        (pytester.path / "configs" / f"{route}.toml").write_text(
            _external(f"fast-{route}", truth.url) + _managed(f"managed-{route}", launcher)
            + _external(f"idle-{route}", "http://127.0.0.1:9"))  # never selected: nothing listens there
    pytester.makepyfile(test_perf=LOAD_TEST)
    return pytester


def _apply(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, routes: tuple[str, ...]) -> list[str]:
    """Set every option on each of `routes` (each with that route's values); return the CLI arguments."""
    args: list[str] = []
    ini: list[str] = []
    for route in routes:
        for spec in OPTIONS:
            if spec.flag in COVERED_ELSEWHERE:
                continue
            value = route_values(route)[spec.flag]
            if route == "cli":
                if spec.kind == "bool":
                    args.append(spec.flag)
                elif spec.kind == "list":
                    args += [part for item in value for part in (spec.flag, item)]  # repeated flag
                else:
                    args += [spec.flag, str(value)]  # space-separated, as in `--llmserve-requests 8`
            elif route == "env":
                monkeypatch.setenv(spec.env, ",".join(value) if spec.kind == "list" else
                                   "yes" if value is True else str(value))
            else:
                text = "".join(f"\n    {v}" for v in value) if spec.kind == "list" else \
                    "true" if value is True else str(value)
                ini.append(f"{spec.ini} = {text}")
    if ini:
        pytester.makeini("[pytest]\n" + "\n".join(ini) + "\n")
    return args


def _source(route: str, spec_flag: str) -> str:
    spec = next(s for s in OPTIONS if s.flag == spec_flag)
    return {"cli": spec.flag, "env": f"env {spec.env}", "ini": f"ini {spec.ini}"}[route]


def test_every_option_is_covered_by_a_route_test():
    missing = {s.flag for s in OPTIONS} - set(route_values("cli")) - set(COVERED_ELSEWHERE)
    assert not missing, f"add {sorted(missing)} to route_values() here, or to COVERED_ELSEWHERE naming its test"


@pytest.mark.parametrize("routes", [("cli",), ("env",), ("ini",), ("cli", "env", "ini"), ("env", "ini")],
                         ids="+".join)
def test_every_option_takes_effect_from_each_route_and_the_first_route_wins(project, truth, monkeypatch, routes):
    win = routes[0]
    values = route_values(win)
    args = _apply(project, monkeypatch, routes)
    served_before = len(truth.truth())
    result = project.runpytest(*args, "-p", "no:cacheprovider", "-v")  # output capture on
    out = result.stdout.str()
    result.assert_outcomes(passed=2)
    root = project.path
    fast, managed = values["--llmserve-target"]

    # --llmserve-config picked configs/<win>.toml, --llmserve-target two of its three targets
    assert f"test_perf.py::test_load[{fast}] PASSED" in out and f"test_perf.py::test_load[{managed}] PASSED" in out
    assert "[decoy]" not in out and "[idle-" not in out
    # --llmserve-report-json: every check, at the requests --llmserve-requests set (not the 3 asked)
    report = json.loads((root / values["--llmserve-report-json"]).read_text())
    assert {r["nodeid"] for r in report["results"]} == {f"test_perf.py::test_load[{t}]" for t in (fast, managed)}
    assert {r["result"]["requests"] for r in report["results"]} == {REQUESTS[win]}
    served = [t for t in truth.truth()[served_before:] if t["max_tokens"] == 2]  # not the 1-token readiness probe
    assert len(served) == REQUESTS[win]  # what the external server really served
    # --llmserve-report-md
    assert f"test_load[{fast}]" in (root / values["--llmserve-report-md"]).read_text()
    # --update-baselines + --llmserve-hardware + --llmserve-baselines-dir (relative to the config file)
    stored = root / "configs" / values["--llmserve-baselines-dir"] / values["--llmserve-hardware"]
    assert sorted(p.name for p in stored.iterdir()) == sorted(f"{t}{suffix}" for t in (fast, managed)
                                                               for suffix in (".json", ".samples.json.gz"))
    assert json.loads((stored / f"{fast}.json").read_text())["hardware"] == values["--llmserve-hardware"]
    assert report["hardware"] == values["--llmserve-hardware"] and "baselines updated (old -> new):" in out
    # --llmserve-log-dir holds the managed server's log, named in its start-up progress line
    (log,) = (root / values["--llmserve-log-dir"]).glob(f"{managed}-*.log")
    assert "stand-in serving" in log.read_text()
    assert f"llmserve: starting vllm target '{managed}' on port {log.stem.rsplit('-', 1)[1]} (log {log})" in out
    assert any(line.startswith(f"llmserve: target '{managed}' ready in ") for line in result.outlines)
    # the header: hardware label and where it came from, the targets, the flags that repeat this run
    hw = _source(win, "--llmserve-hardware")
    assert f"llmserve hardware: rig-{win} (override from {hw}; the inventory gives " in out
    targets = next(line for line in result.outlines if line.startswith("llmserve targets: "))
    assert targets.startswith(f"llmserve targets: {fast} (openai, {truth.url}), {managed} (vllm, ")
    assert targets.endswith(f"(config: {root / 'configs' / f'{win}.toml'})")
    assert (f"llmserve reproduce: pytest --llmserve-target={fast} --llmserve-target={managed} "
            f"--llmserve-config=configs/{win}.toml --llmserve-baselines-dir=base-{win} --llmserve-hardware=rig-{win} "
            f"--llmserve-log-dir=logs-{win} --llmserve-requests={REQUESTS[win]} --llmserve-report-json=out/{win}.json "
            f"--llmserve-report-md=out/{win}.md --update-baselines") in result.outlines
    # nothing went where a losing route (or the default) would have put it
    assert not (root / "baselines").exists() and not (root / "configs" / "baselines").exists()
    assert sorted(p.name for p in (root / "out").iterdir()) == [f"{win}.json", f"{win}.md"]
    assert [p.name for p in root.glob("logs-*")] == [f"logs-{win}"]


@pytest.mark.parametrize(("env", "ini", "cli", "written"), [
    ("off", "on", False, False),   # env beats ini, and a false value is honoured
    ("0", "1", True, True),        # the flag beats env
    (None, "no", False, False),
    (None, "YES", False, True),
])
def test_update_baselines_is_a_boolean_on_every_route_and_the_first_route_wins(project, monkeypatch,
                                                                               env, ini, cli, written):
    if env is not None:
        monkeypatch.setenv("LLMSERVE_UPDATE_BASELINES", env)
    project.makeini(f"[pytest]\nllmserve_update_baselines = {ini}\n")
    args = ["--update-baselines"] if cli else []
    result = project.runpytest(*args, "--llmserve-hardware", "rig", "-p", "no:cacheprovider")
    stored = project.path / "baselines" / "rig" / "decoy.json"
    if written:
        result.assert_outcomes(passed=1)
        assert stored.is_file() and "baselines updated (old -> new):" in result.stdout.str()
    else:  # comparing: no baseline stored yet
        assert not stored.exists() and "baselines updated" not in result.stdout.str()


@pytest.mark.parametrize(("route", "key", "value", "expected"), [
    ("cli", "--llmserve-requests", "eight", "*argument --llmserve-requests: 'eight' is not an integer >= 1 "
                                            "(e.g. --llmserve-requests=8)*"),
    ("cli", "--llmserve-requests", "0", "*argument --llmserve-requests: '0' is not an integer >= 1*"),
    ("env", "LLMSERVE_REQUESTS", "2.5", "ERROR: env LLMSERVE_REQUESTS='2.5' is not an integer >= 1 (e.g. 8); "
                                        "it sets --llmserve-requests"),
    ("ini", "llmserve_requests", "-1", "ERROR: ini llmserve_requests='-1' is not an integer >= 1 (e.g. 8); "
                                       "it sets --llmserve-requests"),
    ("env", "LLMSERVE_UPDATE_BASELINES", "maybe", "ERROR: env LLMSERVE_UPDATE_BASELINES='maybe' is not a boolean "
                                                  "(1/0, true/false, yes/no, on/off); it sets --update-baselines"),
    ("ini", "llmserve_update_baselines", "sometimes", "ERROR: ini llmserve_update_baselines='sometimes' is not a "
                                                      "boolean (1/0, true/false, yes/no, on/off); it sets *"),
])
def test_a_bad_value_on_any_route_stops_the_session_naming_route_value_and_type(pytester, monkeypatch, route,
                                                                               key, value, expected):
    for spec in OPTIONS:
        monkeypatch.delenv(spec.env, raising=False)
    pytester.makepyfile("def test_t():\n    pass\n")
    args: list[str] = []
    if route == "cli":
        args = [key, value]
    elif route == "env":
        monkeypatch.setenv(key, value)
    else:
        pytester.makeini(f"[pytest]\n{key} = {value}\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


INT = OptionSpec("--x", "x", "", kind="int", minimum=1)
LIST = OptionSpec("--x", "x", "", kind="list")
BOOL = OptionSpec("--x", "x", "", kind="bool")
NAME = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."), min_size=1, max_size=12)


@given(st.integers(min_value=1, max_value=10**12), st.sampled_from(["", " ", "\t"]))
def test_an_integer_option_reads_any_integer_text_at_or_above_its_minimum(n, pad):
    assert convert(INT, f"{pad}{n}{pad}") == n
    with pytest.raises(ValueError):
        convert(INT, str(1 - n))  # below the minimum


@given(st.lists(NAME, min_size=1, max_size=5), st.sampled_from([",", ", ", "\n", " ,\n "]))
def test_a_list_option_reads_names_separated_by_commas_or_lines(names, sep):
    assert convert(LIST, sep.join(names)) == names


@given(st.sampled_from(["1", "true", "yes", "on", "0", "false", "no", "off"]), st.booleans())
def test_a_boolean_option_reads_each_spelling_in_any_case(word, upper):
    assert convert(BOOL, word.upper() if upper else word) is (word in ("1", "true", "yes", "on"))


# ------------------------------------------------------------------ failures: one log tail each
DEATH_TESTS = """
import os, signal, time


def test_a(llm_server):
    if llm_server.target.name == "killed":
        os.kill(llm_server.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while llm_server.alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_b(llm_server):
    pass
"""


def test_a_server_that_dies_fails_each_test_with_its_log_tail_shown_once(pytester, monkeypatch):
    for spec in OPTIONS:
        monkeypatch.delenv(spec.env, raising=False)
    launcher = pytester.path / "standin.py"
    launcher.write_text(STANDIN)
    pytester.makefile(".toml", llmserve=_managed("dies", launcher, "--mode", "exit") + _managed("killed", launcher))
    pytester.makepyfile(test_death=DEATH_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmserve-hardware", "rig", "-rN")  # no short summary
    result.assert_outcomes(passed=1, errors=3)  # every failure is in llm_server's set-up
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    # start-up failure: each of the two tests shows the log tail, once
    assert out.count("server for target 'dies' exited while starting (exit status 3)") == 2
    assert out.count("| FATAL: stand-in refuses to start (scripted start-up failure)") == 2
    # died after it had served: the next test fails with the tail once
    assert out.count("server for target 'killed' died during the session (killed by signal 9)") == 1
    assert out.count("| stand-in serving 'killed'") == 1
