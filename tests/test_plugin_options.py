"""Plugin behaviour through pytester: options and their precedence, markers, config errors, selection."""

from __future__ import annotations

import pytest

PRINT_SESSION = """
from pytest_llmserve.session import get_session

def test_show(request):
    s = get_session(request.config)
    print("BASELINES=" + s.store.root.name)
    print("HARDWARE=" + s.hardware.label)
    print("UPDATE=" + str(s.store.update))
    print("TARGETS=" + ",".join(t.name for t in s.selected))
"""

TWO_TARGETS = """
[[targets]]
name = "alpha"
kind = "openai"
url = "http://127.0.0.1:9"

[[targets]]
name = "beta"
kind = "openai"
url = "http://127.0.0.1:9"
"""


def _value(result: pytest.RunResult, key: str) -> str:
    for line in result.outlines:
        for word in line.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
    return ""


def test_markers_are_registered_with_their_signatures(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.slo(ttft_p95_ms=None, itl_p95_ms=None*", "@pytest.mark.gpu(sku=None, count=1*"])


def test_help_lists_every_option_with_env_and_ini(pytester):
    result = pytester.runpytest("--help")
    for flag in ("--llmserve-target", "--llmserve-config", "--llmserve-baselines-dir", "--llmserve-hardware",
                 "--update-baselines"):
        assert flag in result.stdout.str()
    flat = " ".join(result.stdout.str().split())
    assert "[env LLMSERVE_BASELINES_DIR, ini llmserve_baselines_dir]" in flat
    assert "[env LLMSERVE_UPDATE_BASELINES, ini llmserve_update_baselines]" in flat


@pytest.mark.parametrize(
    ("ini", "env", "cli", "expected"),
    [
        ("from-ini", None, None, "from-ini"),
        ("from-ini", "from-env", None, "from-env"),
        ("from-ini", "from-env", "from-cli", "from-cli"),
        (None, None, None, "baselines"),
    ],
)
def test_option_precedence_is_cli_then_env_then_ini(pytester, monkeypatch, ini, env, cli, expected):
    if ini:
        pytester.makeini(f"[pytest]\nllmserve_baselines_dir = {ini}\n")
    if env:
        monkeypatch.setenv("LLMSERVE_BASELINES_DIR", env)
    else:
        monkeypatch.delenv("LLMSERVE_BASELINES_DIR", raising=False)
    pytester.makepyfile(PRINT_SESSION)
    args = ["-s"] + ([f"--llmserve-baselines-dir={cli}"] if cli else [])
    result = pytester.runpytest(*args)
    assert _value(result, "BASELINES") == expected


def test_update_flag_and_env_both_switch_update_on(pytester, monkeypatch):
    pytester.makepyfile(PRINT_SESSION)
    monkeypatch.delenv("LLMSERVE_UPDATE_BASELINES", raising=False)
    assert _value(pytester.runpytest("-s"), "UPDATE") == "False"
    assert _value(pytester.runpytest("-s", "--update-baselines"), "UPDATE") == "True"
    monkeypatch.setenv("LLMSERVE_UPDATE_BASELINES", "1")
    assert _value(pytester.runpytest("-s"), "UPDATE") == "True"


def test_hardware_label_can_be_overridden(pytester):
    pytester.makepyfile(PRINT_SESSION)
    assert _value(pytester.runpytest("-s", "--llmserve-hardware=my-rig"), "HARDWARE") == "my-rig"


def test_target_selection_is_repeatable_and_defaults_to_all(pytester):
    pytester.makefile(".toml", llmserve=TWO_TARGETS)
    pytester.makepyfile(PRINT_SESSION)
    assert _value(pytester.runpytest("-s"), "TARGETS") == "alpha,beta"
    assert _value(pytester.runpytest("-s", "--llmserve-target", "beta"), "TARGETS") == "beta"
    both = pytester.runpytest("-s", "--llmserve-target", "beta", "--llmserve-target", "alpha")
    assert _value(both, "TARGETS") == "beta,alpha"


def test_tests_using_llm_target_are_parametrized_over_selected_targets(pytester):
    pytester.makefile(".toml", llmserve=TWO_TARGETS)
    pytester.makepyfile("def test_t(llm_target):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_t[[]alpha[]]", "*test_t[[]beta[]]"])


def test_without_targets_a_target_test_is_skipped_with_a_reason(pytester):
    pytester.makepyfile("def test_t(llm_target):\n    pass\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no llmserve target selected*"])


def test_unknown_target_stops_the_session_with_one_line(pytester):
    pytester.makefile(".toml", llmserve=TWO_TARGETS)
    pytester.makepyfile("def test_t():\n    pass\n")
    result = pytester.runpytest("--llmserve-target", "gamma")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: llmserve config error: unknown target 'gamma' (known: alpha, beta; config: *llmserve.toml)"])


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[[targets]]\nname = "a"\nkind = "sglang"\nmodel = "/"\n', "*llmserve.toml: targets[[]0[]].kind = 'sglang': must be one of*"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "./missing-model"\n', "*targets[[]0[]].model = './missing-model': path does not exist*"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\nenv = { X = 1 }\n', "*targets[[]0[]].env = {'X': 1}: values must be strings*"),
    ],
)
def test_broken_config_stops_the_session_with_one_clear_line(pytester, toml, expected):
    pytester.makefile(".toml", llmserve=toml)
    pytester.makepyfile("def test_t():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert len([line for line in result.errlines if line.startswith("ERROR")]) == 1


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("slo(ttft_p95_ms='fast')", "*SLO ttft_p95_ms='fast' must be a non-negative number (milliseconds)*"),
        ("slo(ttft_p95=100)", "*unknown SLO ttft_p95=100; known: *"),
        ("slo(100)", "*takes keyword arguments only*"),
        ("slo(ttft_p95_ms=-5)", "*SLO ttft_p95_ms=-5 must be a non-negative number (milliseconds)*"),
        ("slo(ttft_p95_s=0.2)", "*unknown SLO ttft_p95_s=0.2; known: ttft_p50_ms, ttft_p95_ms*"),
        ("slo(max_error_rate='5%')", "*SLO max_error_rate='5%' must be a non-negative number (a rate)*"),
        ("gpu(count='two')", "*test_t*gpu*count*'two'*"),
    ],
)
def test_marker_arguments_of_the_wrong_type_or_unit_stop_at_collection(pytester, marker, expected):
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_t():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
