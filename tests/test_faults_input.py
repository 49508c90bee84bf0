"""Bad input: config values, marker and call arguments, baseline files, a server serving another model.

Each gives one clear message naming what to fix, and nothing is overwritten. What is already covered
elsewhere is not repeated (see docs/fault_matrix.md): config errors one by one in test_config.py,
their one-line usage errors in test_plugin_options.py, baseline file errors in test_baselines.py.
Here: a property test over random target tables, and the end-to-end paths through pytest.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_llmserve.checks.server_slo import FRACTION_KEYS
from pytest_llmserve.settings.config import KINDS, SLO_KEYS, ConfigError, parse_config
from pytest_llmserve.testing import Script, TruthServer

from test_faults_server import ROOT

NAN, INF = math.nan, math.inf

# ------------------------------------------------------------------ config: random target tables
_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,15}", fullmatch=True)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_NUM = st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10**6)
_OPTIONAL = {
    "args": st.lists(_TEXT, max_size=3),
    "launcher": st.lists(_TEXT, max_size=3),
    "env": st.dictionaries(_TEXT, _TEXT, max_size=2),
    "startup_timeout_s": st.floats(1e-3, 1e5) | st.integers(1, 10**5),
    "hardware": _TEXT,
    "dtype": st.sampled_from(["bfloat16", "float16", "auto"]),
    "served_model_name": _NAME,
    "slo": st.dictionaries(st.sampled_from(SLO_KEYS), _NUM, max_size=4).map(  # fractions (hit rate, ...) are <= 1
        lambda d: {k: min(v, 1) if k in FRACTION_KEYS else v for k, v in d.items()}),
    "concurrency": st.lists(st.integers(1, 1024), min_size=1, max_size=4),
    "tolerance": st.dictionaries(st.sampled_from(["ttft_p95_ms", "output_tok_s"]),
                                 st.fixed_dictionaries({}, optional={"rel": st.floats(0, 5), "abs": _NUM}),
                                 max_size=2),
}
# (key, bad value) for any kind; the message must name targets[0].<key>
_INVALID_ANY = [
    ("name", ""), ("name", "a b"), ("name", "x/y"), ("name", "tab\there"), ("name", "new\nline"), ("name", 3),
    ("kind", "sglang"), ("kind", 1),
    ("startup_timeout_s", 0), ("startup_timeout_s", -1.5), ("startup_timeout_s", NAN), ("startup_timeout_s", INF),
    ("startup_timeout_s", "10"), ("startup_timeout_s", True),
    ("concurrency", []), ("concurrency", [0]), ("concurrency", [1.5]), ("concurrency", [True]), ("concurrency", "4"),
    ("slo", {"ttft_p95_ms": -1}), ("slo", {"ttft_p95_ms": NAN}), ("slo", {"ttft_p95_ms": INF}),
    ("slo", {"ttft_p95": 1}), ("slo", {"ttft_p95_s": 0.2}), ("slo", {"max_error_rate": "5%"}), ("slo", {"e2e_p95_ms": True}),
    ("args", [1]), ("args", "--x"), ("launcher", [1.0]), ("env", {"X": 1}), ("env", ["X=1"]),
    ("tolerance", {"ttft_p95_ms": {"rel": -1}}), ("tolerance", {"ttft_p95_ms": {"rel": NAN}}),
    ("tolerance", {"ttft_p95_ms": {"abs": INF}}), ("tolerance", {"ttft_p95_ms": {"relative": 1}}),
    ("tolerance", {"ttft_p95_ms": 3}), ("tolerance", 3),
    ("flavour", 1), ("hardware", 4), ("served_model_name", ["a"]),
]
_INVALID_OPENAI = [("url", ""), ("url", "localhost:8000"), ("url", "ftp://host/"), ("url", "http://"),
                   ("url", "http://h:port/"), ("url", 5)]
_INVALID_MANAGED = [("model", "/nonexistent/llmserve-model"), ("model", ""), ("model", 3), ("model", "./no-such-dir")]


@st.composite
def _valid_target(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(KINDS))
    table: dict = {"name": draw(_NAME), "kind": kind}
    if kind == "openai":
        table["url"] = draw(st.sampled_from(["http://127.0.0.1:8000", "http://inference.example/v1", "https://[::1]:9/"]))
        if draw(st.booleans()):
            table["model"] = draw(_NAME)
    else:
        table["model"] = draw(st.sampled_from([str(ROOT / "fixtures"), "meta-llama/Llama-3.1-8B"]))
    for key, strategy in _OPTIONAL.items():
        if draw(st.booleans()):
            table[key] = draw(strategy)
    return table


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_target())
def test_any_valid_target_table_parses_to_the_values_given(table):
    target = parse_config({"targets": [table]}, source="<hypothesis>").targets[0]
    assert (target.name, target.kind) == (table["name"], table["kind"])
    assert target.args == tuple(table.get("args", ())) and target.env == table.get("env", {})
    assert target.slo == {k: float(v) for k, v in table.get("slo", {}).items()}
    assert target.concurrency == tuple(table.get("concurrency", (1, 4, 16)))
    assert math.isfinite(target.startup_timeout_s) and target.startup_timeout_s > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_target(), st.data())
def test_one_invalid_value_in_any_target_table_is_a_config_error_naming_its_key(table, data):
    choices = _INVALID_ANY + (_INVALID_OPENAI if table["kind"] == "openai" else _INVALID_MANAGED)
    key, bad = data.draw(st.sampled_from(choices))
    broken = {**table, key: bad}
    with pytest.raises(ConfigError) as info:
        parse_config({"targets": [broken]}, source="<hypothesis>")
    message = str(info.value)
    assert message.startswith(f"<hypothesis>: targets[0].{key}") and "\n" not in message


# ------------------------------------------------------------------ config, end to end
@pytest.mark.parametrize(("toml", "expected"), [
    ('[[targets]]\nname = "a"\nkind = "openai"\nurl = "http://127.0.0.1:1"\nstartup_timeout_s = nan\n',
     "*targets[[]0[]].startup_timeout_s = nan: must be a finite number of seconds > 0*"),
    ('[[targets]]\nname = "a"\nkind = "openai"\nurl = "localhost:8000"\n',
     "*targets[[]0[]].url = 'localhost:8000': must be an http(s):// URL with a host*"),
    ('[[targets]]\nname = "a"\nkind = "openai"\nurl = "http://h:1"\nslo = { ttft_p95_ms = inf }\n',
     "*targets[[]0[]].slo.ttft_p95_ms = inf: must be a finite non-negative number (leave the key out for no limit)*"),
])
def test_non_finite_numbers_and_bad_urls_in_the_config_stop_the_session_with_one_line(pytester, toml, expected):
    pytester.makefile(".toml", llmserve=toml)
    pytester.makepyfile("def test_t():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert len([line for line in result.errlines if line.startswith("ERROR")]) == 1


# ------------------------------------------------------------------ a live server with the wrong model / bad calls
@pytest.fixture(scope="module")
def truth_url():
    # serves "truth-model"; ITL well above scheduling noise, so the client self-check stays valid when busy
    with TruthServer(Script(ttft_ms=10, itl_ms=20)) as server:
        yield server.url


def _targets(url: str, **names_models: str) -> str:
    return "".join(f'[[targets]]\nname = "{n}"\nkind = "openai"\nurl = "{url}"\nmodel = "{m}"\n\n'
                   for n, m in names_models.items())


def test_a_server_serving_another_model_fails_every_test_once_with_what_to_set(pytester, truth_url):
    pytester.makefile(".toml", llmserve=_targets(truth_url, wrongname="llama-8b"))
    pytester.makepyfile("def test_a(llm_server):\n    pass\n\ndef test_b(llm_load):\n    llm_load(requests=1)\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=2)
    expected = (f"target 'wrongname' expects model 'llama-8b' but the server at {truth_url} serves ['truth-model']; "
                "set served_model_name (or model for kind 'openai')")
    assert result.stdout.str().count(expected) >= 2


CALLS = """
import pytest

def test_bad_type(llm_load):
    llm_load(concurrency="4", requests=2)

def test_unknown_argument(llm_load):
    llm_load(output_tokens=5)

def test_bad_limit_in_assert_slo(llm_load):
    llm_load(requests=2, warmup=0, output_len=2).assert_slo(ttft_p95_ms="fast")

def test_unknown_target_by_name(llm_servers):
    llm_servers("nope")
"""


def test_bad_llm_load_and_assert_slo_arguments_fail_the_test_with_one_line_each(pytester, truth_url):
    pytester.makefile(".toml", llmserve=_targets(truth_url, ok="truth-model"))
    pytester.makepyfile(test_calls=CALLS)
    result = pytester.runpytest_subprocess("-rf")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random([
        "*llm_load(concurrency='4', requests=2): concurrency='4' must be an integer >= 1*",
        "*llm_load(output_tokens=5): *unexpected keyword argument 'output_tokens'*",
        "*test_bad_limit_in_assert_slo[[]ok[]]: assert_slo: SLO ttft_p95_ms='fast' must be a non-negative number*",
        "*llm_servers('nope'): unknown target 'nope' (known: ok; config: *llmserve.toml)*",
    ])
    assert "Traceback" not in result.stdout.str()


# ------------------------------------------------------------------ baseline files, end to end
SLO_TEST = """
def test_slo(llm_load):
    llm_load(concurrency=1, requests=3, warmup=0, input_len=8, output_len=3).assert_slo()
"""


def test_corrupt_foreign_and_missing_baselines_fail_clearly_and_nothing_is_overwritten(pytester, truth_url):
    pytester.makefile(".toml", llmserve=_targets(truth_url, corrupt="truth-model", foreign="truth-model",
                                                 missing="truth-model"))
    pytester.makepyfile(test_base=SLO_TEST)
    hw = pytester.path / "baselines" / "cpu-2c"
    hw.mkdir(parents=True)
    files = {
        "corrupt": b'{"entries": {"test_base.py::test_slo[corrupt]": {"ttft_p95_ms": 1.0',
        "foreign": json.dumps({"hardware": "h100-80gb-x1", "entries": {
            "test_base.py::test_slo[foreign]": {"ttft_p95_ms": 1.0}}}).encode(),
    }
    for name, data in files.items():
        (hw / f"{name}.json").write_bytes(data)

    def run(*args: str):
        result = pytester.runpytest_subprocess("--llmserve-hardware", "cpu-2c", *args)
        out = result.stdout.str()
        assert f"baseline file {hw / 'corrupt.json'} is corrupt (" in out and "it was not modified" in out
        assert "git checkout --" in out
        assert (f"baseline file {hw / 'foreign.json'} was recorded on hardware 'h100-80gb-x1', but this run is "
                "'cpu-2c'; comparison across hardware is refused") in out
        for name, data in files.items():
            assert (hw / f"{name}.json").read_bytes() == data, name
        return result, out

    result, out = run()
    result.assert_outcomes(failed=3)
    assert "no baseline stored for this test on this hardware; run with --update-baselines to record it" in out
    assert not (hw / "missing.json").exists()

    result, out = run("--update-baselines")  # update records what it may and still refuses the broken files
    result.assert_outcomes(failed=2, passed=1)
    assert "test_base.py::test_slo[missing]" in json.loads((hw / "missing.json").read_text())["entries"]
    assert not list(hw.glob("*.tmp")) and not list(hw.glob(".*.tmp"))


ONE_TOKEN_TEST = """
def test_one_token(llm_load):
    llm_load(concurrency=1, requests=3, warmup=0, input_len=8, output_len=1).assert_slo()
"""


def test_a_metric_the_run_cannot_measure_is_never_recorded_so_the_next_run_still_passes(pytester, truth_url):
    # one-token outputs have no TPOT (NaN): recorded as NaN it would fail every later comparison
    pytester.makefile(".toml", llmserve=_targets(truth_url, one="truth-model"))
    pytester.makepyfile(test_one=ONE_TOKEN_TEST)
    pytester.runpytest_subprocess("--llmserve-hardware", "cpu-2c", "--update-baselines").assert_outcomes(passed=1)
    text = (pytester.path / "baselines" / "cpu-2c" / "one.json").read_text()
    stored = json.loads(text)["entries"]["test_one.py::test_one_token[one]"]["metrics"]
    assert "NaN" not in text and "tpot_p95_ms" not in stored and "ttft_p95_ms" in stored
    pytester.runpytest_subprocess("--llmserve-hardware", "cpu-2c").assert_outcomes(passed=1)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "true", '"12"'])
def test_a_baseline_entry_that_is_not_a_finite_number_is_a_corrupt_file_and_kept(tmp_path, value):
    from pytest_llmserve.store.baselines import BaselineError, BaselineStore

    path = tmp_path / "hw" / "t.json"
    path.parent.mkdir()
    path.write_text('{"entries": {"m.py::t": {"ttft_p95_ms": %s}}}' % value)
    before = path.read_bytes()
    store = BaselineStore(tmp_path, "hw", update=True)
    with pytest.raises(BaselineError, match=r"is corrupt \(entries must map test ids to \{metric: finite number\} or "
                                         r"to \{shape, metrics: \{metric: \{value, ...\}\}\}\)"):
        store.compare("t", "m.py::t", {"ttft_p95_ms": 1.0}, {})
    assert path.read_bytes() == before
