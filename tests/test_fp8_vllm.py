"""The FP8 accuracy gate on the real CPU vLLM and the tiny model.

Three servers at most: the shared tiny one (BF16, default KV cache), the same model with
`--kv-cache-dtype fp8`, and a copy whose decoder layer 0 is noised (a "broken build"). The baseline
server is scored once per task and reused; the identical-target check scores it a second time.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pytest_llmserve.gates.accuracy import DEFAULT_TOLERANCE, ScoredTarget, compare_scored, score_server
from pytest_llmserve.reference.accuracy_tasks import load_task
from pytest_llmserve.evidence.precision import precision_of
from pytest_llmserve.reference.hf import make_perturbed_model
from pytest_llmserve.servers.base import HostUnsupported

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "fixtures" / "tasks"
SUITE = ROOT / "suites" / "test_fp8_accuracy.py"
CONCURRENCY = 8
NOISE_LAYER, NOISE_SCALE = 0, 2.0  # x each tensor's std: HF fp32 measures -2.6 pp next-token accuracy

pytestmark = pytest.mark.accuracy


@pytest.fixture(scope="module")
def tasks():
    return [load_task(p) for p in sorted(BUNDLED.glob("*.jsonl"))]


# Variants of the shared server's own target (tests/conftest.py), so only the one difference differs.
@pytest.fixture(scope="module")
def fp8_vllm(server_pool, tiny_vllm):
    base = tiny_vllm.target
    try:
        return server_pool.get(dataclasses.replace(base, name="tiny-vllm-fp8kv", args=base.args + ("--kv-cache-dtype", "fp8")))
    except HostUnsupported as exc:  # vLLM's CPU FP8 KV cache needs AVX-512 or AMX
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def degraded_vllm(server_pool, tiny_vllm, tmp_path_factory):
    noised = make_perturbed_model(tiny_vllm.target.model, tmp_path_factory.mktemp("degraded") / "tiny-llama",
                                  layer=NOISE_LAYER, scale=NOISE_SCALE, seed=0)
    return server_pool.get(dataclasses.replace(tiny_vllm.target, name="tiny-vllm-degraded", model=str(noised)))


@pytest.fixture(scope="module")
def baseline(tiny_vllm, tasks) -> dict[str, ScoredTarget]:
    return {t.name: score_server(tiny_vllm, t, CONCURRENCY) for t in tasks}


def test_precision_is_read_from_the_real_vllm_logs(tiny_vllm, fp8_vllm):
    assert "kv_cache_dtype=fp8" in fp8_vllm.log_text()
    fp8 = precision_of(fp8_vllm.target, fp8_vllm.log_text())
    bf16 = precision_of(tiny_vllm.target, tiny_vllm.log_text())
    assert (fp8.source, fp8.key()) == ("vllm-log", "bfloat16|none|fp8")
    assert (bf16.source, bf16.key()) == ("vllm-log", "bfloat16|none|none")
    assert "kv_cache_dtype=fp8" in fp8.evidence and "v0.32.0" in fp8.evidence


def test_prompt_logprobs_response_has_the_shape_the_scorer_reads(tiny_vllm, tasks):
    import httpx

    ids = next(t for t in tasks if t.kind == "next_token").items[0].token_ids
    prompts = [list(ids[:6]), list(ids[:4])]  # batched, as the multiple-choice scorer sends them
    body = {"model": tiny_vllm.model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1}
    choices = httpx.post(f"{tiny_vllm.base_url}/v1/completions", json=body, timeout=60).json()["choices"]
    assert sorted(c["index"] for c in choices) == [0, 1]
    for choice in choices:
        sent, plp = prompts[choice["index"]], choice["prompt_logprobs"]
        assert plp[0] is None and len(plp) == len(sent)
        for pos in range(1, len(sent)):
            entry = plp[pos]
            assert str(sent[pos]) in entry and 1 <= len(entry) <= 2
            assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in entry.values())
            assert sum(v["rank"] == 1 for v in entry.values()) <= 1
    # the shared 4-token prefix scores alike in both choices (bf16 batch noise aside): choices are not mixed up
    by_index = {c["index"]: c["prompt_logprobs"] for c in choices}
    for pos in range(1, 4):
        tok = str(prompts[1][pos])
        assert by_index[0][pos][tok]["logprob"] == pytest.approx(by_index[1][pos][tok]["logprob"], abs=0.1)


def test_fp8_kv_cache_passes_the_gate_with_the_default_tolerance(fp8_vllm, tasks, baseline):
    for task in tasks:
        comp = compare_scored(task, baseline[task.name], score_server(fp8_vllm, task, CONCURRENCY))
        print(comp.render(), "\n")
        assert comp.gate.tolerance == DEFAULT_TOLERANCE
        assert comp.candidate.precision.kv_cache_quant_algo == "fp8"
        assert comp.passed, comp.render()
    # FP8 really changed the numbers (a pass is not two identical runs)
    nt = next(t for t in tasks if t.kind == "next_token")
    fp8_ll = score_server(fp8_vllm, nt, CONCURRENCY).scores.loglik()
    assert not np.array_equal(fp8_ll, baseline[nt.name].scores.loglik())


def test_noised_weights_fail_the_gate(degraded_vllm, tasks, baseline):
    verdicts = {}
    for task in tasks:
        comp = compare_scored(task, baseline[task.name], score_server(degraded_vllm, task, CONCURRENCY))
        print(comp.render(), "\n")
        verdicts[task.name] = comp.passed
    assert verdicts["next_token"] is False, verdicts


def test_the_same_server_scored_twice_passes(tiny_vllm, tasks, baseline):
    for task in tasks:
        comp = compare_scored(task, baseline[task.name], score_server(tiny_vllm, task, CONCURRENCY))
        print(comp.render(), "\n")
        assert comp.passed, comp.render()


SUITE_CONFIG = """
[tool.llmserve]
baselines_dir = "baselines"

[[tool.llmserve.targets]]
name = "bf16"
kind = "openai"
url = "{bf16_url}"
model = "{bf16_model}"
options = {{ precision = {{ dtype = "bfloat16" }} }}

[[tool.llmserve.targets]]
name = "fp8kv"
kind = "openai"
url = "{fp8_url}"
model = "{fp8_model}"
options = {{ accuracy_reference = "bf16", accuracy_tasks = ["{task}"], accuracy_concurrency = 8, precision = {{ dtype = "bfloat16", kv_cache_quant_algo = "fp8" }} }}
"""


def test_suite_compares_the_configured_pair_and_keeps_references(pytester, tiny_vllm, fp8_vllm):
    # the running servers as external targets: the suite runs end to end without starting more vLLMs
    pytester.makefile(".toml", pyproject=textwrap.dedent(SUITE_CONFIG.format(
        bf16_url=tiny_vllm.base_url, bf16_model=tiny_vllm.model, fp8_url=fp8_vllm.base_url,
        fp8_model=fp8_vllm.model, task=BUNDLED / "next_token.jsonl")))
    shutil.copy(SUITE, pytester.path / SUITE.name)

    first = pytester.runpytest_inprocess(SUITE.name, "-rs", "-s", "--update-baselines", "-p", "no:cacheprovider")
    first.assert_outcomes(passed=1, skipped=1)
    first.stdout.fnmatch_lines(["*accuracy gate [[]next_token accuracy[]]: n=5120 paired items in 40 clusters "
                                "(design effect *, effective n *; bootstrap resamples clusters), α=0.05, β=0.2*",
                                "*min detectable drop*", "*next_token|bfloat16|none|fp8*recorded*",
                                "*fp8kv*next_token accuracy %*pass*",
                                "*bf16*names no reference to compare with*accuracy_reference*"])
    refs = list(pytester.path.glob("baselines/*/accuracy/*.json"))
    assert [r.name for r in refs] == [f"{fp8_vllm.model}.json"]
    text = refs[0].read_text()
    assert '"next_token|bfloat16|none|none"' in text and '"next_token|bfloat16|none|fp8"' in text

    second = pytester.runpytest_inprocess(SUITE.name, "-s", "-p", "no:cacheprovider")
    second.assert_outcomes(passed=1, skipped=1)
    second.stdout.fnmatch_lines(["*next_token|bfloat16|none|none: measured * → ok*",
                                 "*next_token|bfloat16|none|fp8: measured * → ok*"])
