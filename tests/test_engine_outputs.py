"""Per-side output cache: keyed by identity, prompts and decoding; reused, extended within a budget, atomic."""

from __future__ import annotations

import json
import os
import time

import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.reference.engine_outputs import cached_side, dir_fingerprint, side_identity
from pytest_llmserve.reference.hf import Prompt
from pytest_llmserve.evidence.server_logprobs import fetch_greedy_until
from pytest_llmserve.testing import Script, TruthServer
from pytest_llmserve.testing.truth_script import greedy_tokens

PROMPTS = tuple(Prompt(f"p{i}", (1, 2, i + 10)) for i in range(30))


def _sent(server: TruthServer, max_tokens: int) -> int:
    return sum(1 for r in server.truth() if r["max_tokens"] == max_tokens)


@pytest.fixture
def engine():
    with TruthServer(Script(ttft_ms=0, itl_ms=0, greedy_vocab=300)) as server:
        yield server


def _side(server, tmp_path, identity, *, want=len(PROMPTS), budget_s=None, prompts=PROMPTS, top_k=2, **kw):
    return cached_side("old", server.url, "truth-model", identity, prompts, want=want, max_tokens=5, top_k=top_k,
                       cache_dir=tmp_path, budget_s=budget_s, concurrency=4, **kw)


def test_a_second_run_with_the_same_key_sends_nothing_and_returns_the_same_tokens(engine, tmp_path):
    first = _side(engine, tmp_path, {"id": "a"})
    assert (first.reused, first.sent, _sent(engine, 5)) == (0, 30, 30)
    assert first.continuations[3].tokens == tuple(greedy_tokens((1, 2, 13), 5, 300))
    second = _side(engine, tmp_path, {"id": "a"})
    assert (second.reused, second.sent, _sent(engine, 5)) == (30, 0, 30)
    assert second.continuations == first.continuations


@pytest.mark.parametrize("change", ["identity", "prompts", "top_k"])
def test_another_identity_prompt_set_or_decoding_misses_the_cache(engine, tmp_path, change):
    _side(engine, tmp_path, {"id": "a"})
    kw = {"identity": {"id": "b"}} if change == "identity" else {"identity": {"id": "a"}}
    if change == "prompts":
        kw["prompts"] = PROMPTS[:-1] + (Prompt("p29", (1, 2, 99)),)
    if change == "top_k":
        kw["top_k"] = 1
    again = _side(engine, tmp_path, **kw)
    assert again.reused == 0 and again.sent == 30


def test_a_partial_side_is_extended_from_where_it_stopped(engine, tmp_path):
    part = _side(engine, tmp_path, {"id": "a"}, want=12)
    assert (part.sent, len(part.continuations)) == (12, 12)
    full = _side(engine, tmp_path, {"id": "a"})
    assert (full.reused, full.sent, len(full.continuations)) == (12, 18, 30)
    assert _sent(engine, 5) == 30


def test_the_budget_stops_sending_new_prompts_and_the_answered_prefix_is_kept(tmp_path):
    with TruthServer(Script(ttft_ms=40, itl_ms=0, greedy_vocab=300)) as slow:
        side = cached_side("old", slow.url, "truth-model", {"id": "s"}, PROMPTS, want=30, max_tokens=5, top_k=2,
                           cache_dir=tmp_path, budget_s=0.25, concurrency=2)
    assert side.budget_spent and 0 < side.sent < 30 and len(side.continuations) == side.sent
    assert side.send_s < 0.25 + 0.2  # in-flight prompts finish; nothing new starts after the budget
    stored = json.loads(side.path.read_text())
    assert len(stored["prompts"]) == side.sent and stored["planned"] == 30


def test_a_corrupt_cache_file_is_recomputed_and_replaced_atomically(engine, tmp_path):
    first = _side(engine, tmp_path, {"id": "a"})
    first.path.write_text("{not json")
    again = _side(engine, tmp_path, {"id": "a"})
    assert again.sent == 30 and json.loads(again.path.read_text())["prompts"][0]["id"] == "p0"
    assert [p.name for p in tmp_path.iterdir()] == [again.path.name]  # no temp file left behind


def test_refresh_discards_the_stored_side(engine, tmp_path):
    _side(engine, tmp_path, {"id": "a"})
    again = _side(engine, tmp_path, {"id": "a"}, refresh=True)
    assert (again.reused, again.sent) == (0, 30)


def test_fetch_until_returns_a_prefix_in_prompt_order(engine):
    prompts = [p.token_ids for p in PROMPTS]
    got = fetch_greedy_until(engine.url, "truth-model", prompts, max_tokens=3, top_k=2, concurrency=5)
    assert [c.tokens for c in got] == [tuple(greedy_tokens(p, 3, 300)) for p in prompts]
    assert fetch_greedy_until(engine.url, "truth-model", prompts, max_tokens=3, top_k=2,
                              deadline=time.monotonic() - 1) == []


def test_identity_follows_the_build_not_the_name_or_pinning(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x" * 10)
    base = Target(name="a", kind="vllm", model=str(model), args=("--max-model-len", "64"), cpus="0")
    same = Target(name="b", kind="vllm", model=str(model), args=("--max-model-len", "64"), cpus="1")
    assert side_identity(base, "0.1") == side_identity(same, "0.1")
    assert side_identity(base, "0.1") != side_identity(base, "0.2")
    other_args = Target(name="a", kind="vllm", model=str(model), args=("--kv-cache-dtype", "fp8"))
    assert side_identity(base, None)["args"] != side_identity(other_args, None)["args"]
    before = dir_fingerprint(model)
    os.utime(model / "w.safetensors", ns=(1, 1))  # another checkout of the same bytes: same fingerprint
    assert dir_fingerprint(model) == before
    (model / "w.safetensors").write_bytes(b"y" * 10)  # a rebuilt engine of the same size
    assert dir_fingerprint(model) != before and dir_fingerprint(tmp_path / "absent") is None


def test_a_large_file_is_fingerprinted_by_its_ends(tmp_path):
    (tmp_path / "engine.bin").write_bytes(b"a" * (3 << 20))
    before = dir_fingerprint(tmp_path)
    with (tmp_path / "engine.bin").open("r+b") as fh:
        fh.seek((3 << 20) - 1)
        fh.write(b"b")  # the last byte of a rebuilt engine
    assert dir_fingerprint(tmp_path) != before
