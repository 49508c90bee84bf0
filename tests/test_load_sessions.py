"""Multi-turn sessions against the ground-truth server: each later turn sends exactly the previous turn's prompt
and the server's real reply, turns of a session one after another, sessions side by side."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, strategies as st

from pytest_llmserve.load import ClientOptions, LoadSpec, run_load
from pytest_llmserve.load.sessions import Sessions, reply_of
from pytest_llmserve.load.workloads import workload
from pytest_llmserve.testing import Script, TruthServer
from pytest_llmserve.testing.truth_script import token_id

LENIENT = ClientOptions(limits=dataclasses.replace(ClientOptions().limits, max_merged_token_frac=1.0,
                                                    max_loop_lag_p99_ms=1000))


@pytest.fixture(scope="module")
def server():
    with TruthServer(Script(ttft_ms=5, itl_ms=2, log_prompts=True)) as srv:
        yield srv


def _chains(spec: LoadSpec, log: list[dict]) -> list[tuple[dict, dict, int]]:
    """(previous turn's record, later turn's record, message length) for every later turn in the log."""
    sessions, n = spec.sessions, len(spec.prompts)
    by_len: dict[tuple, dict] = {tuple(r["prompt"]): r for r in log}
    out = []
    for r in log:
        prompt = tuple(r["prompt"])
        for q in range(n):  # the prompt position whose new message this request ends with
            p, m = sessions.previous[q], sessions.message[q]
            if p < 0 or prompt[len(prompt) - m:] != spec.prompts[q][len(spec.prompts[q]) - m:]:
                continue
            prev = [x for k, x in by_len.items() if len(k) < len(prompt) - m and prompt[:len(k)] == k]
            if prev:
                out.append((max(prev, key=lambda x: len(x["prompt"])), r, m))
                break
    return out


def test_a_later_turn_sends_the_previous_prompt_and_the_servers_real_reply(server):
    server.reset()
    # the profile's 8 sessions, 3 turns each, at most 4 in flight
    wl = workload("multi-turn", max_model_len=512, requests=24, concurrency=4, warmup=0)
    result = run_load(server.url, "truth-model", wl.spec, options=LENIENT)
    assert result.summary.completed == 24 and result.valid, result.invalid_reasons
    log = server.truth()
    chains = _chains(wl.spec, log)
    assert len(chains) == 16 and result.session_replies == (16, 0)
    for prev, later, m in chains:
        reply = [token_id(prev["seq"], k) for k in range(prev["max_tokens"])]
        start = len(prev["prompt"])
        assert later["prompt"][:start] == prev["prompt"]  # the whole history: what a prefix cache can reuse
        assert later["prompt"][start:start + len(reply)] == reply  # exactly the reply the server streamed
        assert len(later["prompt"]) == start + len(reply) + m
        assert later["t_recv_ns"] >= prev["t_end_ns"]  # the next turn only after the reply was complete
    # sessions run side by side: some request started while another was still streaming
    spans = sorted((r["t_recv_ns"], r["t_end_ns"]) for r in log)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert "multi-turn: 16 later turns sent the previous turn's real reply" == result.sessions_line()


def test_sessions_stay_whole_across_client_processes(server):
    server.reset()
    wl = workload("multi-turn", max_model_len=512, requests=16, concurrency=4, warmup=2)
    result = run_load(server.url, "truth-model", wl.spec, options=dataclasses.replace(LENIENT, workers=2))
    assert result.summary.completed == 16 and result.session_replies == (8, 0)
    assert len(_chains(wl.spec, server.truth())) == 8
    for prev, later, _ in _chains(wl.spec, server.truth()):
        reply = [token_id(prev["seq"], k) for k in range(prev["max_tokens"])]
        assert later["prompt"][:len(prev["prompt"]) + len(reply)] == prev["prompt"] + reply


def test_a_server_that_returns_no_token_ids_gets_stand_ins_and_it_is_said(server):
    server.reset()
    spec = workload("multi-turn", max_model_len=512, requests=12, concurrency=4, warmup=0).spec
    spec = dataclasses.replace(spec, sessions=dataclasses.replace(spec.sessions, token_ids=False))
    result = run_load(server.url, "truth-model", spec, options=LENIENT)
    assert result.session_replies == (4, 4) and "4 of them with stand-in token ids" in result.sessions_line()
    assert sorted(tuple(r["prompt"]) for r in server.truth()) == sorted(spec.prompts[:12])


def test_text_prompts_append_the_reply_text(server):
    server.reset()
    first, follow = "system: be brief. user: hello", " user: and then?"
    spec = LoadSpec(prompts=(first, first + " t0 t1 t2" + follow), output_lens=(3, 3), requests=2, warmup=0,
                    sessions=Sessions((-1, 0), (0, len(follow))), concurrency=2)
    result = run_load(server.url, "truth-model", spec, options=LENIENT)
    assert result.summary.completed == 2
    assert [r["prompt"] for r in server.truth()] == [first, first + " t0 t1 t2" + follow]


def test_sessions_are_refused_open_loop_or_for_a_duration_and_must_extend_their_history():
    spec = workload("multi-turn", max_model_len=512, requests=8).spec
    with pytest.raises(ValueError, match="closed loop for a number of requests"):
        dataclasses.replace(spec, rate=5.0, concurrency=None).validate()
    with pytest.raises(ValueError, match="does not start with"):
        LoadSpec(prompts=((11, 12), (13, 14, 15)), requests=2, sessions=Sessions((-1, 0), (0, 1))).validate()


@given(st.lists(st.lists(st.integers(0, 10**6), min_size=0, max_size=4), min_size=1, max_size=20),
       st.booleans())
def test_reply_of_recovers_every_streamed_token_id_and_the_text(chunks, with_ids):
    import json

    payloads = []
    for k, ids in enumerate(chunks):
        choice = {"index": 0, "text": f" w{k}", "finish_reason": None}
        if with_ids:
            choice["token_ids"] = ids
        payloads.append(json.dumps({"id": "x", "choices": [choice]}).encode())
    payloads += [b'{"id":"x","choices":[],"usage":{"completion_tokens":1}}', b"[DONE]"]
    reply = reply_of(payloads)
    assert reply.text == "".join(f" w{k}" for k in range(len(chunks)))
    assert reply.ids == ([t for ids in chunks for t in ids] if with_ids else None)
    whole = json.dumps({"choices": [{"index": 0, "text": "ab", **({"token_ids": [3, 4]} if with_ids else {})}]})
    assert reply_of([whole[:7].encode(), whole[7:].encode()], stream=False).ids == ([3, 4] if with_ids else None)
