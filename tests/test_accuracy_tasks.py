"""Accuracy tasks: file schema, scoring from vLLM-shaped prompt_logprobs, pairing, references, bundled files."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.store.accuracy_refs import AccuracyReferences, model_label
from pytest_llmserve.gates.accuracy import ScoredTarget, compare_scored
from pytest_llmserve.reference.accuracy_tasks import (
    ItemScore,
    ScoringError,
    Task,
    TaskFileError,
    TaskScores,
    check_tokenizer,
    load_task,
    paired_arrays,
    position_logprobs,
    score_task,
)
from pytest_llmserve.settings.config import Target
from pytest_llmserve.evidence.precision import PrecisionInfo

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "fixtures" / "tasks"
TINY = ROOT / "fixtures" / "tiny-llama"
VOCAB = 50


# ----------------------------------------------------------------------------- a scripted "engine"
def toy_logprob(prev: int, tok: int) -> tuple[float, int]:
    """A fixed toy model: after `prev` the argmax is (prev*7+3) % VOCAB; other tokens rank by distance."""
    best = (prev * 7 + 3) % VOCAB
    rank = 1 + (tok - best) % VOCAB
    return -0.25 * rank, rank


def vllm_prompt_logprobs(ids: list[int]) -> list:
    """The shape CPU vLLM 0.32.0 returns for prompt_logprobs=1 (see tests/test_fp8_vllm.py for the real one)."""
    out: list = [None]
    for prev, tok in zip(ids, ids[1:]):
        lp, rank = toy_logprob(prev, tok)
        entry = {str(tok): {"logprob": lp, "rank": rank, "decoded_token": f"t{tok}"}}
        best = (prev * 7 + 3) % VOCAB
        entry.setdefault(str(best), {"logprob": -0.25, "rank": 1, "decoded_token": f"t{best}"})
        out.append(entry)
    return out


def toy_server(requests: list | None = None, drop_prompt_logprobs: bool = False) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if requests is not None:
            requests.append(body)
        prompts = body["prompt"]
        if not all(0 <= t < VOCAB for p in prompts for t in p):
            return httpx.Response(400, json={"error": {"message": "Token id out of vocabulary"}})
        choices = [{"index": i, "text": "x", "prompt_token_ids": None,
                    "prompt_logprobs": None if drop_prompt_logprobs else vllm_prompt_logprobs(p)}
                   for i, p in enumerate(prompts)]
        return httpx.Response(200, json={"id": "cmpl-1", "object": "text_completion", "choices": choices[::-1]})

    return httpx.MockTransport(handle)


def write_task(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def next_token_lines(rng: np.random.Generator, windows: int = 6, length: int = 20) -> list[dict]:
    return [{"kind": "next_token", "id": f"w{k}", "token_ids": [int(t) for t in rng.integers(0, VOCAB, length)],
             "text": "...", "score_from": 1 + k % 3} for k in range(windows)]


# ----------------------------------------------------------------------------------- task files
@pytest.mark.parametrize("line, message", [
    ({"kind": "essay", "id": "a"}, "`kind`='essay' must be one of"),
    ({"kind": "next_token", "id": "", "token_ids": [1, 2]}, "`id` must be a non-empty string"),
    ({"kind": "next_token", "id": "a", "token_ids": [1]}, "`token_ids`: must be a list of at least 2"),
    ({"kind": "next_token", "id": "a", "token_ids": [1, -2]}, "non-negative token ids"),
    ({"kind": "next_token", "id": "a", "token_ids": [1, 2], "score_from": 2}, "`score_from`=2 must lie in [1, 1]"),
    ({"kind": "multiple_choice", "id": "a", "context_ids": [1], "choices": [{"token_ids": [2]}], "gold": 0},
     "`choices` must be a list of at least 2"),
    ({"kind": "multiple_choice", "id": "a", "context_ids": [1], "choices": [{"token_ids": [2]}, {"token_ids": [3]}],
      "gold": 2}, "`gold`=2 must index `choices` (0..1)"),
])
def test_bad_task_line_names_file_line_and_field(tmp_path, line, message):
    valid = {"kind": "next_token", "id": "ok", "token_ids": [1, 2]}
    if line["kind"] == "multiple_choice":
        valid = {"kind": "multiple_choice", "id": "ok", "context_ids": [1],
                 "choices": [{"token_ids": [2]}, {"token_ids": [3]}], "gold": 0}
    path = write_task(tmp_path / "t.jsonl", [valid, line])
    with pytest.raises(TaskFileError) as err:
        load_task(path)
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_mixed_kinds_duplicate_ids_and_empty_files_are_refused(tmp_path):
    ok = {"kind": "next_token", "id": "a", "token_ids": [1, 2]}
    mc = {"kind": "multiple_choice", "id": "b", "context_ids": [1], "choices": [{"token_ids": [2]}, {"token_ids": [3]}], "gold": 0}
    with pytest.raises(TaskFileError, match="one kind per file"):
        load_task(write_task(tmp_path / "m.jsonl", [ok, mc]))
    with pytest.raises(TaskFileError, match="duplicate item id 'a'"):
        load_task(write_task(tmp_path / "d.jsonl", [ok, ok]))
    with pytest.raises(TaskFileError, match="no items"):
        load_task(write_task(tmp_path / "e.jsonl", []))


# ------------------------------------------------------------------------------------- scoring
def test_next_token_scores_every_position_from_the_server_response(tmp_path):
    lines = next_token_lines(np.random.default_rng(1))
    for line in lines[:2]:  # make some positions certainly correct
        line["token_ids"] = [5, (5 * 7 + 3) % VOCAB] + line["token_ids"][2:]
    task = load_task(write_task(tmp_path / "nt.jsonl", lines))
    sent: list = []
    scores = score_task("http://toy", "toy", task, transport=toy_server(sent), concurrency=3)

    expected = [(f"{ln['id']}@{p}",) + toy_logprob(ln["token_ids"][p - 1], ln["token_ids"][p])
                for ln in lines for p in range(ln["score_from"], len(ln["token_ids"]))]
    assert [s.id for s in scores.items] == [e[0] for e in expected]
    assert scores.correct().tolist() == [float(rank == 1) for _, _, rank in expected]
    assert scores.loglik().tolist() == [lp for _, lp, _ in expected]
    assert scores.n == task.n_scored and 0 < scores.summary()["accuracy"] < 1
    assert scores.summary()["perplexity"] == pytest.approx(math.exp(-np.mean([lp for _, lp, _ in expected])))
    assert all(b["prompt_logprobs"] == 1 and b["max_tokens"] == 1 and len(b["prompt"]) == 1 for b in sent)


def test_multiple_choice_predicts_the_choice_with_the_highest_summed_logprob(tmp_path):
    rng = np.random.default_rng(7)
    lines = []
    for k in range(30):
        ctx = [int(t) for t in rng.integers(0, VOCAB, 5)]
        choices = [[int(t) for t in rng.integers(0, VOCAB, 3)] for _ in range(4)]
        lines.append({"kind": "multiple_choice", "id": f"q{k}", "context_ids": ctx, "context": "",
                      "choices": [{"token_ids": c, "text": ""} for c in choices], "gold": k % 4})
    task = load_task(write_task(tmp_path / "mc.jsonl", lines))
    sent: list = []
    scores = score_task("http://toy", "toy", task, transport=toy_server(sent))
    assert len(sent) == len(lines) and all(len(b["prompt"]) == 4 for b in sent)  # one batched request per item

    for line, item in zip(lines, scores.items):
        sums = []
        for choice in line["choices"]:
            ids = line["context_ids"] + choice["token_ids"]
            sums.append(sum(toy_logprob(ids[p - 1], ids[p])[0] for p in range(len(line["context_ids"]), len(ids))))
        best = int(np.argmax(sums))
        tie = sums.count(max(sums)) > 1
        assert (item.predicted, item.loglik) == (best, pytest.approx(sums[line["gold"]]))
        assert item.correct == float(best == line["gold"] and not tie)
    assert 0 < scores.summary()["accuracy"] < 1


def test_server_without_prompt_logprobs_is_an_error_naming_the_feature(tmp_path):
    task = load_task(write_task(tmp_path / "nt.jsonl", next_token_lines(np.random.default_rng(2), 1)))
    with pytest.raises(ScoringError, match="prompt_logprobs"):
        score_task("http://toy", "toy", task, transport=toy_server(drop_prompt_logprobs=True))


def test_rejected_request_reports_status_and_server_message(tmp_path):
    task = load_task(write_task(tmp_path / "nt.jsonl", [{"kind": "next_token", "id": "big", "token_ids": [1, VOCAB + 5]}]))
    with pytest.raises(ScoringError, match=r"big: .* answered 400: .*out of vocabulary"):
        score_task("http://toy", "toy", task, transport=toy_server())


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 10_000), st.floats(-50, 0)), min_size=1, max_size=40))
def test_position_logprobs_reads_each_prompt_tokens_own_entry(rows):
    ids = [0] + [tok for tok, _, _ in rows]
    plp: list = [None] + [{str(tok): {"logprob": lp, "rank": rank, "decoded_token": "x"},
                           str(tok + 1): {"logprob": lp + 1, "rank": 1, "decoded_token": "y"}} for tok, rank, lp in rows]
    parsed = position_logprobs(plp, ids, 1)
    assert [(lp, rank) for lp, rank, _ in parsed] == [(lp, 1 if rank == 1 else rank) for _, rank, lp in rows]


def test_missing_prompt_token_entry_is_reported_with_its_position():
    with pytest.raises(ScoringError, match="position 1: no logprob/rank for the prompt token 9"):
        position_logprobs([None, {"3": {"logprob": -1.0, "rank": 1}}], [0, 9], 1)


def test_pairing_refuses_scores_of_different_items():
    a = TaskScores("t", "next_token", "a", (ItemScore("x@1", 1.0, -1.0, 1, 1),))
    b = TaskScores("t", "next_token", "b", (ItemScore("y@1", 1.0, -1.0, 1, 1),))
    with pytest.raises(ValueError, match="different items"):
        paired_arrays(a, b)


# --------------------------------------------------------------------------- gate + references
def _scored(name: str, correct: np.ndarray, kv: str | None = None) -> ScoredTarget:
    items = tuple(ItemScore(f"i{k}", float(c), -1.0 - (1 - c), 0, 0) for k, c in enumerate(correct))
    return ScoredTarget(name, PrecisionInfo("bfloat16", None, kv, "vllm-log", "test"),
                        TaskScores("next_token", "next_token", name, items), 0.1)


TASK = Task("next_token", "next_token", (), "mem", "ab" * 32)


def test_small_flips_pass_and_a_real_drop_fails_the_paired_gate():
    rng = np.random.default_rng(3)
    base = (rng.random(4000) < 0.3).astype(float)
    flips = base.copy()
    flips[rng.choice(4000, 20, replace=False)] = 1 - flips[rng.choice(4000, 20, replace=False)]
    dropped = np.where(rng.random(4000) < 0.15, 0.0, base)  # ~4.5 pp lost
    ok = compare_scored(TASK, _scored("bf16", base), _scored("fp8", flips, "fp8"))
    bad = compare_scored(TASK, _scored("bf16", base), _scored("noisy", dropped))
    assert ok.passed and not bad.passed
    text = bad.render()
    for needle in ("α=0.05", "β=0.2", "n=4000", "CI [", "threshold", "min detectable drop", "FAIL"):
        assert needle in text
    assert "bfloat16|none|none" in text and bad.data()["gate"]["verdict"] == "fail"
    row = bad.data()["rows"][0]  # the summary-table row report/summary.py shows
    assert row["verdict"] == "fail" and row["measured"] < row["limit"] < row["baseline"]
    json.dumps(bad.data())  # JSON report ready


def test_references_record_then_check_ok_regression_stale_and_missing(tmp_path):
    info = PrecisionInfo("bfloat16", None, "fp8", "vllm-log", "t")
    summary = {"accuracy": 0.25, "mean_loglik": -3.0, "n": 5000.0}
    writer = AccuracyReferences(tmp_path, "cpu-2c", "tiny-llama", update=True)
    assert writer.check("next_token", "sha1", info, summary).verdict == "recorded"
    stored = json.loads(writer.path.read_text())
    assert writer.path == tmp_path / "cpu-2c" / "accuracy" / "tiny-llama.json"
    assert stored["entries"]["next_token|bfloat16|none|fp8"] == {"accuracy": 0.25, "mean_loglik": -3.0, "n": 5000,
                                                                  "task_sha256": "sha1"}
    reader = AccuracyReferences(tmp_path, "cpu-2c", "tiny-llama")
    assert reader.check("next_token", "sha1", info, {**summary, "accuracy": 0.24}).verdict == "ok"
    low = reader.check("next_token", "sha1", info, {**summary, "accuracy": 0.20})
    assert low.verdict == "regression" and low.threshold == pytest.approx(0.25 - 1.6449 * math.sqrt(0.5 / 5000), abs=1e-4)
    assert reader.check("next_token", "sha2", info, summary).verdict == "stale"
    missing = reader.check("multiple_choice", "sha1", info, summary)
    assert missing.verdict == "missing" and "--update-baselines" in missing.note


def test_corrupt_reference_file_is_reported_and_left_alone(tmp_path):
    refs = AccuracyReferences(tmp_path, "cpu-2c", "m", update=True)
    refs.path.parent.mkdir(parents=True)
    refs.path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt .* not modified"):
        refs.check("t", "s", PrecisionInfo("bfloat16", None, None, "x", "y"), {"accuracy": 0.5, "mean_loglik": -1, "n": 10})
    assert refs.path.read_text() == "{not json"


def test_model_label_is_a_safe_file_name(tmp_path):
    assert model_label(Target(name="t", kind="vllm", model=str(tmp_path / "tiny-llama"))) == "tiny-llama"
    assert model_label(Target(name="t", kind="openai", url="http://x", model="meta-llama/Llama-3.1-8B")) == "meta-llama--Llama-3.1-8B"


# ------------------------------------------------------------------------------ bundled fixtures
def test_bundled_tasks_match_the_tiny_models_tokenizer_and_text():
    from tokenizers import Tokenizer

    raw_tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    vocab = raw_tok.get_vocab_size()

    class tok:  # document separators (</s>) stay visible in the text, as make_tasks.py writes it
        decode = staticmethod(lambda ids: raw_tok.decode(ids, skip_special_tokens=False))

    for path in sorted(BUNDLED.glob("*.jsonl")):
        task = load_task(path)
        check_tokenizer(task, TINY)
        assert task.tokenizer_sha256 == hashlib.sha256((TINY / "tokenizer.json").read_bytes()).hexdigest()
        for line in path.read_text().splitlines():
            raw = json.loads(line)
            if raw["kind"] == "next_token":
                assert raw["token_ids"][0] == 0 and tok.decode(raw["token_ids"][1:]) == raw["text"]
                assert max(raw["token_ids"]) < vocab
            else:
                assert tok.decode(raw["context_ids"][1:]) == raw["context"]
                assert [tok.decode(c["token_ids"]) for c in raw["choices"]] == [c["text"] for c in raw["choices"]]
    kinds = {load_task(p).kind: load_task(p).n_scored for p in BUNDLED.glob("*.jsonl")}
    assert kinds["next_token"] >= 5000 and kinds["multiple_choice"] >= 200


def test_bundled_tasks_are_held_out_from_the_training_corpus():
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    import sys

    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_model import CORPUS_MODULES

    for entry in manifest["files"].values():
        assert entry["modules"] and not set(entry["modules"]) & set(CORPUS_MODULES)


def test_task_for_another_tokenizer_is_refused_with_the_build_command(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    task = Task("t", "next_token", (), "t.jsonl", "s", tokenizer_sha256="0" * 64)
    with pytest.raises(TaskFileError, match="make_tasks.py --model"):
        check_tokenizer(task, tmp_path)
