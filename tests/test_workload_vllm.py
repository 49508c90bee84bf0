"""The rag workload's prefix-cache gate on the real CPU vLLM: passes with prefix caching on (the session's
`tiny_vllm`), fails naming the measured rate against a server started with `--no-enable-prefix-caching`.

A user's test file runs in a child pytest (pytester) against each server as an already-running
(`openai`) target, through `llm_load(workload="rag")` and `@pytest.mark.slo(min_prefix_cache_hit_rate=...)`.
The client's merged-chunk limit is opened wide: these tests judge what the server did, and on this
shared 2-core machine the client's own verdict depends on what the other developers run.
"""

from __future__ import annotations

import re

import pytest

from conftest import TINY_MODEL, vllm_target

CONFIG = """
[tool.llmserve]
baselines_dir = "baselines"

[[tool.llmserve.targets]]
name = "{name}"
kind = "openai"
url = "{url}"
model = "{model}"
client_cpus = "1"
client = {{ max_merged_token_frac = 1.0, max_loop_lag_p99_ms = 1000 }}
workloads = {{ requests = 16 }}
"""

TEST = """
import pytest

@pytest.mark.slo(min_prefix_cache_hit_rate=0.5, max_preemptions=0)
def test_rag_reuses_the_shared_prefix(llm_load):
    llm_load(workload="rag").assert_slo()
"""


@pytest.fixture(scope="session")
def vllm_without_prefix_cache(server_pool):
    return server_pool.get(vllm_target("tiny-vllm-nopc", TINY_MODEL, "--no-enable-prefix-caching"))


def _run(pytester, server) -> pytest.RunResult:
    pytester.makefile(".toml", pyproject=CONFIG.format(name=server.target.name, url=server.base_url,
                                                        model=server.model))
    pytester.makepyfile(test_rag=TEST)
    # --update-baselines: no stored baseline in the fresh project; the limits still judge the run
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--update-baselines")


def test_rag_profile_meets_the_prefix_cache_hit_rate_floor_on_cpu_vllm(pytester, tiny_vllm):
    result = _run(pytester, tiny_vllm)
    out = result.stdout.str()
    assert result.ret == 0, out[-5000:]
    assert "SCALED x0.0580 to fit max_model_len 1024" in out  # the workload said how it was sized
    print(re.search(r"prefix_cache_hit_rate.*", out).group(0))


def test_rag_profile_fails_naming_the_rate_when_prefix_caching_is_off(pytester, vllm_without_prefix_cache):
    result = _run(pytester, vllm_without_prefix_cache)
    out = result.stdout.str()
    assert result.ret == 1, out[-5000:]
    row = re.search(r"prefix_cache_hit_rate\s+(\S+)\s+>= 0\.500.*FAIL", out)
    assert row, out[-5000:]
    assert float(row.group(1)) < 0.5
    assert "prefix caching is off on this server (vllm:cache_config_info enable_prefix_caching=False)" in out
    print(row.group(0))  # the measured row, for the record (pytest -s)
