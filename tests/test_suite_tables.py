"""The suites' keys of a target's `options` are typed tables, checked when the config loads: a bad key or
value stops the session with one file/key/value line, the backend's own options are checked by the
backend, and the suites read the typed values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.settings.config import ConfigError, Target, parse_config
from pytest_llmserve.settings.option_tables import SUITE_OPTION_KEYS
from pytest_llmserve.settings.suite_tables import OptionError, PromotionTable, SuiteTables, suite_tables


def _load(options, kind="openai"):
    target = {"name": "a", "kind": kind, "options": options}
    target |= {"url": "http://h:1"} if kind == "openai" else {"model": "org/name"}
    return parse_config({"targets": [target]}, source="llmserve.toml")


@pytest.mark.parametrize(("options", "message"), [
    ({"promotion_rounds": 0}, "targets[0].options.promotion_rounds = 0: must be an integer >= 1"),
    ({"promotion_requests": 2.5}, "targets[0].options.promotion_requests = 2.5: must be an integer >= 1"),
    ({"promotion_margin": -0.1}, "targets[0].options.promotion_margin = -0.1: must be a number > 0"),
    ({"promotion_metrics": ["itl_p50_ms"]}, "targets[0].options.promotion_metrics = ['itl_p50_ms']: metric 'itl_p50_ms'"),
    ({"promotion_incumbent": ""}, "targets[0].options.promotion_incumbent = '': must be the name of another target"),
    ({"accuracy_tasks": "t.jsonl"}, "targets[0].options.accuracy_tasks = 't.jsonl': must be a non-empty list"),
    ({"accuracy_alpha": 0.7}, "targets[0].options.accuracy_alpha = 0.7: must be a number >= 0 and < 0.5"),
    ({"accuracy_tolerance": True}, "targets[0].options.accuracy_tolerance = True: must be a number > 0"),
    ({"accuracy_concurrency": 0}, "targets[0].options.accuracy_concurrency = 0: must be an integer >= 1"),
    ({"equivalence": {"top_k": 0}}, "targets[0].options.equivalence = {'top_k': 0}: top_k = 0 must be an integer"),
    ({"equivalence": {"nope": 1}}, "targets[0].options.equivalence = {'nope': 1}: unknown key(s) nope"),
    ({"engine_equivalence": {"prompts": 0}}, "targets[0].options.engine_equivalence = {'prompts': 0}: "),
    ({"precision": {"quant_algo": "fp8"}}, "targets[0].options.precision = {'quant_algo': 'fp8'}: needs at least"),
    ({"precision": "fp8"}, "targets[0].options.precision = 'fp8': must be a table"),
])
def test_a_bad_suite_option_is_a_config_error_naming_file_key_and_value(options, message):
    with pytest.raises(ConfigError) as info:
        _load(options)
    assert str(info.value).startswith(f"llmserve.toml: {message}")


def test_the_backend_checks_its_own_options_and_never_sees_the_suites_keys():
    with pytest.raises(ConfigError, match=r"^llmserve.toml: targets\[0\].options.templatez = 'x': unknown triton "
                                          r"option; known: decoupled, fill"):
        _load({"templatez": "x"}, kind="triton")
    with pytest.raises(ConfigError, match=r"options.protocol = 'udp': use 'grpc' or 'http'"):
        _load({"protocol": "udp"}, kind="triton")
    # the suites' keys are not Triton's, and trtllm-serve takes any YAML key
    assert _load({"protocol": "http", "promotion_rounds": 2}, kind="triton").targets[0].suites.promotion.rounds == 2
    assert _load({"kv_cache_config": {"free_gpu_memory_fraction": 0.5}}, kind="trtllm-serve").targets


def test_the_suites_read_typed_values_with_the_documented_defaults():
    target = _load({"promotion_incumbent": "old", "promotion_metrics": ["ttft_p95_ms"], "accuracy_tolerance": 0.02,
                    "equivalence": {"top_k": 3}, "engine_equivalence": {"prompts": 50}}).targets[0]
    tables = target.suites
    assert tables.promotion == PromotionTable(incumbent="old", metrics=("ttft_p95_ms",))
    assert tables.accuracy.tolerance == 0.02 and tables.accuracy.required_detectable == pytest.approx(0.06)
    assert tables.equivalence.top_k == 3 and tables.engine_equivalence.prompts == 50
    assert Target(name="b", kind="openai").suites == SuiteTables()  # no options: every default
    with pytest.raises(OptionError, match="promotion_rounds = 0"):  # built in code, not loaded: raised on first read
        Target(name="c", kind="openai", options={"promotion_rounds": 0}).suites  # noqa: B018


@settings(deadline=None)  # a busy 2-core machine: timing is not what this checks
@given(st.dictionaries(st.sampled_from(sorted(SUITE_OPTION_KEYS)),
                       st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                                 st.text(max_size=5), st.lists(st.text(max_size=4), max_size=3)), max_size=4))
def test_any_options_either_load_typed_or_fail_with_one_line_naming_one_of_their_keys(options):
    try:
        tables = suite_tables(options)
    except OptionError as exc:
        assert exc.key in options and "\n" not in str(exc)
    else:
        assert isinstance(tables, SuiteTables)
        assert tables.promotion.rounds >= 1 and tables.accuracy.concurrency >= 1


def test_a_bad_option_stops_the_session_with_one_line(pytester):
    pytester.makefile(".toml", llmserve='[[targets]]\nname = "a"\nkind = "openai"\nurl = "http://127.0.0.1:1"\n'
                                       'options = { promotion_margin = "ten" }\n')
    pytester.makepyfile("def test_t():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*targets[[]0[]].options.promotion_margin = 'ten': must be a number > 0*"])
