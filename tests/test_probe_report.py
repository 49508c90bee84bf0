"""Where the capability probe's findings appear: the header says what is known before any server starts
(no network call), the llmserve summary and the JSON report give each target's findings once probed,
and a target the probe refused is in the JSON report with its one line (truth servers, pytester)."""

from __future__ import annotations

import json

import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.report.header import probe_line
from pytest_llmserve.servers.capabilities import Capabilities
from pytest_llmserve.testing import Script, TruthServer

NEEDS_LOGPROBS = """
from pytest_llmserve.settings.suite_options import require_capabilities

def test_needs_logprobs(llm_server):
    require_capabilities(llm_server, "logprobs", suite="equivalence")
"""


def _config(url: str) -> str:
    return (f'[[targets]]\nname = "plain"\nkind = "openai"\nurl = "{url}"\nmodel = "truth-model"\n\n'
            f'[[targets]]\nname = "told"\nkind = "openai"\nurl = "{url}"\nmodel = "truth-model"\n'
            'capabilities = { token_id_prompts = false, readiness = "/v1/models" }\n\n'
            f'[[targets]]\nname = "wrong-model"\nkind = "openai"\nurl = "{url}"\nmodel = "other-model"\n')


@pytest.fixture
def server():
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        yield srv


def test_the_header_says_what_is_known_before_start_and_probes_nothing(pytester, server):
    pytester.makefile(".toml", llmserve=_config(server.url))
    pytester.makepyfile(test_caps=NEEDS_LOGPROBS)
    result = pytester.runpytest("--co", "-p", "no:cacheprovider")
    lines = [line for line in result.outlines if line.startswith("llmserve probe ")]
    assert [line.split(":")[0] for line in lines] == ["llmserve probe plain", "llmserve probe told",
                                                     "llmserve probe wrong-model"]
    assert lines[0].endswith("; no capabilities set in config")
    assert lines[1].endswith("; set in config: readiness=/v1/models, token_id_prompts=false")
    assert all("when its server is ready" in line for line in lines)
    assert "capabilities:" not in result.stdout.str() and server.truth() == []  # no request reached the server


def test_a_triton_target_is_not_probed_and_the_header_says_so():
    line = probe_line(Target(name="trt", kind="triton", url="http://127.0.0.1:1", model="m"))
    assert line == "llmserve probe trt: not probed (Triton's own protocol, not the OpenAI API)"


def test_summary_and_json_give_each_targets_findings_even_when_every_test_skips(pytester, server):
    pytester.makefile(".toml", llmserve=_config(server.url))
    pytester.makepyfile(test_caps=NEEDS_LOGPROBS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--llmserve-report-json", "r.json")
    result.assert_outcomes(skipped=2, errors=1)  # wrong-model is refused at start-up, before any load
    out = result.stdout.str()
    summary = out[out.index("llmserve summary"):]
    plain = next(line for line in summary.splitlines() if line.startswith("server plain: "))
    assert plain.startswith("server plain: ready via /health; has completions, chat, token_id_prompts, ")
    assert "lacks logprobs" in plain and plain.endswith("matched work forced")
    told = next(line for line in summary.splitlines() if line.startswith("server told: "))
    assert told.startswith("server told: ready via /v1/models; ") and "overridden: readiness, token_id_prompts" in told
    assert "  logprobs: a request with logprobs=2 came back without logprobs" in summary  # why not, under it

    data = json.loads((pytester.path / "r.json").read_text())
    assert set(data["servers"]) == {"plain", "told"}
    assert data["servers"]["plain"]["token_id_prompts"] is True and data["servers"]["told"]["token_id_prompts"] is False
    assert data["servers"]["plain"]["logprobs"] is False and data["servers"]["plain"]["matched_work"] == "forced"
    assert data["servers"]["plain"]["models"] == ["truth-model"]
    (refusal,) = data["server_failures"].values()
    assert list(data["server_failures"]) == ["wrong-model"] and "\n" not in refusal
    assert "expects model 'other-model' but the server at" in refusal and "serves ['truth-model']" in refusal


def test_capabilities_survive_the_trip_through_json():
    caps = Capabilities(readiness="completion", token_id_prompts=False, models=("a", "b"), tokenizer="/m",
                        overridden=("ignore_eos",), notes=("logprobs: no",), ignore_eos=False)
    assert Capabilities.from_dict(json.loads(json.dumps(caps.to_dict()))) == caps
    assert Capabilities.from_dict(json.loads(json.dumps(Capabilities().to_dict()))) == Capabilities()
